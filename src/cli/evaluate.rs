//! `vnca eval` (IWAE NLL) and `vnca damage-eval`.
use super::ArchArgs;
use crate::data;
use crate::dataset;
use crate::eval;
use crate::noise::Noise;
use crate::precision::Precision;
use crate::restore::load_model;
use anyhow::Context;
use clap::Args;
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
    /// Importance samples per image; several, comma-separated (e.g. `1,8,128`), print how
    /// the bound tightens (each K is a separate pass with the same seed).
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub iw_samples: Vec<i64>,
    /// Start at image N of the split (0-based): a long evaluation run in parts, e.g.
    /// `--limit 500` then `--skip 500 --limit 500`. Each part draws its own noise from
    /// `--seed`, so the parts are not the draws of one whole run (the same distribution);
    /// `--per-example` indices count from the split's start.
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Evaluate only the first N images (after --skip).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per batch (each decodes iw_samples seeds).
    #[arg(long, default_value_t = 4)]
    pub batch: i64,
    /// Seed of the importance-sampling noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write one CSV line per image: index, label (empty when the data have none), and
    /// log p(x) for each K (with --posterior-mean: log p(x | z = mu) and the KL).
    #[arg(long, value_name = "FILE")]
    pub per_example: Option<PathBuf>,
    /// Deterministic evaluation instead of IWAE: per image log p(x | z = mu) and
    /// KL(q || p), no sampled z (exact comparisons between implementations or checkpoints).
    #[arg(long)]
    pub posterior_mean: bool,
    /// fp32 (default; every figure of the README), tf32 or bf16 (autocast around the
    /// encoder and the update network, src/precision.rs): IWAE ran 2.0-2.6x faster in bf16
    /// on an AMX Xeon (docs/BENCHMARKS.md, lever 8), at the cost of a bound that moves by
    /// a fraction of a nat per image: a quick look at a checkpoint, not a figure to quote.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
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
    /// Side of the erased square (default: half the image side: 14 for MNIST 28x28). 0
    /// erases nothing: the same draws and steps without damage, how well a grown image
    /// persists (the baseline of the recovery figures).
    #[arg(long)]
    pub damage_size: Option<i64>,
    /// Recovery step counts at which to score, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32,64")]
    pub steps: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch: i64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write one CSV line per image: index, label, and log p(x | state) grown, damaged
    /// and after each recovery step count (which images heal, which regrow another digit).
    #[arg(long, value_name = "FILE")]
    pub per_example: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub(super) fn cmd_eval(a: EvalArgs, device: tch::Device) -> anyhow::Result<()> {
    let (model, mut cfg) = load_model(&a.checkpoint, a.arch.explicit()?, device)?;
    a.precision.configure();
    if let Some(warning) = a.precision.slowness_warning(device) {
        eprintln!("{warning}");
    }
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
    let split = match a.skip {
        0 => split,
        first => split
            .skip(first)
            .with_context(|| format!("--skip {first}"))?,
    };
    anyhow::ensure!(
        a.iw_samples.iter().all(|&k| k >= 1),
        "--iw-samples {:?}: each must be >= 1",
        a.iw_samples
    );
    anyhow::ensure!(a.batch >= 1, "--batch {} must be >= 1", a.batch);
    let k_max = a.iw_samples.iter().copied().max().unwrap_or(1);
    let opts = eval::EvalOptions {
        limit: a.limit,
        batch: a.batch,
        max_decode: (a.batch * k_max).max(1),
    };
    let n = opts.n_images(&split) as u64;
    let passes = if a.posterior_mean {
        1
    } else {
        a.iw_samples.len() as u64
    };
    let bar = crate::progress::bar(n * passes, "images", a.json);
    let labels = label_column(&split, n as usize);

    if a.posterior_mean {
        let mut noise = Noise::new(a.seed);
        let r = a.precision.autocast(device, || {
            eval::posterior_mean(&model, &split, &opts, &mut noise, &mut |d| {
                bar.set_position(d as u64)
            })
        });
        bar.finish_and_clear();
        if let Some(path) = &a.per_example {
            let rows = r
                .per_image
                .iter()
                .enumerate()
                .map(|(i, (lp, kl))| format!("{},{},{lp},{kl}", i + a.skip, labels[i]));
            write_csv(path, "index,label,log_px_given_mu,kl", rows)?;
        }
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("model        {} ({})", cfg.name, a.checkpoint.display());
            println!("split        {} ({} images)", r.split, r.n_images);
            print_precision(a.precision);
            println!(
                "-log p(x|mu) {:.6} nats per image (posterior mean, no sampling)",
                r.recon_nats
            );
            println!("KL(q || p)   {:.6} nats per image", r.kl_nats);
            println!("sum          {:.6} nats per image", r.loss_nats);
        }
        return Ok(());
    }

    let mut reports = Vec::new();
    let mut columns: Vec<Vec<f64>> = Vec::new();
    for (pass, &k) in a.iw_samples.iter().enumerate() {
        bar.set_message(format!("IWAE-{k}"));
        let mut noise = Noise::new(a.seed);
        let done = pass as u64 * n;
        let (report, log_px) = a.precision.autocast(device, || {
            eval::nll_and_per_image(&model, &split, k, &opts, &mut noise, &mut |d| {
                bar.set_position(done + d as u64)
            })
        });
        reports.push(report);
        columns.push(log_px);
    }
    bar.finish_and_clear();
    if let Some(path) = &a.per_example {
        let header = std::iter::once("index,label".to_string())
            .chain(a.iw_samples.iter().map(|k| format!("log_px_iwae{k}")))
            .collect::<Vec<_>>()
            .join(",");
        let rows = (0..n as usize).map(|i| {
            let values: Vec<String> = columns.iter().map(|c| c[i].to_string()).collect();
            format!("{},{},{}", i + a.skip, labels[i], values.join(","))
        });
        write_csv(path, &header, rows)?;
    }
    if a.json {
        // One object for one K (the format scripts already read), an array for several.
        match reports.as_slice() {
            [r] => println!("{}", serde_json::to_string(r)?),
            rs => println!("{}", serde_json::to_string(rs)?),
        }
    } else {
        let r0 = &reports[0];
        println!("model        {} ({})", cfg.name, a.checkpoint.display());
        println!("split        {} ({} images)", r0.split, r0.n_images);
        print_precision(a.precision);
        for r in &reports {
            println!(
                "IWAE-{:<7} NLL {:.3} ± {:.3} nats per image (standard error), {:.5} bits/dim over {} pixels, {:.1} s",
                r.iw_samples, r.nll_nats, r.nll_stderr, r.bpd, r.bpd_dims, r.seconds
            );
        }
    }
    Ok(())
}

