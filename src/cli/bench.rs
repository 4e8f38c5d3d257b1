//! `vnca bench` and its worker processes.
use crate::bench;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct BenchShape {
    /// Preset whose model is measured.
    #[arg(long, default_value = "mnist-doubling")]
    pub preset: String,
    /// Training batch size (the hot loop uses it too).
    #[arg(long, default_value_t = 32)]
    pub batch: i64,
    /// Timed repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Images in the IWAE measurement (each decodes --iw-samples seeds).
    #[arg(long, default_value_t = 2)]
    pub iwae_images: usize,
    #[arg(long, default_value_t = 128)]
    pub iw_samples: i64,
    /// Measure our training step with gradient checkpointing (recomputation).
    #[arg(long)]
    pub grad_checkpointing: bool,
    /// fp32, tf32 or bf16, for ours and the mirror alike (src/precision.rs).
    #[arg(long, value_enum, default_value_t = crate::precision::Precision::Fp32)]
    pub precision: crate::precision::Precision,
    /// Measure a trained model (a run's checkpoint; its config replaces --preset) instead of
    /// a fresh one; needs --no-mirror (the mirror cannot load it).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub shape: BenchShape,
    /// Python with torch for the reference mirror (default: $VNCA_PYTHON, else the
    /// project's .venv/bin/python, else `python3` on PATH).
    #[arg(long, env = "VNCA_PYTHON")]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch mirror.
    #[arg(long)]
    pub no_mirror: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn bench_options(
    s: &BenchShape,
    device: tch::Device,
    threads: usize,
    flush_denormals: bool,
    python: Option<PathBuf>,
) -> bench::BenchOptions {
    bench::BenchOptions {
        preset: s.preset.clone(),
        checkpoint: s.checkpoint.clone(),
        batch: s.batch,
        repeats: s.repeats,
        warmup: s.warmup,
        iwae_images: s.iwae_images,
        iw_samples: s.iw_samples,
        grad_checkpointing: s.grad_checkpointing,
        precision: s.precision,
        threads,
        device,
        python,
        flush_denormals,
    }
}

pub(super) fn cmd_bench(
    a: BenchArgs,
    device: tch::Device,
    threads: usize,
    flush_denormals: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.shape.checkpoint.is_none() || a.no_mirror,
        "--checkpoint measures our model only (the PyTorch mirror cannot load it): add --no-mirror"
    );
    let python = if a.no_mirror {
        None
    } else {
        let p = a
            .python
            .or_else(|| crate::check::find_repo_path(".venv/bin/python"))
            .unwrap_or_else(|| PathBuf::from("python3"));
        let runs = std::process::Command::new(&p)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success());
        anyhow::ensure!(
            runs,
            "`{}` cannot import torch for the mirror (run `make setup`, pass --python, or --no-mirror)",
            p.display()
        );
        Some(p)
    };
    let o = bench_options(&a.shape, device, threads, flush_denormals, python);
    let quiet = a.json;
    let r = bench::run(&o, &mut |m| {
        if !quiet {
            eprintln!("{m}")
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", bench::table(&r));
    }
    Ok(())
}
