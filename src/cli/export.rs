//! `vnca export`: a run's checkpoint cut down to the model's weights, the file to ship or
//! share. A run's `latest` also holds Adam's two moments (twice the model's size again) and,
//! for damage runs, the damage pool; neither is needed to evaluate, sample or serve.
use super::ArchArgs;
use crate::checkpoint::{self, Loaded, Meta};
use crate::restore::load_checkpoint;
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A run's checkpoint (`latest` or `best`), or a weights file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub arch: ArchArgs,
    /// Where to write the weights (atomically; an existing file there is replaced).
    #[arg(long)]
    pub out: PathBuf,
}

pub(super) fn cmd_export(a: ExportArgs) -> anyhow::Result<()> {
    // The source is the run's only copy of its optimizer state: never write over it.
    if same_file(&a.checkpoint, &a.out) {
        anyhow::bail!(
            "`{}`: --out is the checkpoint itself; write the weights to another file (a run's `latest` would lose its optimizer state)",
            a.out.display()
        );
    }
    let ck = Loaded::read(&a.checkpoint)?;
    let dropped = ck.names().len();
    // The training state stays in the header: it says which step the weights are from.
    let state = ck.meta.state.clone();
    let (model, cfg) = load_checkpoint(ck, a.arch.explicit()?, tch::Device::Cpu)?;
    let meta = Meta {
        config: Some(cfg.to_toml()),
        state,
    };
    checkpoint::save(&a.out, &model, &BTreeMap::new(), &meta)?;
    let kept = model.vs.variables().len();
    let step = meta
        .state
        .as_deref()
        .and_then(|s| serde_json::from_str::<checkpoint::TrainState>(s).ok())
        .map_or_else(String::new, |s| format!(" at step {}", s.step));
    println!(
        "wrote {}: {kept} model tensors of `{}`{step} ({} training-state tensors left out), {:.1} MB",
        a.out.display(),
        cfg.name,
        dropped - kept,
        std::fs::metadata(&a.out)?.len() as f64 / 1e6
    );
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