/// Says so when the figures below were not computed in float32 (they are then not the
/// README's kind of figure).
fn print_precision(p: Precision) {
    if p != Precision::Fp32 {
        println!("precision    {p} (autocast; the float32 bound differs)");
    }
}

/// The labels of the first `n` images as CSV fields: empty when the split has none.
fn label_column(split: &dataset::Split, n: usize) -> Vec<String> {
    let labels = split.labels.as_ref().map(|l| {
        Vec::<i64>::try_from(l.narrow(0, 0, n as i64).to_kind(tch::Kind::Int64)).unwrap_or_default()
    });
    (0..n)
        .map(|i| {
            labels
                .as_ref()
                .and_then(|l| l.get(i))
                .map_or(String::new(), |l| l.to_string())
        })
        .collect()
}

/// Writes a CSV file atomically (a header line, then the rows), naming the file in errors.
fn write_csv(
    path: &std::path::Path,
    header: &str,
    rows: impl Iterator<Item = String>,
) -> anyhow::Result<()> {
    let mut text = format!("{header}\n");
    for row in rows {
        text.push_str(&row);
        text.push('\n');
    }
    crate::checkpoint::write_atomic(path, text.as_bytes())
        .map_err(|e| anyhow::anyhow!("--per-example `{}`: {e}", path.display()))
}

pub(super) fn cmd_damage_eval(a: DamageEvalArgs, device: tch::Device) -> anyhow::Result<()> {
    let (model, mut cfg) = load_model(&a.checkpoint, a.arch.explicit()?, device)?;
    model.require_nca("vnca damage-eval")?;
    if let Some(d) = a.data {
        cfg.data.path = d;
    }
    let split = dataset::load_split(&cfg, &a.split)?;
    let side = a.damage_size.unwrap_or(cfg.model.image_size / 2);
    anyhow::ensure!(
        side >= 0 && side <= cfg.model.image_size,
        "--damage-size {side} must be in 0..={}",
        cfg.model.image_size
    );
    let r = crate::damage_eval::damage_eval(&model, &split, a.n, side, &a.steps, a.batch, a.seed);
    if let Some(path) = &a.per_example {
        let labels = label_column(&split, r.n_images);
        let header = std::iter::once("index,label".to_string())
            .chain(r.stages.iter().map(|s| match s.stage.as_str() {
                "recovered" => format!("after_{}", s.steps_after_damage),
                other => other.to_string(),
            }))
            .collect::<Vec<_>>()
            .join(",");
        let rows = (0..r.n_images).map(|i| {
            let values: Vec<String> = r
                .stages
                .iter()
                .map(|s| s.per_image[i].to_string())
                .collect();
            format!("{i},{},{}", labels[i], values.join(","))
        });
        write_csv(path, &header, rows)?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", crate::damage_eval::table(&r));
    }
    Ok(())
}
