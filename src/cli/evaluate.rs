//! `vnca eval` (IWAE NLL) and `vnca damage-eval`.
use super::ArchArgs;
use crate::data;
use crate::dataset;
use crate::eval;
use crate::noise::Noise;
use crate::restore::load_model;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run's checkpoint, or a bare safetensors weights file (then name --preset/--config).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub arch: ArchArgs,
    /// Data: our packed file, or a directory of Larochelle .amat files, or one .amat file.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// train, valid or test (ignored when --data is a single .amat file).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Importance samples per image.
    #[arg(long, default_value_t = 128)]
    pub iw_samples: i64,
    /// Evaluate only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per batch (each decodes iw_samples seeds).
    #[arg(long, default_value_t = 4)]
    pub batch: i64,
    /// Seed of the importance-sampling noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DamageEvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub arch: ArchArgs,
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Images evaluated (the first N of the split).
    #[arg(long, default_value_t = 256)]
    pub n: usize,
    /// Side of the erased square (default: half the image side: 14 for MNIST 28x28).
    #[arg(long)]
    pub damage_size: Option<i64>,
    /// Recovery step counts at which to score, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32,64")]
    pub steps: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch: i64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

pub(super) fn cmd_eval(a: EvalArgs, device: tch::Device) -> anyhow::Result<()> {
    let (model, mut cfg) = load_model(&a.checkpoint, a.arch.explicit()?, device)?;
    let split = match &a.data {
        Some(p) if p.extension().is_some_and(|e| e == "amat") => {
            let set = data::amat::read_amat(p)?;
            dataset::Split::from_image_set(&p.display().to_string(), &set)
        }
        other => {
            if let Some(p) = other {
                cfg.data.path = p.clone();
            }
            dataset::load_split(&cfg, &a.split)?
        }
    };
    let n = a
        .limit
        .map_or(split.len() as u64, |l| (l as u64).min(split.len() as u64));
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(n)
    };
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} images ETA {eta}",
    )?);
    let mut noise = Noise::new(a.seed);
    let max_decode = (a.batch * a.iw_samples).max(1);
    let r = eval::nll(
        &model,
        &split,
        a.limit,
        a.iw_samples,
        a.batch,
        max_decode,
        &mut noise,
        &mut |d| bar.set_position(d as u64),
    );
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("model        {} ({})", cfg.name, a.checkpoint.display());
        println!("split        {} ({} images)", r.split, r.n_images);
        println!("bound        IWAE-{}", r.iw_samples);
        println!(
            "NLL          {:.3} ± {:.3} nats per image (standard error)",
            r.nll_nats, r.nll_stderr
        );
        println!("bits/dim     {:.5} (over {} pixels)", r.bpd, r.bpd_dims);
        println!("time         {:.1} s", r.seconds);
    }
    Ok(())
}

pub(super) fn cmd_damage_eval(a: DamageEvalArgs, device: tch::Device) -> anyhow::Result<()> {
    let (model, mut cfg) = load_model(&a.checkpoint, a.arch.explicit()?, device)?;
    if let Some(d) = a.data {
        cfg.data.path = d;
    }
    let split = dataset::load_split(&cfg, &a.split)?;
    let side = a.damage_size.unwrap_or(cfg.model.image_size / 2);
    anyhow::ensure!(
        side >= 1 && side <= cfg.model.image_size,
        "--damage-size {side} must be in 1..={}",
        cfg.model.image_size
    );
    let mut noise = Noise::new(a.seed);
    let r =
        crate::damage_eval::damage_eval(&model, &split, a.n, side, &a.steps, a.batch, &mut noise);
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", crate::damage_eval::table(&r));
    }
    Ok(())
}
