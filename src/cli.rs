//! The command line (clap derive): one function per subcommand, each a thin layer over
//! the library (config -> model/data -> train/eval -> files or a printed report).
use crate::bench;
use crate::config::{Config, DEFAULT_PRESET, PRESETS};
use crate::data;
use crate::dataset;
use crate::device::{parse_device, set_threads};
use crate::eval;
use crate::figures::grid::write_grid;
use crate::model::Vnca;
use crate::noise::Noise;
use crate::restore::load_model;
use crate::train::{train, TrainOptions};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
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
    /// Data preparation.
    #[command(subcommand)]
    Data(DataCommand),
    /// Speed and memory against a PyTorch mirror of the reference code.
    Bench(BenchArgs),
    /// Local web page: watch samples grow, erase cells and watch them heal (see `serve`).
    Serve(ServeArgs),
    /// One measurement of `vnca bench`, run in its own process (internal).
    #[command(hide = true)]
    BenchWorker {
        what: String,
        #[command(flatten)]
        args: BenchShape,
    },
}

/// The workload of a benchmark.
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
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub shape: BenchShape,
    /// Python with torch for the reference mirror (default: the project's .venv).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch mirror.
    #[arg(long)]
    pub no_mirror: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which architecture: a config file or a named preset.
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
    fn explicit(&self) -> anyhow::Result<Option<Config>> {
        Ok(match (&self.config, &self.preset) {
            (Some(p), _) => Some(Config::from_file(p)?),
            (None, Some(name)) => Some(Config::preset(name)?),
            (None, None) => None,
        })
    }
}

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
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

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

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Default: the shipped models/mnist-doubling-small.safetensors.
    #[arg(long, default_value_os_t = crate::serve::default_checkpoint())]
    pub checkpoint: PathBuf,
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
    /// Default: the shipped models/mnist-doubling-small.safetensors.
    #[arg(long, default_value_os_t = crate::serve::default_checkpoint())]
    pub checkpoint: PathBuf,
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

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Binarize the canonical MNIST IDX files into our packed binarized MNIST.
    BinarizeMnist {
        /// Directory with train-images-idx3-ubyte(.gz) and friends.
        #[arg(long, default_value = "../shared/data/mnist")]
        mnist_dir: PathBuf,
        #[arg(long, default_value = "data/binarized_mnist.vbm.gz")]
        out: PathBuf,
        #[arg(long, default_value_t = data::binarize::DEFAULT_SEED)]
        seed: u64,
    },
    /// Download Larochelle & Murray's binarized MNIST .amat files and verify their SHA-256.
    FetchLarochelle {
        #[arg(long, default_value = "data/larochelle")]
        dir: PathBuf,
    },
    /// Print the split sizes of a data file or directory.
    Inspect { path: PathBuf },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = set_threads(cli.threads);
    let device = parse_device(&cli.device)?;
    match cli.command {
        Command::Train(a) => cmd_train(a, device, threads),
        Command::Eval(a) => cmd_eval(a, device),
        Command::Sample(a) => cmd_sample(a, device),
        Command::DamageEval(a) => cmd_damage_eval(a, device),
        Command::Figures(a) => cmd_figures(a, device),
        Command::Info(a) => cmd_info(a),
        Command::Data(d) => cmd_data(d),
        Command::Bench(a) => cmd_bench(a, device, threads),
        Command::Serve(a) => cmd_serve(a, device),
        Command::BenchWorker { what, args } => {
            let r = bench::worker(&what, &bench_options(&args, device, threads, None))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

fn cmd_train(a: TrainArgs, device: tch::Device, threads: usize) -> anyhow::Result<()> {
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
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    eprintln!(
        "training `{}` on {device:?} ({threads} threads) for {} steps -> {}",
        cfg.name,
        cfg.train.steps,
        out.display()
    );
    let opts = TrainOptions {
        out: out.clone(),
        device,
        resume: a.resume,
        quiet: a.quiet,
        overwrite: a.overwrite,
    };
    let s = train(&cfg, &opts)?;
    eprintln!(
        "done: {} steps, last loss {:.2}, best validation NLL {}; checkpoints in {}",
        s.steps,
        s.last_loss,
        s.best_val.map_or("-".into(), |v| format!("{v:.2} nats")),
        out.display()
    );
    Ok(())
}

fn cmd_eval(a: EvalArgs, device: tch::Device) -> anyhow::Result<()> {
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

fn cmd_damage_eval(a: DamageEvalArgs, device: tch::Device) -> anyhow::Result<()> {
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

fn cmd_sample(a: SampleArgs, device: tch::Device) -> anyhow::Result<()> {
    let (model, _) = load_model(&a.checkpoint, a.arch.explicit()?, device)?;
    let mut noise = Noise::new(a.seed);
    let imgs = tch::no_grad(|| model.render_mean(&model.sample_prior(a.n, &mut noise)));
    let ncol = (a.n as f64).sqrt().ceil() as i64;
    write_grid(&a.out, &imgs, ncol, 2)?;
    eprintln!("wrote {} samples to {}", a.n, a.out.display());
    Ok(())
}

fn cmd_figures(a: FiguresArgs, device: tch::Device) -> anyhow::Result<()> {
    let (model, mut cfg) = load_model(&a.checkpoint, a.arch.explicit()?, device)?;
    if let Some(d) = a.data {
        cfg.data.path = d;
    }
    let test = dataset::load_split(&cfg, "test")?;
    let opts = crate::figures::report::FigureOptions {
        seed: a.seed,
        tsne_points: a.tsne_points,
        damage_size: a.damage_size,
        recovery_steps: a.recovery_steps,
        metrics: Some(a.checkpoint.with_file_name("metrics.jsonl")),
        ..Default::default()
    };
    for p in crate::figures::report::write_all(&model, &test, &a.out, &opts)? {
        println!("{}", p.display());
    }
    Ok(())
}

fn cmd_info(a: ArchArgs) -> anyhow::Result<()> {
    if a.list {
        for (name, text) in PRESETS {
            let first = text.lines().next().unwrap_or("").trim_start_matches("# ");
            println!("{name:24} {first}");
        }
        return Ok(());
    }
    let cfg = a
        .explicit()?
        .map_or_else(|| Config::preset(DEFAULT_PRESET), Ok)?;
    let model = Vnca::new(&cfg.model, tch::Device::Cpu, 0);
    let m = &cfg.model;
    println!("config       {}", cfg.name);
    println!(
        "encoder      5 x conv5x5 (width {} doubling), linear -> 2 x {}",
        m.encoder_width, m.z_dim
    );
    println!(
        "decoder      doubling NCA: 2x2 seed, {} doublings to {}x{}, {} steps/stage = {} steps, p_update {}",
        cfg.n_doublings(),
        m.image_size,
        m.image_size,
        m.steps_per_stage,
        model.nca.n_steps(),
        m.p_update
    );
    println!(
        "update net   conv3x3 {} -> {}, {} residual 1x1 blocks, conv1x1 -> {}",
        m.z_dim, m.hidden, m.n_residual, m.z_dim
    );
    let mut vars: Vec<_> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let count = |prefix: &str| -> i64 {
        vars.iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    };
    println!(
        "parameters   {} (encoder {}, update net {})",
        model.n_parameters(),
        count("encoder."),
        count("nca.")
    );
    Ok(())
}

fn cmd_data(d: DataCommand) -> anyhow::Result<()> {
    match d {
        DataCommand::BinarizeMnist {
            mnist_dir,
            out,
            seed,
        } => {
            let (train, test) = data::idx::read_mnist_dir(&mnist_dir)?;
            let bin = data::binarize::binarize_mnist(&train, &test, seed);
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create `{}`", parent.display()))?;
            }
            data::packed::write_packed(&out, &bin)?;
            let sha = data::download::sha256_file(&out)?;
            println!(
                "wrote {} (train {}, valid {}, test {}; seed {seed}); sha256 {sha}",
                out.display(),
                bin.train.len(),
                bin.valid.len(),
                bin.test.len()
            );
        }
        DataCommand::FetchLarochelle { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
            data::download::fetch_larochelle(&dir, &mut |name, done, total| {
                eprint!(
                    "\r{name}: {done}/{} bytes",
                    total.map_or("?".into(), |t| t.to_string())
                );
            })?;
            eprintln!("\nverified the three files in {}", dir.display());
        }
        DataCommand::Inspect { path } => {
            let d = data::load_binarized_mnist(&path)?;
            for (name, s) in [("train", &d.train), ("valid", &d.valid), ("test", &d.test)] {
                let ones: usize = s.images.iter().map(|&v| v as usize).sum();
                println!(
                    "{name:6} {:6} images {}x{}, labels: {}, mean pixel {:.4}",
                    s.len(),
                    s.rows,
                    s.cols,
                    if s.labels.is_some() { "yes" } else { "no" },
                    ones as f64 / s.images.len().max(1) as f64
                );
            }
        }
    }
    Ok(())
}

fn bench_options(
    s: &BenchShape,
    device: tch::Device,
    threads: usize,
    python: Option<PathBuf>,
) -> bench::BenchOptions {
    bench::BenchOptions {
        preset: s.preset.clone(),
        batch: s.batch,
        repeats: s.repeats,
        warmup: s.warmup,
        iwae_images: s.iwae_images,
        iw_samples: s.iw_samples,
        grad_checkpointing: s.grad_checkpointing,
        threads,
        device,
        python,
    }
}

fn cmd_bench(a: BenchArgs, device: tch::Device, threads: usize) -> anyhow::Result<()> {
    let python = if a.no_mirror {
        None
    } else {
        let p = a.python.unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
        });
        anyhow::ensure!(
            p.exists(),
            "no Python for the mirror at `{}` (run `make setup`, pass --python, or --no-mirror)",
            p.display()
        );
        Some(p)
    };
    let o = bench_options(&a.shape, device, threads, python);
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

// ---- vnca serve ---------------------------------------------------------------------
// (the `Serve` variant and its line in `run` above belong to this block too)

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A run's checkpoint (repeat for several models to choose from in the page).
    /// Default: models/mnist-doubling-small.safetensors in the crate's directory.
    #[arg(long)]
    pub checkpoint: Vec<PathBuf>,
    /// Port (0: any free one; the URL is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on; anything but loopback exposes the page to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Samples shown when a page opens.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Most samples a page may ask for.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Most sessions (browser tabs) at once; more get an error.
    #[arg(long, default_value_t = 16)]
    pub max_sessions: usize,
}

fn cmd_serve(a: ServeArgs, device: tch::Device) -> anyhow::Result<()> {
    use crate::serve;
    let paths = if a.checkpoint.is_empty() {
        let d = serve::default_checkpoint();
        anyhow::ensure!(
            d.is_file(),
            "no --checkpoint given and the default model `{}` is missing; pass --checkpoint PATH \
             (e.g. runs/mnist-doubling-small/best.safetensors, written by `vnca train`)",
            d.display()
        );
        vec![d]
    } else {
        a.checkpoint.clone()
    };
    anyhow::ensure!(
        (1..=65535).contains(&a.max_batch),
        "--max-batch must be in [1, 65535]"
    );
    anyhow::ensure!(
        a.batch >= 1 && a.batch <= a.max_batch,
        "--batch must be in [1, --max-batch = {}]",
        a.max_batch
    );
    anyhow::ensure!(a.max_sessions >= 1, "--max-sessions must be at least 1");
    let models = serve::load_models(&paths, device)?;
    for (m, p) in models.iter().zip(&paths) {
        eprintln!("model `{}` ({}) from {}", m.name, m.cfg.name, p.display());
    }
    let opts = serve::ServeOptions {
        session: serve::SessionOptions {
            device,
            default_batch: a.batch,
            max_batch: a.max_batch,
            ..Default::default()
        },
        max_sessions: a.max_sessions,
    };
    let router = serve::router(models, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: listening on {addr}: anyone who can reach this address can use the page"
            );
        }
        println!("serving http://{addr}/ (Ctrl-C stops)");
        tokio::select! {
            r = serve::serve(listener, router) => r.context("the server failed"),
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopped");
                Ok(())
            }
        }
    })
}
// ---- end of vnca serve --------------------------------------------------------------
