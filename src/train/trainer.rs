//! The training loop: single-sample ELBO, backward, global-norm clip, Adam (docs/REFERENCE.md
//! §2), with periodic validation, atomic `latest`/`best` checkpoints and sample pictures.
//!
//! Safety rules: a non-finite loss or gradient norm stops the run before the update is
//! applied and before anything is written; Ctrl-C (SIGINT), SIGTERM or SIGHUP finishes the
//! current step, saves `latest` and returns `interrupted` (SIGTERM is how torchrun stops the
//! other ranks once one has exited, and how Slurm ends a job at its time limit: both wait
//! before they SIGKILL); `--resume` continues bit-exactly from `latest`
//! (every random stream, the optimizer and the damage pool are in the checkpoint); one
//! process at a time trains into a run directory (`run_lock`).
use super::data_parallel::{self, DataParallel, ShardedNoise};
use super::metrics::{MetricsLog, Record};
use super::optim::{clip_grad_norm, zero_grad, Adam, Params};
use super::pool::Pool;
use super::run_lock::RunLock;
use crate::checkpoint::{self, Loaded, Meta, TrainState, Training};
use crate::config::Config;
use crate::dataset::{self, EpochSampler, Split};
use crate::eval;
use crate::figures::grid::write_grid;
use crate::model::Vnca;
use crate::noise::Noise;
use crate::objective::{elbo, elbo_recompute, Elbo};
use crate::progress;
use anyhow::{bail, Context};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub struct TrainOptions {
    pub out: PathBuf,
    pub device: Device,
    /// Continue from `out/latest.safetensors`.
    pub resume: bool,
    /// Hide the progress bar (tests, logs).
    pub quiet: bool,
    /// Start afresh in a directory that already holds a run (its checkpoints are replaced).
    pub overwrite: bool,
    /// In a data-parallel job: the collective backend, instead of NCCL for CUDA and Gloo
    /// for the CPU (or `VNCA_DIST_BACKEND`).
    pub backend: Option<crate::dist::Backend>,
}

#[derive(Debug)]
pub struct TrainSummary {
    pub steps: u64,
    pub last_loss: f64,
    pub best_val: Option<f64>,
    pub interrupted: bool,
}

/// Seeds of the evaluation and picture noise: fixed, so validation numbers are
/// comparable across evaluations and do not disturb the training streams.
const EVAL_SEED: u64 = 0xE7A1;
const PICTURE_SEED: u64 = 0x51C7;
const MAX_DECODE: i64 = 512;

pub fn latest_path(out: &Path) -> PathBuf {
    out.join("latest.safetensors")
}

pub fn best_path(out: &Path) -> PathBuf {
    out.join("best.safetensors")
}

/// Everything one run trains with, built (or restored from `latest`) by `Run::start`.
struct Run {
    /// This process's rank in a data-parallel job (a world of one without a launcher).
    dp: DataParallel,
    device: Device,
    model: Vnca,
    params: Params,
    adam: Adam,
    pool: Option<Pool>,
    state: TrainState,
    train: Split,
    val: Split,
    /// Rank 0's: only it writes into the run directory.
    log: Option<MetricsLog>,
    _lock: Option<RunLock>,
}

