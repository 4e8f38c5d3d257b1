//! Failure injection against the real `vnca` binary: SIGKILL in the middle of training
//! (checkpoints must stay loadable and `--resume` must work), unwritable or impossible
//! output paths, broken configs, and checkpoints of the wrong architecture. Every user
//! mistake must end in one line `error: ...` on stderr with exit code 1, never a panic.
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use vnca::checkpoint::Loaded;
use vnca::checkpoint::TrainState;
use vnca::config::Config;
use vnca::data::{self, BinarizedMnist, ImageSet};
use vnca::model::Vnca;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn vnca() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vnca"));
    c.args(["--threads", "1"]).current_dir(manifest());
    c
}

fn run(args: &[&str]) -> Output {
    vnca().args(args).output().expect("run vnca")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vnca {args:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail cleanly and returns its error line: exit code 1, no
/// panic, and the error is the last line of stderr and the only one that says `error`.
fn fails(args: &[&str]) -> String {
    fails_as(vnca(), args)
}

/// [`fails`] for `cmd` (the binary, possibly run as another user) with `args` appended.
fn fails_as(mut cmd: Command, args: &[&str]) -> String {
    let out = cmd.args(args).output().expect("run vnca");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "vnca {args:?} should fail with exit code 1:\n{err}"
    );
    assert!(!err.contains("panicked"), "vnca {args:?} panicked:\n{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: "),
        "vnca {args:?}: the error must be the last line:\n{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "vnca {args:?}: one error line expected:\n{err}"
    );
    last.to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `tiny-test` preset, evaluating and checkpointing every `eval_every` steps.
fn tiny(eval_every: u64) -> Config {
    let mut cfg = Config::preset("tiny-test").unwrap();
    cfg.train.eval_every = eval_every;
    cfg.data.path = manifest().join("data/binarized_mnist.vbm.gz");
    cfg
}

fn write_config(dir: &Path, cfg: &Config) -> PathBuf {
    let path = dir.join("tiny-eval2.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    path
}

// ---------------------------------------------------------------------------------------
// SIGKILL during training.

/// Everything a killed run directory must satisfy. Returns the step of `latest`, if any.
fn check_killed_run(run: &Path, tmp_seen: &mut BTreeSet<String>) -> Option<u64> {
    let cfg = tiny(2);
    let Ok(entries) = std::fs::read_dir(run) else {
        return None; // killed before it created the run directory
    };
    for entry in entries {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.contains(".tmp") {
            // A write interrupted by the kill; it must never be what `latest` points at.
            assert!(!name.starts_with("latest"), "{name}");
            tmp_seen.insert(name);
        }
    }
    if run.join("config.toml").exists() {
        Config::from_file(&run.join("config.toml")).unwrap();
    }
    if let Ok(ck) = Loaded::read(&run.join("best.safetensors")) {
        let model = Vnca::new(&cfg.model, tch::Device::Cpu, 0);
        ck.load_model(&model).unwrap();
    }
    let latest = run.join("latest.safetensors");
    if !latest.exists() {
        return None;
    }
    let ck = Loaded::read(&latest)
        .unwrap_or_else(|e| panic!("latest.safetensors unreadable after SIGKILL: {e}"));
    let model = Vnca::new(&cfg.model, tch::Device::Cpu, 0);
    ck.load_model(&model)
        .unwrap_or_else(|e| panic!("latest.safetensors does not load after SIGKILL: {e}"));
    let n_adam = ck.names().iter().filter(|n| n.starts_with("adam.")).count();
    assert_eq!(n_adam, 2 * model.params().len(), "Adam moments missing");
    let stored = Config::from_toml_str(ck.meta.config.as_deref().unwrap(), "stored").unwrap();
    assert_eq!(stored.train.eval_every, 2);
    let state: TrainState = serde_json::from_str(ck.meta.state.as_deref().unwrap())
        .unwrap_or_else(|e| panic!("state JSON of latest does not parse: {e}"));
    assert!(state.step > 0, "step {}", state.step);
    Some(state.step)
}

/// After a completed run to `step`: metrics.jsonl reads as one uninterrupted run.
fn check_metrics(run: &Path, step: u64) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut train_steps = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("metrics.jsonl line `{line}`: {e}"));
        if v["kind"] == "train" {
            train_steps.push(v["step"].as_u64().unwrap());
        }
    }
    assert_eq!(train_steps, (1..=step).collect::<Vec<_>>(), "{text}");
}

/// When an attempt sends SIGKILL.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after the start: often during start-up (loading the checkpoint, trimming
    /// metrics.jsonl, writing config.toml), or early in training.
    AfterSpawn(u64),
    /// This long after the run's first new `latest` appeared: while it is writing
    /// checkpoints (every 2 steps), whatever the start-up time on this machine.
    AfterFirstSave(u64),
}

