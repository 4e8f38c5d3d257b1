//! A run directory as a user meets it: Ctrl-C (or SIGTERM) saves `latest`, says where
//! training stopped and exits 130, a second `vnca train` into a directory in use refuses
//! naming the holder, a lock left by a killed run does not block `--resume`; `vnca eval`
//! with several K and per-image output.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn vnca() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vnca"));
    c.args(["--threads", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// A long tiny-test run into `out`, started in the background.
fn start_long_run(out: &Path) -> Child {
    vnca()
        .args([
            "train",
            "--preset",
            "tiny-test",
            "--steps",
            "100000",
            "--quiet",
        ])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vnca train")
}

/// Waits until the run has written `n` training records (it is past its set-up).
fn wait_for_steps(out: &Path, n: usize) {
    let t0 = Instant::now();
    loop {
        let lines = std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|t| t.lines().filter(|l| l.contains("\"train\"")).count())
            .unwrap_or(0);
        if lines >= n {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

fn stderr_of(child: Child) -> (Option<i32>, String) {
    let out: Output = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn ctrl_c_saves_says_where_it_stopped_and_exits_130() {
    stops_saves_says_where_and_exits_130("-INT");
}

/// SIGTERM is what Slurm sends at a job's time limit and torchrun sends the other ranks
/// once one has exited (both SIGKILL some seconds later): the run stops as for Ctrl-C,
/// with `latest` saved, instead of dying with the updates since the last evaluation.
#[test]
fn sigterm_saves_says_where_it_stopped_and_exits_130() {
    stops_saves_says_where_and_exits_130("-TERM");
}

fn stops_saves_says_where_and_exits_130(sig: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = start_long_run(&out);
    wait_for_steps(&out, 3);
    signal(&child, sig);
    let (code, err) = stderr_of(child);
    assert_eq!(code, Some(130), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("interrupted: training stopped at step ")
            && last.contains("of 100000")
            && last.contains("--resume"),
        "{err}"
    );
    assert!(
        !err.contains("done:"),
        "an interrupted run is not done: {err}"
    );
    let step: u64 = last["interrupted: training stopped at step ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(step >= 3, "{last}");
    let meta = vnca::checkpoint::Loaded::read(&out.join("latest.safetensors"))
        .unwrap()
        .meta;
    let state: serde_json::Value = serde_json::from_str(&meta.state.unwrap()).unwrap();
    assert_eq!(
        state["step"].as_u64(),
        Some(step),
        "`latest` is not at the stop"
    );
    // The saved checkpoint continues: two more steps.
    let status = vnca()
        .args(["train", "--resume", "--quiet", "--steps"])
        .arg((step + 2).to_string())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[test]
fn a_second_run_into_a_directory_in_use_refuses_and_a_killed_runs_lock_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let first = start_long_run(&out);
    wait_for_steps(&out, 1);
    for extra in [&["--overwrite"][..], &["--resume"][..], &[][..]] {
        let second = vnca()
            .args(["train", "--preset", "tiny-test", "--steps", "5", "--quiet"])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(1), "{extra:?}: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ")
                && last.contains(&format!("process {}", first.id()))
                && last.contains("in use"),
            "{extra:?}: {err}"
        );
    }
    // Let the first run write a checkpoint (eval_every = 10), then kill it hard.
    wait_for_steps(&out, 12);
    signal(&first, "-KILL");
    let (code, _) = stderr_of(first);
    assert_eq!(code, None, "killed by a signal");
    assert!(
        out.join(".lock").exists(),
        "the killed run's lock file is left behind"
    );
    let resumed = vnca()
        .args(["train", "--resume", "--quiet", "--steps", "12"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
}

#[test]
fn eval_prints_several_bounds_writes_one_line_per_image_and_runs_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let train = vnca()
        .args([
            "train",
            "--preset",
            "tiny-test",
            "--steps",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(train.status.success());
    let csv = dir.path().join("per-image.csv");
    let eval = vnca()
        .args([
            "eval",
            "--limit",
            "6",
            "--batch",
            "4",
            "--iw-samples",
            "1,8",
            "--checkpoint",
        ])
        .arg(out.join("latest.safetensors"))
        .arg("--per-example")
        .arg(&csv)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&eval.stdout);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let bound = |k: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("IWAE-{k} ")))
            .unwrap_or_else(|| panic!("no IWAE-{k} line: {stdout}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let (nll1, nll8) = (bound("1"), bound("8"));
    assert!(nll1 > 0.0 && nll8 > 0.0, "{stdout}");
    // IWAE-8 is a tighter bound than the single-sample one (lower NLL), on average.
    assert!(nll8 < nll1, "{stdout}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = BufReader::new(text.as_bytes()).lines().map(Result::unwrap);
    assert_eq!(
        lines.next().unwrap(),
        "index,label,log_px_iwae1,log_px_iwae8"
    );
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 6);
    let mut mean8 = 0.0;
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0], i.to_string());
        let label: u8 = r[1].parse().expect("MNIST has labels");
        assert!(label <= 9);
        let lp8: f64 = r[3].parse().unwrap();
        assert!(lp8 < 0.0, "log p(x) of a binary image is negative: {r:?}");
        mean8 += -lp8 / 6.0;
    }
    // The file's values are the ones the summary averaged.
    assert!((mean8 - nll8).abs() < 1e-3 * nll8, "{mean8} vs {nll8}");

    // --posterior-mean: deterministic, the same with any seed.
    let pm = |seed: &str| -> String {
        let o = vnca()
            .args([
                "eval",
                "--limit",
                "4",
                "--posterior-mean",
                "--json",
                "--seed",
                seed,
            ])
            .arg("--checkpoint")
            .arg(out.join("latest.safetensors"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (a, b) = (pm("0"), pm("7"));
    assert_eq!(a, b);
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    let (recon, kl, loss) = (
        v["recon_nats"].as_f64().unwrap(),
        v["kl_nats"].as_f64().unwrap(),
        v["loss_nats"].as_f64().unwrap(),
    );
    assert!(
        recon > 0.0 && kl >= 0.0 && (recon + kl - loss).abs() < 1e-9,
        "{a}"
    );
    assert_eq!(v["n_images"], 4);

    // --skip: a long evaluation in parts. Images 2-3 evaluated on their own are the rows
    // 2-3 of the whole run (posterior mean: no noise; one image per batch either way).
    let rows_of = |extra: &[&str]| -> Vec<String> {
        let csv = dir.path().join("part.csv");
        let o = vnca()
            .args(["eval", "--posterior-mean", "--batch", "1", "--per-example"])
            .arg(&csv)
            .args(extra)
            .arg("--checkpoint")
            .arg(out.join("latest.safetensors"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = std::fs::read_to_string(&csv).unwrap();
        text.lines().skip(1).map(str::to_string).collect()
    };
    let whole = rows_of(&["--limit", "4"]);
    let part = rows_of(&["--skip", "2", "--limit", "2"]);
    assert_eq!(part, whole[2..4], "indices count from the split's start");
    assert!(part[0].starts_with("2,"), "{part:?}");
    let o = vnca()
        .args([
            "eval",
            "--posterior-mean",
            "--skip",
            "10000",
            "--checkpoint",
        ])
        .arg(out.join("latest.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.trim_end()
            .ends_with("error: --skip 10000: the test split has only 10000 images"),
        "{err}"
    );
}