/// Train `cfg` into the run directory `opts.out`.
pub fn train(cfg: &Config, opts: &TrainOptions) -> anyhow::Result<TrainSummary> {
    let mut run = Run::start(cfg, opts)?;
    let t = &cfg.train;
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    INTERRUPTED.store(false, Ordering::SeqCst);
    let bar = progress::bar(t.steps, "steps", opts.quiet || !run.dp.is_main());
    bar.set_position(run.state.step);
    let (mut last_loss, mut interrupted) = (f64::NAN, false);
    while run.state.step < t.steps {
        let t0 = std::time::Instant::now();
        // The global batch; this rank's rows of it, and of every per-sample draw.
        let idx = run.state.sampler.next_batch(t.batch_size as usize);
        let rows = run.dp.rows(idx.len());
        let x = run
            .train
            .batch(&idx[rows.clone()], cfg.model.image_size, run.device); // [B/world, C, S, S]
        zero_grad(&run.params);
        let step = run.state.step + 1;
        let noise = &mut ShardedNoise::new(&mut run.state.noise, idx.len(), rows);
        let (model, pool) = (&run.model, run.pool.as_mut());
        let terms: Elbo = t.precision.autocast(run.device, || match pool {
            Some(pool) => {
                pool.own_noise = run.dp.pool_noise(t.seed, step);
                pool.elbo(model, &x, t.beta, noise)
            }
            None if t.grad_checkpointing => elbo_recompute(model, &x, t.beta, noise),
            None => elbo(model, &x, t.beta, noise),
        });
        terms.loss.backward();
        // Gradients averaged over ranks before clipping; every rank sees the global loss
        // (a non-finite one stops them all) and whether any rank was interrupted.
        let local = [
            terms.loss.double_value(&[]),
            terms.recon.mean(Kind::Float).double_value(&[]),
            terms.kl.mean(Kind::Float).double_value(&[]),
            f64::from(u8::from(INTERRUPTED.load(Ordering::SeqCst))),
        ];
        let [loss, recon, kl, stop] = run.dp.average_step(&run.params, &local)?[..] else {
            unreachable!("four statistics")
        };
        let loss = finite(loss, step, "loss", &opts.out)?;
        let norm = finite(
            clip_grad_norm(&run.params, t.grad_clip),
            step,
            "gradient norm",
            &opts.out,
        )?;
        run.adam.lr = t.lr_at(step);
        run.adam.update(&run.params);
        run.state.step = step;
        last_loss = loss;
        if let Some(log) = &mut run.log {
            log.write(&Record::Train {
                step,
                loss,
                recon,
                kl,
                grad_norm: norm,
                step_seconds: t0.elapsed().as_secs_f64(),
            })?;
        }
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.2}"));
        interrupted = stop > 0.0;
        if step.is_multiple_of(t.eval_every) || step == t.steps || interrupted {
            run.evaluate_and_save(cfg, &opts.out, &bar)?;
        }
        if interrupted {
            break; // `latest` was saved above; the caller says how to continue
        }
    }
    bar.finish();
    Ok(TrainSummary {
        steps: run.state.step,
        last_loss,
        best_val: run.state.best_val,
        interrupted,
    })
}

impl Run {
    /// Lock the run directory, load the data, build the model and optimiser, and either
    /// start afresh or restore everything from `latest`.
    fn start(cfg: &Config, opts: &TrainOptions) -> anyhow::Result<Run> {
        let dp = DataParallel::from_env(opts.device, opts.backend)?;
        let device = dp.device(opts.device);
        let t = &cfg.train;
        data_parallel::check_divisible(&dp, t.batch_size, t.pool.as_ref().map(|p| p.size))?;
        // Rank 0 owns the run directory; the others only read `latest` when resuming
        // (the directory must be on a filesystem every rank sees, as for torch's DDP).
        let lock = if dp.is_main() {
            std::fs::create_dir_all(&opts.out).with_context(|| {
                format!("cannot create output directory `{}`", opts.out.display())
            })?;
            Some(RunLock::acquire(&opts.out)?) // held until the run ends
        } else {
            None
        };
        let latest = latest_path(&opts.out);
        if !opts.resume && !opts.overwrite && latest.exists() {
            bail!(
                "`{}` already holds a run; pass --resume to continue it, or --overwrite to start over and replace its checkpoints",
                opts.out.display()
            );
        }
        if dp.is_main() {
            remove_stale_temporaries(&opts.out);
        }
        let (train, val) = dataset::load_train_val(cfg)?;
        if dp.world() > 1 {
            // Hashing the images costs a pass over them: only when there are ranks to compare.
            dp.check_same(
                "config and data",
                &format!(
                    "{:016x}; train {}; valid {}",
                    data_parallel::fnv1a(cfg.to_toml().as_bytes()),
                    data_parallel::data_fingerprint(&train)?,
                    data_parallel::data_fingerprint(&val)?
                ),
            )?;
        }
        t.precision.configure();
        let model = cfg.model.init(device, t.seed);
        let params = model.params();
        let mut adam = Adam::new(&params, t.lr, t.adam_betas, t.adam_eps);
        // Each rank's pool holds its share of the rows.
        let mut pool = t
            .pool
            .as_ref()
            .map(|p| Pool::new(p.size / dp.world(), p.damage_size, p.damaged_fraction, p.kl));
        let state = if opts.resume {
            if !latest.exists() {
                bail!(
                    "--resume: no checkpoint `{}` to resume from",
                    latest.display()
                );
            }
            let saved = Loaded::read(&latest)?.load_training(&model)?;
            adam.restore(saved.adam_m, saved.adam_v, saved.state.step);
            if let (Some(pool), Some((images, states))) = (pool.as_mut(), saved.pool) {
                // The saved pool is the ranks' pools one after the other (any world size).
                let r = dp.rows(images.size()[0] as usize);
                let (start, len) = (r.start as i64, r.len() as i64);
                pool.restore(
                    &images.narrow(0, start, len),
                    &states.narrow(0, start, len),
                    device,
                );
            }
            // The saved data order indexes the split it was made for; other data would
            // index out of range (or silently change the run).
            let (had, now) = (saved.state.sampler.n_items(), train.len() as usize);
            if had != now {
                bail!(
                    "`{}` was trained on {had} images, but the training data `{}` has {now}; \
                     resume with the same data",
                    latest.display(),
                    cfg.data.path.display()
                );
            }
            saved.state
        } else {
            if let Some(path) = &t.init_from {
                init_from(&model, path, cfg)?;
            }
            TrainState {
                step: 0,
                noise: Noise::new(t.seed.wrapping_add(1)),
                sampler: EpochSampler::new(train.len() as usize, t.seed.wrapping_add(2)),
                best_val: None,
            }
        };
        dp.check_same("the step resumed from", &state.step.to_string())?;
        dp.broadcast_params(&params)?;
        // Records after the starting step belong to a run we are replacing (all of them
        // when starting afresh in a used directory, e.g. after a crash before the first
        // checkpoint).
        let log = if dp.is_main() {
            let metrics = opts.out.join("metrics.jsonl");
            super::metrics::truncate_after(&metrics, state.step)?;
            checkpoint::write_atomic(&opts.out.join("config.toml"), cfg.to_toml().as_bytes())?;
            Some(MetricsLog::open(&metrics)?)
        } else {
            None
        };
        Ok(Run {
            dp,
            device,
            model,
            params,
            adam,
            pool,
            state,
            train,
            val,
            log,
            _lock: lock,
        })
    }

