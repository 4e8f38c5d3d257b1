//! `vnca bench`: speed and memory of the VNCA against a PyTorch mirror of the reference
//! code (tools/reference_mirror.py), measured in one run on one machine and reported as
//! ratios, because absolute times on shared machines drift.
//!
//! Measured: (1) a full training step of a preset (default: the paper's doubling MNIST),
//! ours and the mirror's; (2) the NCA hot loop (update net fwd+bwd over [B, Z, 32, 32])
//! in GFLOP/s against libtorch's sgemm of the same shape; (3) IWAE-K evaluation
//! throughput, ours and the mirror's; (4) one sample's whole growth on one thread;
//! (5) peak RSS of a training-step process, ours and the mirror's. Training steps and
//! IWAE run in child processes (`vnca bench-worker`) so each peak RSS is its own.
use crate::config::Config;
use crate::model::Vnca;
use crate::noise::Noise;
use crate::objective::{elbo, elbo_recompute, iwae};
use crate::precision::Precision;
use crate::train::optim::{clip_grad_norm, zero_grad, Adam};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub preset: String,
    /// Trained weights (and their config, which replaces the preset's) instead of a fresh
    /// initialisation: a trained model's activations are what a long run computes on
    /// (saturated ELUs, denormal floats). Ours only: the mirror has no way to load them.
    pub checkpoint: Option<PathBuf>,
    pub batch: i64,
    pub repeats: usize,
    pub warmup: usize,
    pub iwae_images: usize,
    pub iw_samples: i64,
    pub threads: usize,
    pub device: Device,
    /// Our training step with gradient checkpointing (recomputation), as the reference.
    pub grad_checkpointing: bool,
    /// Python with torch for the mirror; None skips the mirror columns.
    pub python: Option<PathBuf>,
    /// Arithmetic of ours and the mirror's (TF32 and cuDNN switches, bf16 autocast).
    pub precision: Precision,
    /// Denormal floats flushed to zero on the CPU, ours and the mirror's alike
    /// (`crate::precision::flush_denormals`; `vnca --keep-denormals` turns it off).
    pub flush_denormals: bool,
}

/// One child process's measurements.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerResult {
    pub seconds: Vec<f64>,
    pub peak_rss_bytes: u64,
}