/// Waits until `latest` was written after `since`, or the child ended, or 60 s passed.
fn wait_for_save(run: &Path, since: std::time::SystemTime, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        let modified = std::fs::metadata(run.join("latest.safetensors")).and_then(|m| m.modified());
        if modified.is_ok_and(|t| t > since) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn sigkill_during_training_keeps_a_loadable_checkpoint_and_resumes() {
    let seed = std::env::var("VNCA_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_241_128u64);
    eprintln!("kill delays seeded with VNCA_KILL_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), &tiny(2));
    let run_dir = dir.path().join("run");
    let started = Instant::now();
    let mut tmp_seen = BTreeSet::new();
    let (mut kills, mut resumes) = (0, 0);
    for attempt in 0..8 {
        if started.elapsed() > Duration::from_secs(40) {
            break;
        }
        let when = if attempt % 2 == 0 {
            KillAt::AfterSpawn(rng.gen_range(50..=1500))
        } else {
            KillAt::AfterFirstSave(rng.gen_range(0..=400))
        };
        let resume = run_dir.join("latest.safetensors").exists();
        let log = dir.path().join(format!("stderr-{attempt}.log"));
        let mut cmd = vnca();
        cmd.args(["train", "--config", s(&cfg_path), "--steps", "400"])
            .args(["--out", s(&run_dir), "--quiet"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if resume {
            cmd.arg("--resume");
        }
        let spawned = std::time::SystemTime::now();
        let mut child = cmd.spawn().unwrap();
        let delay = match when {
            KillAt::AfterSpawn(ms) => ms,
            KillAt::AfterFirstSave(ms) => {
                wait_for_save(&run_dir, spawned, &mut child);
                ms
            }
        };
        std::thread::sleep(Duration::from_millis(delay));
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(&log).unwrap();
            panic!("attempt {attempt}: training ended before the kill ({status}):\n{err}");
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        kills += 1;
        let tmp_before = tmp_seen.len();
        let latest = check_killed_run(&run_dir, &mut tmp_seen);
        let mid_write = if tmp_seen.len() > tmp_before {
            " (mid-write)"
        } else {
            ""
        };
        let Some(step) = latest else {
            eprintln!("attempt {attempt}: killed {when:?}{mid_write}, before the first checkpoint");
            continue;
        };
        eprintln!("attempt {attempt}: killed {when:?}{mid_write}; latest is step {step}");
        // Resume for a few more steps: must succeed and leave a consistent run.
        let target = step + 3;
        ok(&[
            "train",
            "--config",
            s(&cfg_path),
            "--steps",
            &target.to_string(),
            "--out",
            s(&run_dir),
            "--resume",
            "--quiet",
        ]);
        resumes += 1;
        assert_eq!(check_killed_run(&run_dir, &mut tmp_seen), Some(target));
        check_metrics(&run_dir, target);
    }
    eprintln!(
        "{kills} kills, {resumes} resumes, {} interrupted temporary files left, in {:.1} s",
        tmp_seen.len(),
        started.elapsed().as_secs_f64()
    );
    // Every second attempt kills after a save, so it always has a checkpoint to resume.
    assert!(kills >= 4 && resumes >= 2, "too few kills to mean anything");
}

#[test]
fn a_fresh_run_in_a_used_directory_starts_a_fresh_log() {
    // As after a crash before the first checkpoint: no `latest`, but metrics of steps that
    // the new run will redo.
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), &tiny(2));
    let run_dir = dir.path().join("run");
    let train = |steps: &str| {
        ok(&[
            "train",
            "--config",
            s(&cfg_path),
            "--steps",
            steps,
            "--out",
            s(&run_dir),
            "--quiet",
        ])
    };
    train("5");
    check_metrics(&run_dir, 5);
    std::fs::remove_file(run_dir.join("latest.safetensors")).unwrap();
    train("3");
    check_metrics(&run_dir, 3);
}

// ---------------------------------------------------------------------------------------
// Output paths that cannot be written.

/// The binary run as user `nobody` through `setpriv`, for permission tests when we are
/// root (root ignores permission bits).
fn as_nobody(bin_args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_vnca"))
        .args(bin_args)
        .current_dir("/");
    c
}

#[test]
fn unwritable_or_impossible_output_paths_fail_with_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Readable by everyone (for `nobody`): the directory and a small data file.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("small.vbm.gz");
    let small = BinarizedMnist {
        train: binary_set(16, true),
        valid: binary_set(8, true),
        test: binary_set(2, true),
    };
    data::packed::write_packed(&data, &small).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = |out: &Path| {
        [
            "train",
            "--preset",
            "tiny-test",
            "--data",
            s(&data),
            "--steps",
            "2",
            "--out",
            s(out),
            "--quiet",
        ]
        .map(str::to_string)
    };
    let train_as = |cmd: Command, out: &Path| {
        let a = args(out);
        fails_as(cmd, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mode = std::fs::metadata(&ro).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o555);
    // Root writes anyway: then the binary has to run as `nobody` to see the refusal.
    let enforced = std::fs::write(ro.join("probe"), b"").is_err();
    let nobody_works = !enforced
        && as_nobody(&["--version"])
            .output()
            .is_ok_and(|o| o.status.success());
    let runner = || {
        if enforced {
            vnca()
        } else {
            as_nobody(&["--threads", "1"])
        }
    };
    if enforced || nobody_works {
        let err = train_as(runner(), &ro);
        assert!(
            // The first file a run writes is its lock.
            err.contains(s(&ro.join(".lock"))) && err.contains("Permission denied"),
            "{err}"
        );
        assert_eq!(err.matches("Permission denied").count(), 1, "{err}");
        let below = ro.join("run");
        let err = train_as(runner(), &below);
        assert!(
            err.contains("cannot create output directory")
                && err.contains(s(&below))
                && err.contains("Permission denied"),
            "{err}"
        );
    } else {
        eprintln!("permissions are not enforced (root without setpriv): skipping the 0o555 case");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();

    // --out names an existing file, or a path below one.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = train_as(vnca(), &file);
    assert!(
        err.contains(s(&file)) && err.contains("File exists"),
        "{err}"
    );
    let below = file.join("run");
    let err = train_as(vnca(), &below);
    assert!(
        err.contains(s(&below)) && err.contains("Not a directory"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");

    // A missing input file: the OS error appears once, after the path.
    let err = fails(&["eval", "--checkpoint", "/nonexistent/x.safetensors"]);
    assert_eq!(
        err,
        "error: `/nonexistent/x.safetensors`: No such file or directory (os error 2)"
    );
}

// ---------------------------------------------------------------------------------------
// Broken configs.

#[test]
fn bad_configs_fail_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = tiny(2).to_toml();
    let cases: &[(&str, &str, &[&str])] = &[
        // Unknown keys, in a table and at the top level.
        (
            "z_dim = 8",
            "zdim = 8",
            &["unknown field `zdim`", "line", "`zdim = 8`"],
        ),
        (
            "[train]",
            "[train]\nlearning_rate = 0.1",
            &["unknown field `learning_rate`"],
        ),
        (
            "[data]",
            "[optimizer]\nkind = \"adam\"\n\n[data]",
            &["unknown field `optimizer`"],
        ),
        // Out of range for the model.
        ("z_dim = 8", "z_dim = 0", &["model.z_dim", "must be >= 1"]),
        ("image_size = 32", "image_size = 48", &["model.image_size"]),
        ("p_update = 1.0", "p_update = 1.5", &["model.p_update"]),
        ("eval_every = 2", "eval_every = 0", &["train.eval_every"]),
        ("lr = 0.001", "lr = -0.001", &["train.lr"]),
        ("grad_clip = 10.0", "grad_clip = nan", &["train.grad_clip"]),
        (
            "val_split = \"valid\"",
            "val_split = \"train\"",
            &["data.val_split"],
        ),
        // Absurd sizes (an extra digit) would abort in a huge allocation.
        (
            "hidden = 16",
            "hidden = 16000000000",
            &["model.hidden", "must be <="],
        ),
        (
            "batch_size = 4",
            "batch_size = 4000000000000",
            &["train.batch_size"],
        ),
        // Out of range for the type.
        (
            "n_residual = 4",
            "n_residual = -1",
            &["expected usize", "`n_residual = -1`"],
        ),
        ("steps = 20", "steps = -20", &["`steps = -20`"]),
        (
            "batch_size = 4",
            "batch_size = 4.5",
            &["`batch_size = 4.5`"],
        ),
        (
            "z_dim = 8",
            "z_dim = 99999999999999999999",
            &["`z_dim = 99999999999999999999`"],
        ),
        // Not TOML at all.
        ("[model]", "[model", &["invalid table header", "line 3"]),
        (
            "name = \"tiny-test\"",
            "name = \"tiny-test",
            &["invalid basic string", "line 1"],
        ),
    ];
    for (i, (from, to, wanted)) in cases.iter().enumerate() {
        assert!(good.contains(from), "{from}");
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, good.replacen(from, to, 1)).unwrap();
        let out = run(&[
            "train",
            "--config",
            s(&path),
            "--out",
            s(&dir.path().join("run")),
            "--quiet",
        ]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{to}: {err}");
        assert_eq!(err.lines().count(), 1, "{to}: not one line:\n{err}");
        assert!(err.starts_with("error: "), "{to}: {err}");
        assert!(
            err.contains(s(&path)),
            "{to}: does not name the file: {err}"
        );
        for w in *wanted {
            assert!(err.contains(w), "{to}: lacks `{w}`: {err}");
        }
    }
    assert!(
        !dir.path().join("run").exists(),
        "a bad config created the run"
    );
}

// ---------------------------------------------------------------------------------------
// Checkpoints that do not fit.

#[test]
fn wrong_or_broken_checkpoints_name_the_problem() {
    let weights = manifest().join("tests/fixtures/tiny_weights.safetensors");
    let err = fails(&[
        "eval",
        "--checkpoint",
        s(&weights),
        "--preset",
        "mnist-doubling-small",
        "--limit",
        "1",
    ]);
    assert!(
        err.contains("tensor `encoder.0.") && err.contains("shape") && err.contains(s(&weights)),
        "{err}"
    );

    // A run's checkpoint (with its config inside) given the wrong preset, and broken.
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let cfg_path = write_config(dir.path(), &tiny(2));
    ok(&[
        "train",
        "--config",
        s(&cfg_path),
        "--steps",
        "2",
        "--out",
        s(&run_dir),
        "--quiet",
    ]);
    let latest = run_dir.join("latest.safetensors");
    let err = fails(&[
        "eval",
        "--checkpoint",
        s(&latest),
        "--preset",
        "mnist-doubling-small",
        "--limit",
        "1",
    ]);
    assert!(
        err.contains("tensor `") && err.contains("mnist-doubling-small"),
        "{err}"
    );
    let bytes = std::fs::read(&latest).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(&["eval", "--checkpoint", s(&cut), "--limit", "1"]);
    assert!(
        err.contains(s(&cut)) && err.contains("not a valid safetensors file"),
        "{err}"
    );
    // --resume from a corrupt latest refuses, naming it, and leaves it alone.
    std::fs::write(&latest, &bytes[..100]).unwrap();
    let err = fails(&[
        "train",
        "--config",
        s(&cfg_path),
        "--steps",
        "4",
        "--out",
        s(&run_dir),
        "--resume",
        "--quiet",
    ]);
    assert!(err.contains(s(&latest)), "{err}");
    assert_eq!(std::fs::read(&latest).unwrap(), &bytes[..100]);
}

// ---------------------------------------------------------------------------------------
// Data that reads but cannot be trained on.

fn binary_set(n: usize, labels: bool) -> ImageSet {
    ImageSet {
        images: (0..n * 784).map(|i| ((i * 7) % 3 == 0) as u8).collect(),
        labels: labels.then(|| (0..n).map(|i| (i % 10) as u8).collect()),
        rows: 28,
        cols: 28,
    }
}

#[test]
fn data_with_an_empty_split_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (name, train, valid) in [("no-train", 0, 5), ("no-valid", 5, 0)] {
        let path = dir.path().join(format!("{name}.vbm.gz"));
        let d = BinarizedMnist {
            train: binary_set(train, true),
            valid: binary_set(valid, true),
            test: binary_set(3, true),
        };
        data::packed::write_packed(&path, &d).unwrap();
        let err = fails(&[
            "train",
            "--preset",
            "tiny-test",
            "--data",
            s(&path),
            "--steps",
            "2",
            "--out",
            s(&dir.path().join(name)),
            "--quiet",
        ]);
        assert!(err.contains(s(&path)) && err.contains("no images"), "{err}");
    }
}

#[test]
fn resuming_on_other_data_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), &tiny(2));
    let run_dir = dir.path().join("run");
    ok(&[
        "train",
        "--config",
        s(&cfg_path),
        "--steps",
        "2",
        "--out",
        s(&run_dir),
        "--quiet",
    ]);
    let small = dir.path().join("small.vbm.gz");
    let d = BinarizedMnist {
        train: binary_set(16, true),
        valid: binary_set(8, true),
        test: binary_set(2, true),
    };
    data::packed::write_packed(&small, &d).unwrap();
    let err = fails(&[
        "train",
        "--config",
        s(&cfg_path),
        "--data",
        s(&small),
        "--steps",
        "4",
        "--out",
        s(&run_dir),
        "--resume",
        "--quiet",
    ]);
    assert!(
        err.contains("was trained on 50000 images")
            && err.contains(s(&small))
            && err.contains("has 16"),
        "{err}"
    );
}