    /// Validation NLL on the first `eval_images` images (fixed noise), `latest` (and
    /// `best` when it improved), and the pictures.
    fn evaluate_and_save(
        &mut self,
        cfg: &Config,
        out: &Path,
        bar: &ProgressBar,
    ) -> anyhow::Result<()> {
        let t = &cfg.train;
        let report = self.validate(cfg)?;
        if let Some(log) = &mut self.log {
            log.write(&Record::Eval {
                step: self.state.step,
                split: report.split.clone(),
                nll_nats: report.nll_nats,
                nll_stderr: report.nll_stderr,
                bpd: report.bpd,
                iw_samples: report.iw_samples,
                n_images: report.n_images,
            })?;
        }
        bar.println(format!(
            "step {}: {} NLL (IWAE-{}) {:.2} ± {:.2} nats, {:.4} bits/dim",
            self.state.step,
            report.split,
            report.iw_samples,
            report.nll_nats,
            report.nll_stderr,
            report.bpd
        ));
        let improved = self.state.best_val.is_none_or(|b| report.nll_nats < b);
        if improved {
            self.state.best_val = Some(report.nll_nats);
        }
        let save_pool = t.pool.as_ref().is_some_and(|p| p.save);
        // Every rank takes part in gathering the pool; then only rank 0 writes.
        let pool = match self.pool.as_ref().filter(|_| save_pool) {
            Some(p) => self.gather_pool(p)?,
            None => None,
        };
        if !self.dp.is_main() {
            return Ok(());
        }
        let training = Training {
            state: self.state.clone(),
            adam_m: self
                .adam
                .m
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect(),
            adam_v: self
                .adam
                .v
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect(),
            pool,
        };
        checkpoint::save_training(&latest_path(out), &self.model, cfg, &training)?;
        if improved {
            let meta = Meta::of_run(cfg, &self.state);
            checkpoint::save(&best_path(out), &self.model, &Default::default(), &meta)?;
        }
        write_pictures(&self.model, &self.val, out)
    }