/// Median and spread of repeated timings.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Timing {
    pub fn of(xs: &[f64]) -> Timing {
        let mut v = xs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Timing {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            n,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub preset: String,
    pub batch: i64,
    pub threads: usize,
    pub grad_checkpointing: bool,
    pub device: String,
    pub precision: Precision,
    pub train_step_ours: Timing,
    pub train_step_mirror: Option<Timing>,
    pub train_step_ratio: Option<f64>,
    pub hot_loop_gflops: f64,
    pub sgemm_gflops: f64,
    pub hot_loop_fraction_of_sgemm: f64,
    pub iwae_images_per_s_ours: f64,
    pub iwae_images_per_s_mirror: Option<f64>,
    pub iwae_ratio: Option<f64>,
    pub growth_seconds_one_thread: Timing,
    pub peak_rss_ours_bytes: u64,
    pub peak_rss_mirror_bytes: Option<u64>,
    pub peak_rss_ratio: Option<f64>,
}

/// Peak resident set size of this process (VmHWM), bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

fn random_images(b: i64, size: i64, device: Device) -> Tensor {
    Tensor::rand([b, 1, size, size], (Kind::Float, device))
        .lt(0.2)
        .to_kind(Kind::Float)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The measured model: the checkpoint's, else the preset's freshly initialised.
fn measured_model(o: &BenchOptions) -> anyhow::Result<(Vnca, Config)> {
    match &o.checkpoint {
        Some(path) => crate::restore::load_model(path, None, o.device),
        None => {
            let cfg = Config::preset(&o.preset)?;
            Ok((Vnca::new(&cfg.model, o.device, 0), cfg))
        }
    }
}

/// The work of one child process: `train` (full training steps) or `iwae` (IWAE-K, ours
/// with up to 4 images per decode as `vnca eval`; the mirror one image at a time as the
/// reference's test loop). Prints nothing; returns timings.
pub fn worker(what: &str, o: &BenchOptions) -> anyhow::Result<WorkerResult> {
    o.precision.configure();
    let (model, cfg) = measured_model(o)?;
    let size = cfg.model.image_size;
    let p = o.precision;
    let mut noise = Noise::new(0);
    let mut seconds = Vec::new();
    match what {
        "train" => {
            let params = model.params();
            let mut adam = Adam::new(
                &params,
                cfg.train.lr,
                cfg.train.adam_betas,
                cfg.train.adam_eps,
            );
            let x = random_images(o.batch, size, o.device);
            for i in 0..o.warmup + o.repeats {
                let t0 = Instant::now();
                zero_grad(&params);
                let objective = if o.grad_checkpointing {
                    elbo_recompute
                } else {
                    elbo
                };
                p.autocast(o.device, || {
                    objective(&model, &x, cfg.train.beta, &mut noise)
                })
                .loss
                .backward();
                clip_grad_norm(&params, cfg.train.grad_clip);
                adam.update(&params);
                sync(o.device);
                if i >= o.warmup {
                    seconds.push(t0.elapsed().as_secs_f64());
                }
            }
        }
        "iwae" => {
            let xs = random_images(o.iwae_images as i64, size, o.device);
            // As `vnca eval` runs by default: up to 4 images (4 x K seeds) per decode.
            let per = (o.iwae_images as i64).clamp(1, 4);
            tch::no_grad(|| {
                for i in 0..o.warmup + o.repeats {
                    let t0 = Instant::now();
                    let mut j = 0;
                    while j < o.iwae_images as i64 {
                        let len = per.min(o.iwae_images as i64 - j);
                        let x = xs.narrow(0, j, len);
                        let _ = p.autocast(o.device, || {
                            iwae(&model, &x, o.iw_samples, len * o.iw_samples, &mut noise)
                        });
                        j += len;
                    }
                    sync(o.device);
                    if i >= o.warmup {
                        seconds.push(t0.elapsed().as_secs_f64());
                    }
                }
            });
        }
        other => anyhow::bail!("unknown bench worker `{other}`"),
    }
    Ok(WorkerResult {
        seconds,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// The PyTorch mirror of the reference, relative to the repository root.
pub const MIRROR_SCRIPT: &str = "tools/reference_mirror.py";

fn run_child(mut cmd: Command, what: &str) -> anyhow::Result<WorkerResult> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("cannot start the {what} benchmark: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{what} benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line)
        .map_err(|e| anyhow::anyhow!("{what} benchmark printed `{line}`: {e}"))
}

fn ours(what: &str, o: &BenchOptions, dev: &str) -> anyhow::Result<WorkerResult> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "--threads",
        &o.threads.to_string(),
        "--device",
        dev,
        "bench-worker",
        what,
    ]);
    cmd.args(["--preset", &o.preset, "--batch", &o.batch.to_string()]);
    if let Some(path) = &o.checkpoint {
        cmd.arg("--checkpoint").arg(path);
    }
    cmd.args([
        "--repeats",
        &o.repeats.to_string(),
        "--warmup",
        &o.warmup.to_string(),
    ]);
    cmd.args([
        "--iwae-images",
        &o.iwae_images.to_string(),
        "--iw-samples",
        &o.iw_samples.to_string(),
    ]);
    if o.grad_checkpointing {
        cmd.arg("--grad-checkpointing");
    }
    cmd.args(["--precision", &o.precision.to_string()]);
    if !o.flush_denormals {
        cmd.arg("--keep-denormals");
    }
    run_child(cmd, &format!("our {what}"))
}

fn mirror(
    what: &str,
    o: &BenchOptions,
    python: &PathBuf,
    dev: &str,
) -> anyhow::Result<WorkerResult> {
    let cfg = Config::preset(&o.preset)?;
    let script = crate::check::find_repo_path(MIRROR_SCRIPT).ok_or_else(|| {
        anyhow::anyhow!("cannot find {MIRROR_SCRIPT} (run from the repository, or --no-mirror)")
    })?;
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(what);
    cmd.args(["--device", dev, "--precision", &o.precision.to_string()]);
    cmd.args([
        "--batch",
        &o.batch.to_string(),
        "--repeats",
        &o.repeats.to_string(),
    ]);
    cmd.args([
        "--warmup",
        &o.warmup.to_string(),
        "--threads",
        &o.threads.to_string(),
    ]);
    cmd.args([
        "--z",
        &cfg.model.z_dim.to_string(),
        "--hid",
        &cfg.model.hidden.to_string(),
    ]);
    cmd.args(["--enc", &cfg.model.encoder_width.to_string()]);
    if o.flush_denormals {
        cmd.arg("--flush-denormal");
    }
    cmd.args([
        "--images",
        &o.iwae_images.to_string(),
        "--iw-samples",
        &o.iw_samples.to_string(),
    ]);
    run_child(cmd, &format!("mirror {what}"))
}

/// Update net fwd+bwd over a [B, Z, 32, 32] state: GFLOP/s, the FLOPs counted from the
/// update net's weights (`UpdateNet::macs_per_cell`).
fn hot_loop(model: &Vnca, o: &BenchOptions) -> f64 {
    let z = model.cfg.z_dim;
    let update_net = &model.nca().update_net;
    let cells = (o.batch * 32 * 32) as f64;
    let fwd_per_cell = 2.0 * update_net.macs_per_cell() as f64;
    let flops = 3.0 * fwd_per_cell * cells; // backward = 2x forward (input and weight grads)
    let state =
        Tensor::randn([o.batch, z, 32, 32], (Kind::Float, o.device)).set_requires_grad(true);
    let mut times = Vec::new();
    for i in 0..o.warmup + o.repeats {
        let t0 = Instant::now();
        let out = update_net.forward(&state);
        out.sum(Kind::Float).backward();
        sync(o.device);
        if i >= o.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    flops / Timing::of(&times).median / 1e9
}

/// libtorch sgemm [B*1024, H] x [H, H]: the ceiling for the 1x1 convolutions.
fn sgemm(h: i64, o: &BenchOptions) -> f64 {
    let m = o.batch * 1024;
    let a = Tensor::randn([m, h], (Kind::Float, o.device));
    let b = Tensor::randn([h, h], (Kind::Float, o.device));
    let mut times = Vec::new();
    for i in 0..o.warmup + o.repeats * 3 {
        let t0 = Instant::now();
        let _c = a.matmul(&b);
        sync(o.device);
        if i >= o.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    2.0 * (m * h * h) as f64 / Timing::of(&times).median / 1e9
}

/// One sample's whole growth (all NCA steps) at batch 1 on one thread, no gradient.
fn growth_one_thread(model: &Vnca, o: &BenchOptions) -> Timing {
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let mut noise = Noise::new(3);
    let mut times = Vec::new();
    tch::no_grad(|| {
        for i in 0..o.warmup + o.repeats.max(3) {
            let t0 = Instant::now();
            let _ = model.sample_prior(1, &mut noise);
            sync(o.device);
            if i >= o.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
    });
    tch::set_num_threads(threads);
    Timing::of(&times)
}

/// Run every measurement; `log` receives progress lines.
pub fn run(o: &BenchOptions, log: &mut dyn FnMut(&str)) -> anyhow::Result<BenchReport> {
    let dev = match o.device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    };
    log("training step (ours)...");
    let train_ours = ours("train", o, &dev)?;
    let train_mirror = match &o.python {
        Some(py) => {
            log("training step (PyTorch mirror of the reference)...");
            Some(mirror("train", o, py, &dev)?)
        }
        None => None,
    };
    log("IWAE (ours)...");
    let iwae_ours = ours("iwae", o, &dev)?;
    let iwae_mirror = match &o.python {
        Some(py) => {
            log("IWAE (mirror)...");
            Some(mirror("iwae", o, py, &dev)?)
        }
        None => None,
    };
    log("hot loop, sgemm, growth...");
    let (model, cfg) = measured_model(o)?;
    let hot = hot_loop(&model, o);
    let gemm = sgemm(cfg.model.hidden, o);
    let growth = growth_one_thread(&model, o);

    let t_ours = Timing::of(&train_ours.seconds);
    let t_mirror = train_mirror.as_ref().map(|m| Timing::of(&m.seconds));
    let ips = |r: &WorkerResult| o.iwae_images as f64 / Timing::of(&r.seconds).median;
    let iwae_o = ips(&iwae_ours);
    let iwae_m = iwae_mirror.as_ref().map(ips);
    Ok(BenchReport {
        preset: match &o.checkpoint {
            Some(path) => format!("{} ({})", cfg.name, path.display()),
            None => o.preset.clone(),
        },
        batch: o.batch,
        threads: o.threads,
        grad_checkpointing: o.grad_checkpointing,
        device: dev,
        precision: o.precision,
        train_step_ratio: t_mirror.as_ref().map(|m| m.median / t_ours.median),
        train_step_ours: t_ours,
        train_step_mirror: t_mirror,
        hot_loop_gflops: hot,
        sgemm_gflops: gemm,
        hot_loop_fraction_of_sgemm: hot / gemm,
        iwae_images_per_s_ours: iwae_o,
        iwae_ratio: iwae_m.map(|m| iwae_o / m),
        iwae_images_per_s_mirror: iwae_m,
        growth_seconds_one_thread: growth,
        peak_rss_ours_bytes: train_ours.peak_rss_bytes,
        peak_rss_ratio: train_mirror
            .as_ref()
            .map(|m| train_ours.peak_rss_bytes as f64 / m.peak_rss_bytes as f64),
        peak_rss_mirror_bytes: train_mirror.map(|m| m.peak_rss_bytes),
    })
}

/// The report as a Markdown table (what docs/BENCHMARKS.md records).
pub fn table(r: &BenchReport) -> String {
    let t = |x: &Timing| format!("{:.3} s [{:.3}-{:.3}, n={}]", x.median, x.min, x.max, x.n);
    let opt = |x: Option<String>| x.unwrap_or_else(|| "-".into());
    let mb = |b: u64| format!("{:.0} MB", b as f64 / 1e6);
    let mut s = String::new();
    s += &format!(
        "preset {}, batch {}, device {}, precision {}, {} threads\n\n",
        r.preset, r.batch, r.device, r.precision, r.threads
    );
    s += "| measurement | ours | PyTorch mirror | ratio |\n|---|---|---|---|\n";
    s += &format!(
        "| training step (median [min-max]) | {} | {} | {} (mirror/ours) |\n",
        t(&r.train_step_ours),
        opt(r.train_step_mirror.as_ref().map(t)),
        opt(r.train_step_ratio.map(|v| format!("{v:.2}x")))
    );
    s += &format!(
        "| IWAE evaluation | {:.3} images/s | {} | {} (ours/mirror) |\n",
        r.iwae_images_per_s_ours,
        opt(r
            .iwae_images_per_s_mirror
            .map(|v| format!("{v:.3} images/s"))),
        opt(r.iwae_ratio.map(|v| format!("{v:.2}x")))
    );
    s += &format!(
        "| peak RSS, training-step process | {} | {} | {} (ours/mirror) |\n",
        mb(r.peak_rss_ours_bytes),
        opt(r.peak_rss_mirror_bytes.map(mb)),
        opt(r.peak_rss_ratio.map(|v| format!("{v:.2}")))
    );
    s += &format!(
        "| NCA hot loop fwd+bwd | {:.1} GFLOP/s | sgemm ceiling {:.1} GFLOP/s | {:.0}% of sgemm |\n",
        r.hot_loop_gflops,
        r.sgemm_gflops,
        100.0 * r.hot_loop_fraction_of_sgemm
    );
    s += &format!(
        "| whole growth, 1 sample, 1 thread | {} | - | - |\n",
        t(&r.growth_seconds_one_thread)
    );
    s
}
