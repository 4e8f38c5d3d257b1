//! `vnca train`.
use super::ArchArgs;
use crate::config::{Config, DEFAULT_PRESET};
use crate::train::{train, TrainOptions};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub arch: ArchArgs,
    /// Run directory (default: runs/<config name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override the config's number of training steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Continue from <out>/latest.safetensors.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start afresh in a directory that already holds a run, replacing its checkpoints.
    #[arg(long)]
    pub overwrite: bool,
    /// Override the data file/directory of the config.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Start from the weights of this checkpoint (`train.init_from`): the same
    /// architecture, or a narrower one (smaller z_dim or hidden), widened so that it
    /// computes what it did.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Override `train.precision`: fp32 (default), tf32 or bf16 (docs/EXPERIMENTS.md).
    #[arg(long, value_enum)]
    pub precision: Option<crate::precision::Precision>,
    /// In a data-parallel job (torchrun / Slurm): the collective backend, gloo or nccl
    /// (default: nccl with --device cuda where built, else gloo).
    #[arg(long)]
    pub dist_backend: Option<crate::dist::Backend>,
}

pub(super) fn cmd_train(a: TrainArgs, device: tch::Device, threads: usize) -> anyhow::Result<()> {
    let explicit = a.arch.explicit()?;
    let mut cfg = match (&explicit, &a.out, a.resume) {
        (Some(c), _, _) => c.clone(),
        // Resuming without a config: the run directory's own config.
        (None, Some(out), true) => Config::from_file(&out.join("config.toml"))?,
        _ => Config::preset(DEFAULT_PRESET)?,
    };
    if let Some(s) = a.steps {
        cfg.train.steps = s;
    }
    if let Some(d) = a.data {
        cfg.data.path = d;
    }
    if let Some(p) = a.precision {
        cfg.train.precision = p;
    }
    if let Some(p) = a.init_from {
        cfg.train.init_from = Some(p);
    }
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    // In a data-parallel job (torchrun / Slurm variables set) rank 0 speaks for all.
    let job = crate::dist::DistEnv::from_env()?;
    let main = job.as_ref().is_none_or(|j| j.rank == 0);
    if main {
        let ranks = job.as_ref().map_or(String::new(), |j| {
            format!(
                ", {} ranks of {} samples each",
                j.world_size,
                cfg.train.batch_size / j.world_size as i64
            )
        });
        eprintln!(
            "training `{}` on {device:?} ({threads} threads, {}{ranks}) for {} steps -> {}",
            cfg.name,
            cfg.train.precision,
            cfg.train.steps,
            out.display()
        );
        if let Some(warning) = cfg.train.precision.slowness_warning(device) {
            eprintln!("{warning}");
        }
        if let (Some(from), false) = (&cfg.train.init_from, a.resume) {
            eprintln!("starting from the weights of `{}`", from.display());
        }
    }
    let opts = TrainOptions {
        out: out.clone(),
        device,
        resume: a.resume,
        quiet: a.quiet,
        overwrite: a.overwrite,
        backend: a.dist_backend,
    };
    let s = train(&cfg, &opts)?;
    if s.interrupted && !main {
        return Err(Interrupted(None).into()); // rank 0 says where it stopped
    }
    if s.interrupted {
        return Err(Interrupted(Some(format!(
            "training stopped at step {} of {}; `{}` holds it. Continue with: vnca train --out {} --resume",
            s.steps,
            cfg.train.steps,
            crate::train::trainer::latest_path(&out).display(),
            out.display()
        )))
        .into());
    }
    if !main {
        return Ok(());
    }
    eprintln!(
        "done: {} steps, last loss {:.2}, best validation NLL {}; checkpoints in {}",
        s.steps,
        s.last_loss,
        s.best_val.map_or("-".into(), |v| format!("{v:.2} nats")),
        out.display()
    );
    Ok(())
}

/// A run stopped by Ctrl-C, SIGTERM or SIGHUP (after saving): not a failure, but not a
/// finished run either. `main` prints its report as `interrupted: ...` and exits with 130,
/// the shell's code for SIGINT, whichever of the three it was. In a data-parallel job only
/// rank 0 has a report (the others exit silently).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.as_deref().unwrap_or("interrupted"))]
pub struct Interrupted(pub Option<String>);
