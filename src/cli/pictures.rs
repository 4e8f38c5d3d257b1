//! `vnca sample` and `vnca figures`.
use super::ArchArgs;
use crate::dataset;
use crate::figures::grid::write_grid;
use crate::noise::Noise;
use crate::shipped::ModelSource;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A run's checkpoint, or the name of a shipped model (built into the binary).
    #[arg(long, value_name = "PATH|NAME", default_value = crate::shipped::DEFAULT)]
    pub checkpoint: ModelSource,
    #[command(flatten)]
    pub arch: ArchArgs,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    pub n: i64,
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct FiguresArgs {
    /// A run's checkpoint, or the name of a shipped model (built into the binary).
    #[arg(long, value_name = "PATH|NAME", default_value = crate::shipped::DEFAULT)]
    pub checkpoint: ModelSource,
    #[command(flatten)]
    pub arch: ArchArgs,
    #[arg(long, default_value = "figures")]
    pub out: PathBuf,
    /// Data file for the test images (default: the config's).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Test images in the t-SNE figure (0 skips it).
    #[arg(long, default_value_t = 5000)]
    pub tsne_points: usize,
    /// Side of the square erased in the recovery figures (default: half the image side).
    #[arg(long)]
    pub damage_size: Option<i64>,
    /// NCA steps shown after the damage.
    #[arg(long, default_value_t = 24)]
    pub recovery_steps: usize,
}

pub(super) fn cmd_sample(a: SampleArgs, device: tch::Device) -> anyhow::Result<()> {
    let (model, _) = a.checkpoint.load(a.arch.explicit()?, device)?;
    let mut noise = Noise::new(a.seed);
    let imgs = tch::no_grad(|| model.render_mean(&model.sample_prior(a.n, &mut noise)));
    let ncol = (a.n as f64).sqrt().ceil() as i64;
    write_grid(&a.out, &imgs, ncol, 2)?;
    eprintln!("wrote {} samples to {}", a.n, a.out.display());
    Ok(())
}

pub(super) fn cmd_figures(a: FiguresArgs, device: tch::Device) -> anyhow::Result<()> {
    let (model, mut cfg) = a.checkpoint.load(a.arch.explicit()?, device)?;
    model.require_nca("vnca figures (growth, damage and recovery)")?;
    if let Some(d) = a.data {
        cfg.data.path = d;
    }
    let test = dataset::load_split(&cfg, "test")?;
    let opts = crate::figures::report::FigureOptions {
        seed: a.seed,
        tsne_points: a.tsne_points,
        damage_size: a.damage_size,
        recovery_steps: a.recovery_steps,
        metrics: a
            .checkpoint
            .path()
            .map(|p| p.with_file_name("metrics.jsonl")),
        ..Default::default()
    };
    for p in crate::figures::report::write_all(&model, &test, &a.out, &opts)? {
        println!("{}", p.display());
    }
    Ok(())
}