    /// IWAE NLL of the first `eval_images` validation images with fixed noise, each rank
    /// evaluating its part of them (sums over ranks make the report).
    fn validate(&self, cfg: &Config) -> anyhow::Result<eval::NllReport> {
        let t = &cfg.train;
        let t0 = std::time::Instant::now();
        let opts = eval::EvalOptions {
            limit: None,
            batch: t.batch_size,
            max_decode: MAX_DECODE,
        };
        let n = (t.eval_images as i64).min(self.val.len()) as usize;
        let part = data_parallel::split_part(&self.val, n, self.dp.rows(n));
        // Rank 0 keeps the single process's noise; the others have their own.
        let mut noise = Noise::new(EVAL_SEED ^ (self.dp.rank() as u64).rotate_left(32));
        let model = &self.model;
        let log_px = t.precision.autocast(self.device, || {
            eval::iwae_per_image(
                model,
                &part,
                t.eval_iw_samples,
                &opts,
                &mut noise,
                &mut |_| {},
            )
        });
        let local = [
            log_px.len() as f64,
            log_px.iter().map(|l| -l).sum::<f64>(),
            log_px.iter().map(|l| l * l).sum::<f64>(),
        ];
        let [count, sum, sum_sq] = self.dp.sum(&local)?[..] else {
            unreachable!("three sums")
        };
        Ok(eval::summarize_sums(
            count as usize,
            sum,
            sum_sq,
            t.eval_iw_samples,
            &self.val.name,
            t0.elapsed().as_secs_f64(),
            eval::bpd_dims(&model.cfg),
        ))
    }

    /// The ranks' pools one after the other (rank 0's first), for the checkpoint.
    fn gather_pool(&self, pool: &Pool) -> anyhow::Result<Option<(Tensor, Tensor)>> {
        let Some((images, states)) = pool.to_tensors() else {
            return Ok(None);
        };
        Ok(Some((
            self.dp.gather_rows(&images)?,
            self.dp.gather_rows(&states)?,
        )))
    }
}

/// `train.init_from`: the weights of a checkpoint, widened when it is narrower. A file
/// without a stored config is taken to hold this run's architecture.
fn init_from(model: &Vnca, path: &Path, cfg: &Config) -> anyhow::Result<()> {
    let ck = Loaded::read(path)?;
    let assumed = ck.meta.config.is_none().then(|| cfg.clone());
    let (narrow, _) = crate::restore::load_checkpoint(ck, assumed, model.device())?;
    crate::model::widen::widen_into(&narrow, model)
        .with_context(|| format!("train.init_from `{}`", path.display()))
}

/// A process killed while writing a checkpoint leaves its hidden temporary file
/// (`.NAME.tmp-PID`, see checkpoint::write_atomic); the next run in the directory
/// removes them. Nothing else writes into a run directory while it trains.
fn remove_stale_temporaries(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `value`, or the error that stops the run at `step` before the update is applied.
fn finite(value: f64, step: u64, what: &str, out: &Path) -> anyhow::Result<f64> {
    if value.is_finite() {
        return Ok(value);
    }
    bail!(
        "step {step}: non-finite {what} ({value}); training stopped before applying the update. \
         The last good checkpoint `{}` is untouched; lower train.lr or train.grad_clip and resume.",
        latest_path(out).display()
    )
}

/// `samples.png` (64 prior samples, the likelihood's means) and `reconstructions.png`
/// (rows alternate validation images and their reconstructions).
pub fn write_pictures(model: &Vnca, val: &Split, out: &Path) -> anyhow::Result<()> {
    tch::no_grad(|| -> anyhow::Result<()> {
        let mut noise = Noise::new(PICTURE_SEED);
        let samples = model.render_mean(&model.sample_prior(64, &mut noise));
        write_grid(&out.join("samples.png"), &samples, 8, 2)?;
        let x = val.range(0, 32.min(val.len()), model.cfg.image_size, model.device());
        let q = model.encode(&x);
        let recon = model.render_mean(&model.decode(&q.mu, &mut noise));
        let n = x.size()[0];
        // Interleave rows of 8: originals, then their reconstructions.
        let rows: Vec<Tensor> = (0..n)
            .step_by(8)
            .flat_map(|s| {
                let len = 8.min(n - s);
                [x.narrow(0, s, len), recon.narrow(0, s, len)]
            })
            .collect();
        write_grid(
            &out.join("reconstructions.png"),
            &Tensor::cat(&rows, 0),
            8,
            2,
        )
    })
}
