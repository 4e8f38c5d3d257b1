//! The command line (clap derive): one function per subcommand, each a thin layer over
//! the library (config -> model/data -> train/eval -> files or a printed report). One
//! file per group of subcommands; this one holds the top level and the shared arguments.
mod bench;
mod check;
mod data;
mod dist_selftest;
mod evaluate;
mod export;
mod info;
mod pictures;
mod serve;
mod train;

pub use bench::{BenchArgs, BenchShape};
pub use check::CheckArgs;
pub use data::DataCommand;
pub use evaluate::{DamageEvalArgs, EvalArgs};
pub use export::ExportArgs;
pub use pictures::{FiguresArgs, SampleArgs};
pub use serve::ServeArgs;
pub use train::{Interrupted, TrainArgs};

use crate::config::Config;
use crate::device::{parse_device, set_threads};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "vnca",
    version,
    about = "Variational Neural Cellular Automata: train, evaluate, sample"
)]
pub struct Cli {
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
    /// Intra-op CPU threads (default: the machine's cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Compute with denormal floats on the CPU instead of flushing them to zero (PyTorch's
    /// default; slower: docs/BENCHMARKS.md, lever 6).
    #[arg(long, global = true)]
    pub keep_denormals: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model; writes checkpoints, metrics and pictures into --out.
    Train(TrainArgs),
    /// IWAE-K negative log-likelihood of a trained model on a data split.
    Eval(EvalArgs),
    /// Log-likelihood before damage, right after, and after recovery steps (mean ± s.e.).
    DamageEval(DamageEvalArgs),
    /// Write a PNG grid of samples from the prior.
    Sample(SampleArgs),
    /// Write every figure (samples, reconstructions, growth and recovery GIFs, interpolations).
    Figures(FiguresArgs),
    /// Print a model summary and its parameter count.
    Info(ArchArgs),
    /// Write a checkpoint's model weights alone (no optimizer state, no damage pool): the
    /// file to ship or share.
    Export(ExportArgs),
    /// Data preparation.
    #[command(subcommand)]
    Data(DataCommand),
    /// Speed and memory against a PyTorch mirror of the reference code.
    Bench(BenchArgs),
    /// The model against the PyTorch fixtures on this device and precision (self-test).
    Check(CheckArgs),
    /// Local web page: watch samples grow, erase cells and watch them heal (see `serve`).
    Serve(ServeArgs),
    /// One measurement of `vnca bench`, run in its own process (internal).
    #[command(hide = true)]
    BenchWorker {
        what: String,
        #[command(flatten)]
        args: BenchShape,
    },
    /// One rank of the data-parallel self-test (internal; tests/dist.rs).
    #[command(hide = true)]
    DistSelftest(dist_selftest::DistSelftestArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ArchArgs {
    /// A TOML config file.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A preset from configs/ (see `vnca info --list`).
    #[arg(long)]
    pub preset: Option<String>,
    /// List the presets and exit.
    #[arg(long)]
    pub list: bool,
}

impl ArchArgs {
    pub(crate) fn explicit(&self) -> anyhow::Result<Option<Config>> {
        Ok(match (&self.config, &self.preset) {
            (Some(p), _) => Some(Config::from_file(p)?),
            (None, Some(name)) => Some(Config::preset(name)?),
            (None, None) => None,
        })
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Before any libtorch thread exists, so that every intra-op thread inherits it.
    crate::precision::flush_denormals(!cli.keep_denormals);
    // Before the first tensor: freed CPU tensors are reused, not unmapped (src/malloc.rs).
    crate::malloc::keep_freed_memory();
    let threads = set_threads(cli.threads);
    let device = parse_device(&cli.device)?;
    match cli.command {
        Command::Train(a) => train::cmd_train(a, device, threads),
        Command::Eval(a) => evaluate::cmd_eval(a, device),
        Command::Sample(a) => pictures::cmd_sample(a, device),
        Command::DamageEval(a) => evaluate::cmd_damage_eval(a, device),
        Command::Figures(a) => pictures::cmd_figures(a, device),
        Command::Info(a) => info::cmd_info(a),
        Command::Export(a) => export::cmd_export(a),
        Command::Data(d) => data::cmd_data(d),
        Command::Bench(a) => bench::cmd_bench(a, device, threads, !cli.keep_denormals),
        Command::Serve(a) => serve::cmd_serve(a, device),
        Command::Check(a) => check::cmd_check(a, device),
        Command::BenchWorker { what, args } => {
            let o = bench::bench_options(&args, device, threads, !cli.keep_denormals, None);
            let r = crate::bench::worker(&what, &o)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::DistSelftest(a) => dist_selftest::cmd_dist_selftest(a, device),
    }
}
