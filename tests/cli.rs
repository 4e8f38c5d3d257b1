//! The `vnca` binary end to end: train, eval, sample, info and data commands, and the
//! errors a user sees for mistakes (one line naming the file or field, exit code 1).
use std::path::Path;
use std::process::{Command, Output};

fn vnca(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vnca"))
        .args(["--threads", "1"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run vnca")
}

fn ok(args: &[&str]) -> String {
    let out = vnca(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vnca {args:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = vnca(args);
    assert_eq!(out.status.code(), Some(1), "vnca {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: "),
        "the error must be the last line: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn info_reports_the_paper_parameter_count() {
    let out = ok(&["info", "--preset", "mnist-doubling"]);
    assert!(
        out.contains("parameters   6585088 (encoder 5402880, update net 1182208)"),
        "{out}"
    );
    assert!(ok(&["info", "--list"]).contains("mnist-doubling-small"));
}

#[test]
fn train_eval_sample_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    ok(&[
        "train",
        "--preset",
        "tiny-test",
        "--steps",
        "4",
        "--out",
        out,
        "--quiet",
    ]);
    for f in [
        "latest.safetensors",
        "best.safetensors",
        "config.toml",
        "metrics.jsonl",
        "samples.png",
        "reconstructions.png",
    ] {
        assert!(dir.path().join(f).is_file(), "missing {f}");
    }
    let ck = dir.path().join("latest.safetensors");
    let json = ok(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--iw-samples",
        "4",
        "--limit",
        "6",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["n_images"], 6);
    assert_eq!(v["iw_samples"], 4);
    let nll = v["nll_nats"].as_f64().unwrap();
    assert!(nll > 50.0 && nll < 2000.0, "{nll}");
    let bpd = v["bpd"].as_f64().unwrap();
    assert!((bpd - nll / (784.0 * std::f64::consts::LN_2)).abs() < 1e-9);
    assert!(v["nll_stderr"].as_f64().unwrap() > 0.0);
    // Same seed, same number; a table without --json.
    let again: serde_json::Value = serde_json::from_str(
        ok(&[
            "eval",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--iw-samples",
            "4",
            "--limit",
            "6",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    assert_eq!(v["nll_nats"], again["nll_nats"]);
    let table = ok(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--iw-samples",
        "2",
        "--limit",
        "2",
    ]);
    assert!(
        table.contains("nats per image") && table.contains("bits/dim"),
        "{table}"
    );

    let png = dir.path().join("s.png");
    ok(&[
        "sample",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--n",
        "9",
        "--out",
        png.to_str().unwrap(),
    ]);
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (3 * 34 + 2, 3 * 34 + 2));

    // The run is not overwritten by accident; a stale temporary file of a killed write goes.
    let err = fails(&[
        "train",
        "--preset",
        "tiny-test",
        "--steps",
        "2",
        "--out",
        out,
        "--quiet",
    ]);
    assert!(
        err.contains("already holds a run") && err.contains("--resume"),
        "{err}"
    );
    std::fs::write(dir.path().join(".latest.safetensors.tmp-999999"), b"torn").unwrap();
    ok(&[
        "train",
        "--preset",
        "tiny-test",
        "--steps",
        "4",
        "--out",
        out,
        "--quiet",
        "--overwrite",
    ]);
    assert!(!dir.path().join(".latest.safetensors.tmp-999999").exists());

    let figs = dir.path().join("figs");
    let listed = ok(&[
        "figures",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        figs.to_str().unwrap(),
    ]);
    for f in [
        "samples.png",
        "samples_binary.png",
        "growth.png",
        "growth.gif",
        "recovery.png",
        "recovery.gif",
        "reconstructions.png",
        "interpolation.png",
    ] {
        assert!(
            listed.contains(f) && figs.join(f).is_file(),
            "figures did not write {f}"
        );
    }
    // growth.png: 4 rows (samples) x 15 states (tiny-test: seed, 10 steps, 4 doublings).
    let g = image::open(figs.join("growth.png")).unwrap();
    assert_eq!((g.width(), g.height()), (15 * 33 + 1, 4 * 33 + 1));

    // A bare weights file needs the architecture named.
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_weights.safetensors");
    let w = weights.to_str().unwrap();
    let err = fails(&["eval", "--checkpoint", w, "--limit", "1"]);
    assert!(err.contains("--preset"), "{err}");
    ok(&[
        "eval",
        "--checkpoint",
        w,
        "--preset",
        "tiny-test",
        "--limit",
        "2",
        "--iw-samples",
        "2",
        "--json",
    ]);
    // ...and the right one.
    let err = fails(&[
        "eval",
        "--checkpoint",
        w,
        "--preset",
        "mnist-doubling",
        "--limit",
        "1",
    ]);
    assert!(
        err.contains("tensor `encoder.0.") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn eval_reads_a_larochelle_amat_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = vnca::data::load_binarized_mnist(Path::new("data/binarized_mnist.vbm.gz")).unwrap();
    let amat = dir.path().join("binarized_mnist_test.amat");
    vnca::data::amat::write_amat(&amat, &data.test.slice(0..3)).unwrap();
    let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_weights.safetensors");
    let json = ok(&[
        "eval",
        "--checkpoint",
        w.to_str().unwrap(),
        "--preset",
        "tiny-test",
        "--data",
        amat.to_str().unwrap(),
        "--iw-samples",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["n_images"], 3);
    // A malformed .amat names the file and the line.
    std::fs::write(&amat, "0 1 2\n").unwrap();
    let err = fails(&[
        "eval",
        "--checkpoint",
        w.to_str().unwrap(),
        "--preset",
        "tiny-test",
        "--data",
        amat.to_str().unwrap(),
    ]);
    assert!(
        err.contains("binarized_mnist_test.amat") && err.contains("line 1"),
        "{err}"
    );
}

/// `vnca eval --precision bf16` runs the forward pass under bf16 autocast: the bound of
/// each image moves, but by a fraction of a nat (on the first 32 test images at IWAE-128,
/// mean +0.005 ± 0.044 nats, each within 0.6 of float32's; docs/BENCHMARKS.md, lever 8),
/// and the printout says the figures are not float32's. Measured on the h128 damage model,
/// the shipped one until 2026-12-08, kept in models/ as the h256 preset's start.
#[test]
fn eval_in_bf16_stays_near_float32() {
    let dir = tempfile::tempdir().unwrap();
    let run = |precision: &str| {
        let csv = dir.path().join(format!("{precision}.csv"));
        let args = [
            "eval",
            "--checkpoint",
            "models/mnist-nondoubling-damage-h128.safetensors",
            "--limit",
            "4",
            "--iw-samples",
            "8",
            "--precision",
            precision,
            "--per-example",
            csv.to_str().unwrap(),
        ];
        let out = vnca(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "vnca {args:?} failed:\n{stderr}");
        let out = String::from_utf8(out.stdout).unwrap() + &stderr;
        let text = std::fs::read_to_string(&csv).unwrap();
        let log_px: Vec<f64> = text
            .lines()
            .skip(1)
            .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
            .collect();
        (out, log_px)
    };
    let (out32, fp32) = run("fp32");
    let (out16, bf16) = run("bf16");
    assert!(!out32.contains("precision"), "{out32}");
    assert!(out16.contains("precision    bf16"), "{out16}");
    // A CPU that emulates bf16 gets told that fp32 is faster there.
    assert!(!out32.contains("warning"), "{out32}");
    assert_eq!(
        out16.contains("warning: bf16 on a CPU without bfloat16 arithmetic"),
        !vnca::precision::cpu_has_native_bf16(),
        "{out16}"
    );
    assert_eq!((fp32.len(), bf16.len()), (4, 4));
    let diffs: Vec<f64> = fp32.iter().zip(&bf16).map(|(a, b)| b - a).collect();
    assert!(
        diffs.iter().any(|d| d.abs() > 1e-4),
        "autocast not applied: {diffs:?}"
    );
    assert!(diffs.iter().all(|d| d.abs() < 2.0), "{fp32:?} {bf16:?}");
    assert!(
        fp32.iter().all(|lp| (-250.0..-40.0).contains(lp)),
        "{fp32:?}"
    );
}

#[test]
fn user_mistakes_get_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = vnca::config::Config::preset("tiny-test")
        .unwrap()
        .to_toml()
        .replace("p_update = 1.0", "p_update = 2.0");
    std::fs::write(&bad, text).unwrap();
    let err = fails(&["info", "--config", bad.to_str().unwrap()]);
    assert!(
        err.contains("bad.toml") && err.contains("model.p_update"),
        "{err}"
    );
    let err = fails(&["train", "--preset", "no-such-preset"]);
    assert!(err.contains("unknown preset `no-such-preset`"), "{err}");
    let err = fails(&["--device", "tpu", "info"]);
    assert!(err.contains("unknown device `tpu`"), "{err}");
    if !tch::Cuda::is_available() {
        let err = fails(&["--device", "cuda", "info"]);
        assert!(err.contains("CUDA"), "{err}");
    }
    let err = fails(&["eval", "--checkpoint", "/nonexistent/x.safetensors"]);
    assert!(err.contains("/nonexistent/x.safetensors"), "{err}");
    let out = dir.path().to_str().unwrap();
    let err = fails(&[
        "train",
        "--preset",
        "tiny-test",
        "--out",
        out,
        "--resume",
        "--quiet",
    ]);
    assert!(
        err.contains("no checkpoint") && err.contains("latest.safetensors"),
        "{err}"
    );
    let err = fails(&[
        "train",
        "--preset",
        "tiny-test",
        "--data",
        "/nonexistent/mnist.gz",
        "--out",
        out,
        "--quiet",
    ]);
    assert!(err.contains("/nonexistent/mnist.gz"), "{err}");
}

#[test]
fn binarize_command_reproduces_the_shipped_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b.vbm.gz");
    let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    let printed = ok(&[
        "data",
        "binarize-mnist",
        "--mnist-dir",
        mnist.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        printed.contains("train 50000, valid 10000, test 10000"),
        "{printed}"
    );
    let ours = vnca::data::load_binarized_mnist(&out).unwrap();
    let shipped =
        vnca::data::load_binarized_mnist(Path::new("data/binarized_mnist.vbm.gz")).unwrap();
    assert!(
        ours == shipped,
        "the shipped data/binarized_mnist.vbm.gz is not what the command makes"
    );
    assert_eq!(ours.test.label(0), Some(7));
}

/// `vnca bench --checkpoint` measures the trained model under its own config (here the
/// shipped non-doubling one, not the default preset), in both denormal modes, and refuses
/// the PyTorch mirror, which cannot load it. Structure only: speed is never asserted.
#[test]
fn bench_measures_a_checkpoint_under_its_own_config() {
    let ck = "models/mnist-nondoubling-damage-h256.safetensors";
    let args = [
        "bench",
        "--checkpoint",
        ck,
        "--no-mirror",
        "--json",
        "--batch",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--iwae-images",
        "1",
        "--iw-samples",
        "2",
    ];
    for keep in [false, true] {
        let mut all: Vec<&str> = if keep {
            vec!["--keep-denormals"]
        } else {
            vec![]
        };
        all.extend(args);
        let report: serde_json::Value = serde_json::from_str(&ok(&all)).unwrap();
        assert_eq!(
            report["preset"],
            format!("mnist-nondoubling-damage-h256 ({ck})"),
            "{report}"
        );
        assert_eq!(report["train_step_ours"]["n"], 1, "{report}");
        assert!(report["train_step_ours"]["median"].as_f64().unwrap() > 0.0);
        assert!(report["train_step_mirror"].is_null());
    }
    let err = fails(&["bench", "--checkpoint", ck]);
    assert!(err.contains("--no-mirror"), "{err}");
}

/// `vnca damage-eval --per-example` on the shipped damage model: one CSV line per image
/// whose columns average to the table's rows, and damage that costs and heals.
#[test]
fn damage_eval_writes_one_line_per_image() {
    let dir = tempfile::tempdir().unwrap();
    // Six test images in batches of 4; returns the printed table and the CSV's text.
    let damage_eval = |steps: &str| {
        let csv = dir.path().join(format!("healing-{steps}.csv"));
        let table = ok(&[
            "damage-eval",
            "--checkpoint",
            "models/mnist-nondoubling-damage-h256.safetensors",
            "--n",
            "6",
            "--batch",
            "4",
            "--steps",
            steps,
            "--per-example",
            csv.to_str().unwrap(),
        ]);
        (table, std::fs::read_to_string(&csv).unwrap())
    };
    let (table, text) = damage_eval("32,1");
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,label,grown,damaged,after_1,after_32"
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 6);
    assert_eq!(
        rows[0][..2],
        [0.0, 7.0],
        "index 0 is the test set's first image, a 7"
    );
    let mean = |col: usize| rows.iter().map(|r| r[col]).sum::<f64>() / 6.0;
    // The table prints the same means (2 decimals): | stage | steps | log p(x) | s.e. |
    for (stage, col) in [
        ("| grown | 0 |", 2),
        ("| damaged | 0 |", 3),
        ("| recovered | 32 |", 5),
    ] {
        let line = table.lines().find(|l| l.starts_with(stage)).unwrap();
        let printed: f64 = line.split('|').nth(3).unwrap().trim().parse().unwrap();
        assert!(
            (printed - mean(col)).abs() < 0.006,
            "{stage}: {printed} vs {}",
            mean(col)
        );
    }
    // A trained damage model: an erased half-side square costs, and 32 steps win most back.
    assert!(mean(3) < mean(2) - 20.0, "{table}");
    assert!(mean(5) > mean(3) + 20.0, "{table}");
    // Asking for fewer step counts draws the same noise for the others: the same values.
    let (_, text32) = damage_eval("32");
    let only32: Vec<String> = text32.lines().skip(1).map(str::to_string).collect();
    let without_1: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            [f[0], f[1], f[2], f[3], f[5]].join(",")
        })
        .collect();
    assert_eq!(only32, without_1);
}

/// The narrow damage model the shipped one was widened from (`checkpoints/README.md`).
const NARROW_DAMAGE_MODEL: &str = "checkpoints/mnist-nondoubling-damage-demo/latest.safetensors";

#[test]
fn train_init_from_starts_from_a_trained_model_and_widens_a_narrower_one() {
    let dir = tempfile::tempdir().unwrap();
    let narrow = dir.path().join("narrow.safetensors");
    std::fs::copy(NARROW_DAMAGE_MODEL, &narrow).unwrap();
    // The damage demo run (Z = hidden = 32, with its Adam state) under a config 8 wider,
    // a few tiny updates at a negligible learning rate: the validation NLL is the trained
    // model's (about 128 nats on these images), not a fresh model's (over 500).
    let config = |z_dim: i64, name: &str| {
        let mut cfg = vnca::config::Config::preset("mnist-nondoubling-damage-demo").unwrap();
        (cfg.model.z_dim, cfg.model.hidden) = (z_dim, z_dim);
        let t = &mut cfg.train;
        (t.batch_size, t.lr, t.steps, t.eval_every, t.eval_images) = (4, 1e-9, 2, 2, 16);
        t.pool.as_mut().unwrap().size = 8;
        t.init_from = Some(narrow.clone());
        let path = dir.path().join(name);
        std::fs::write(&path, cfg.to_toml()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let wide = config(40, "wide.toml");
    ok(&["train", "--config", &wide, "--out", out, "--quiet"]);
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let eval: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "eval")
        .unwrap();
    let nll = eval["nll_nats"].as_f64().unwrap();
    assert!((100.0..160.0).contains(&nll), "validation NLL {nll}");
    // The run records where it started; a resume takes `latest` and ignores it.
    let saved = std::fs::read_to_string(dir.path().join("run/config.toml")).unwrap();
    assert!(saved.contains("init_from = ") && saved.contains("narrow.safetensors"));
    std::fs::remove_file(&narrow).unwrap();
    ok(&["train", "--out", out, "--resume", "--steps", "3", "--quiet"]);
    // Starting anew: a missing file (the config's, or --init-from's in its place) and a
    // model wider than the config are refused.
    let fresh = dir.path().join("fresh");
    let fresh = fresh.to_str().unwrap();
    let err = fails(&["train", "--config", &wide, "--out", fresh, "--quiet"]);
    assert!(err.contains("narrow.safetensors"), "{err}");
    std::fs::copy(NARROW_DAMAGE_MODEL, &narrow).unwrap();
    let missing = ["--init-from", "/nonexistent/w.safetensors"];
    let err = fails(&[&["train", "--config", &wide, "--out", fresh][..], &missing].concat());
    assert!(err.contains("/nonexistent/w.safetensors"), "{err}");
    let err = fails(&[
        "train",
        "--config",
        &config(16, "narrower.toml"),
        "--out",
        fresh,
        "--quiet",
    ]);
    assert!(
        err.contains("train.init_from") && err.contains("can only be widened"),
        "{err}"
    );
}

#[test]
fn export_keeps_the_model_and_drops_the_training_state() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("latest.safetensors");
    std::fs::copy(NARROW_DAMAGE_MODEL, &run).unwrap();
    let weights = dir.path().join("w.safetensors");
    let (run_s, weights_s) = (run.to_str().unwrap(), weights.to_str().unwrap());
    let printed = ok(&["export", "--checkpoint", run_s, "--out", weights_s]);
    // The demo run's `latest` holds its state at update 56,500 (checkpoints/README.md).
    assert!(printed.contains("at step 56500"), "{printed}");

    let (src_bytes, dst_bytes) = (
        std::fs::read(&run).unwrap(),
        std::fs::read(&weights).unwrap(),
    );
    let src = safetensors::SafeTensors::deserialize(&src_bytes).unwrap();
    let dst = safetensors::SafeTensors::deserialize(&dst_bytes).unwrap();
    let mut model_names: Vec<String> = src
        .names()
        .into_iter()
        .filter(|n| !n.starts_with("adam.") && !n.starts_with("pool."))
        .cloned()
        .collect();
    model_names.sort();
    let mut kept: Vec<String> = dst.names().into_iter().cloned().collect();
    kept.sort();
    assert_eq!(kept, model_names);
    assert!(
        src.names().len() > 2 * kept.len(),
        "the run holds Adam's moments"
    );
    for name in &kept {
        let (a, b) = (src.tensor(name).unwrap(), dst.tensor(name).unwrap());
        assert_eq!((a.shape(), a.data()), (b.shape(), b.data()), "{name}");
    }
    // The config and the step travel in the header: the file loads on its own and gives
    // the run's numbers to the last digit.
    let eval = |ck: &str| {
        let args = [
            "eval",
            "--checkpoint",
            ck,
            "--posterior-mean",
            "--limit",
            "4",
        ];
        ok(&[&args[..], &["--json"]].concat())
    };
    assert_eq!(eval(run_s), eval(weights_s));
    assert!(
        printed.contains(&format!("{} model tensors", kept.len())),
        "{printed}"
    );

    // Never over the run's own checkpoint (its Adam state would be lost), and it stays intact.
    let err = fails(&["export", "--checkpoint", run_s, "--out", run_s]);
    assert!(err.contains("optimizer state"), "{err}");
    assert_eq!(std::fs::read(&run).unwrap(), src_bytes);
    let err = fails(&[
        "export",
        "--checkpoint",
        "/nonexistent/l.safetensors",
        "--out",
        weights_s,
    ]);
    assert!(err.contains("/nonexistent/l.safetensors"), "{err}");
}
