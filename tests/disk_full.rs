//! A full disk during training: the real `vnca` binary trains into a small tmpfs (mounted
//! in a private user + mount namespace with `unshare`, so no root and no trace on the
//! host) that fills up at a checkpoint write. The run must stop with one error line
//! naming the file and "No space left on device", leave no temporary file behind, keep
//! the previous `latest` checkpoint intact, and that checkpoint must resume.
use std::path::{Path, PathBuf};
use std::process::Command;
use vnca::checkpoint::Loaded;
use vnca::checkpoint::TrainState;
use vnca::config::Config;
use vnca::model::Vnca;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `tiny-test` preset with checkpoints every 10 steps.
fn tiny(steps: u64) -> Config {
    let mut cfg = Config::preset("tiny-test").unwrap();
    cfg.data.path = manifest().join("data/binarized_mnist.vbm.gz");
    cfg.train.steps = steps;
    cfg.train.eval_every = 10;
    cfg
}

/// What a run on a full disk left: its exit code, stderr, the names in its run
/// directory, and a copy of that directory on the host (under `host/run`).
struct FullDiskRun {
    code: i32,
    stderr: String,
    names: Vec<String>,
    copy: PathBuf,
}

/// Train `cfg` into a fresh tmpfs of `size_kib` KiB, then copy the run directory out
/// of the namespace before it (and the tmpfs) disappears.
fn train_on_tmpfs(host: &Path, cfg: &Config, size_kib: u64) -> FullDiskRun {
    let config = host.join("tiny.toml");
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let mnt = host.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = r#"
        set -u
        mount -t tmpfs -o size="$SIZE"k tmpfs "$MNT" || exit 99
        "$VNCA" --threads 1 train --config "$CONFIG" --out "$MNT/run" --quiet 2> "$HOST/stderr"
        echo $? > "$HOST/code"
        ls -A "$MNT/run" > "$HOST/names"
        cp -a "$MNT/run" "$HOST/run"
    "#;
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
        .env("SIZE", size_kib.to_string())
        .env("MNT", &mnt)
        .env("HOST", host)
        .env("CONFIG", &config)
        .env("VNCA", env!("CARGO_BIN_EXE_vnca"))
        .current_dir(manifest())
        .output()
        .expect("run unshare (util-linux)");
    assert!(
        out.status.success(),
        "could not run training on a tmpfs in a user namespace ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(host.join(name)).unwrap();
    FullDiskRun {
        code: read("code").trim().parse().unwrap(),
        stderr: read("stderr"),
        names: read("names").lines().map(str::to_string).collect(),
        copy: host.join("run"),
    }
}

/// One line `error: ...` naming `file` and the full disk, no panic, exit code 1.
fn assert_full_disk_error(run: &FullDiskRun, file: &str) {
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", run.stderr);
    let line = errors[0];
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains("No space left on device"), "{line}");
    assert!(line.contains(file), "the error must name `{file}`: {line}");
    assert!(
        !run.names.iter().any(|n| n.contains(".tmp")),
        "a temporary file was left behind: {:?}",
        run.names
    );
}

#[test]
fn disk_full_at_the_second_checkpoint_keeps_the_first_and_it_resumes() {
    let host = tempfile::tempdir().unwrap();
    // Room for the first save (latest 0.9 MB, best 0.3 MB, pictures) but not for the
    // temporary file of the second `latest`.
    let run = train_on_tmpfs(host.path(), &tiny(20), 1600);
    assert_full_disk_error(&run, "latest.safetensors");

    let latest = run.copy.join("latest.safetensors");
    let ck = Loaded::read(&latest).expect("the first checkpoint survives intact");
    let model = Vnca::new(&tiny(20).model, tch::Device::Cpu, 0);
    ck.load_model(&model).unwrap();
    let state: TrainState = serde_json::from_str(ck.meta.state.as_deref().unwrap()).unwrap();
    assert_eq!(state.step, 10);

    // With room again (here: the host's disk) the run continues from step 10.
    let out = Command::new(env!("CARGO_BIN_EXE_vnca"))
        .args(["--threads", "1", "train", "--config"])
        .arg(host.path().join("tiny.toml"))
        .arg("--out")
        .arg(&run.copy)
        .args(["--resume", "--quiet"])
        .current_dir(manifest())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ck = Loaded::read(&latest).unwrap();
    let state: TrainState = serde_json::from_str(ck.meta.state.as_deref().unwrap()).unwrap();
    assert_eq!(state.step, 20);
}

#[test]
fn disk_full_at_the_first_checkpoint_leaves_no_checkpoint() {
    let host = tempfile::tempdir().unwrap();
    // Room for config.toml and the metrics log, not for a checkpoint.
    let run = train_on_tmpfs(host.path(), &tiny(10), 64);
    assert_full_disk_error(&run, "latest.safetensors");
    assert!(
        !run.names.iter().any(|n| n.contains("safetensors")),
        "{:?}",
        run.names
    );
    assert!(run.names.contains(&"config.toml".to_string()));
}
