//! The training loop: single-sample ELBO, backward, global-norm clip, Adam (PAPER.md 3.8),
//! with periodic validation, atomic `latest`/`best` checkpoints and sample pictures.
//!
//! Safety rules: a non-finite loss or gradient norm stops the run before the update is
//! applied and before anything is written; Ctrl-C finishes the current step, saves
//! `latest` and exits; `--resume` continues bit-exactly from `latest` (every random
//! stream, the optimizer and the damage pool are in the checkpoint).
use super::checkpoint::{self, Loaded, Meta};
use super::metrics::{MetricsLog, Record};
use super::optim::{clip_grad_norm, zero_grad, Adam, Params};
use super::pool::Pool;
use super::state::TrainState;
use crate::config::Config;
use crate::dataset::{self, EpochSampler, Split};
use crate::eval;
use crate::figures::grid::write_grid;
use crate::model::Vnca;
use crate::noise::Noise;
use crate::objective::{elbo, elbo_backward_recompute};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
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
/// Names of the damage pool's tensors in `latest` checkpoints.
const POOL_IMAGES: &str = "pool.images";
const POOL_STATES: &str = "pool.states";

pub fn latest_path(out: &Path) -> PathBuf {
    out.join("latest.safetensors")
}

pub fn best_path(out: &Path) -> PathBuf {
    out.join("best.safetensors")
}

/// Train `cfg` into the run directory `opts.out`.
pub fn train(cfg: &Config, opts: &TrainOptions) -> anyhow::Result<TrainSummary> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create output directory `{}`", opts.out.display()))?;
    if !opts.resume && !opts.overwrite && latest_path(&opts.out).exists() {
        bail!(
            "`{}` already holds a run; pass --resume to continue it, or --overwrite to start over and replace its checkpoints",
            opts.out.display()
        );
    }
    remove_stale_temporaries(&opts.out);
    let (train_split, val_split) = dataset::load_train_val(cfg)?;
    cfg.train.precision.configure();
    let model = Vnca::new(&cfg.model, opts.device, cfg.train.seed);
    let params: Params = model.params();
    let t = &cfg.train;
    let mut adam = Adam::new(&params, t.lr, t.adam_betas, t.adam_eps);
    let mut state = TrainState {
        step: 0,
        noise: Noise::new(cfg.train.seed.wrapping_add(1)),
        sampler: EpochSampler::new(train_split.len() as usize, cfg.train.seed.wrapping_add(2)),
        best_val: None,
        adam_step: 0,
    };
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut pool = t
        .pool
        .as_ref()
        .map(|p| Pool::new(p.size, p.damage_size, p.kl));
    if opts.resume {
        state = resume(&opts.out, &model, &mut adam, pool.as_mut())?;
        // The saved data order indexes the split it was made for; other data would index
        // out of range (or silently change the run).
        let (saved, now) = (state.sampler.n_items(), train_split.len() as usize);
        if saved != now {
            bail!(
                "`{}` was trained on {saved} images, but the training data `{}` has {now}; \
                 resume with the same data",
                latest_path(&opts.out).display(),
                cfg.data.path.display()
            );
        }
    }
    // Records after the starting step belong to a run we are replacing (all of them when
    // starting afresh in a used directory, e.g. after a crash before the first checkpoint).
    super::metrics::truncate_after(&metrics_path, state.step)?;
    let config_path = opts.out.join("config.toml");
    checkpoint::write_atomic(&config_path, cfg.to_toml().as_bytes())?;
    let mut log = MetricsLog::open(&metrics_path)?;
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    INTERRUPTED.store(false, Ordering::SeqCst);

    let bar = progress_bar(t.steps, state.step, opts.quiet);
    let mut last_loss = f64::NAN;
    let mut interrupted = false;
    while state.step < t.steps {
        let t0 = std::time::Instant::now();
        let idx = state.sampler.next_batch(t.batch_size as usize);
        let x = train_split.batch(&idx, cfg.model.image_size, opts.device);
        zero_grad(&params);
        let terms = t.precision.autocast(opts.device, || {
            if let Some(pool) = pool.as_mut() {
                pool.elbo(&model, &x, t.beta, &mut state.noise)
            } else if t.grad_checkpointing {
                elbo_backward_recompute(&model, &x, t.beta, &mut state.noise)
            } else {
                elbo(&model, &x, t.beta, &mut state.noise)
            }
        });
        let loss = terms.loss.double_value(&[]);
        if !loss.is_finite() {
            bail!(non_finite(state.step + 1, "loss", loss, &opts.out));
        }
        if !t.grad_checkpointing {
            terms.loss.backward();
        }
        let norm = clip_grad_norm(&params, t.grad_clip);
        if !norm.is_finite() {
            bail!(non_finite(state.step + 1, "gradient norm", norm, &opts.out));
        }
        adam.update(&params);
        state.step += 1;
        state.adam_step = adam.step;
        last_loss = loss;
        log.write(&Record::Train {
            step: state.step,
            loss,
            recon: terms.recon.mean(Kind::Float).double_value(&[]),
            kl: terms.kl.mean(Kind::Float).double_value(&[]),
            grad_norm: norm,
            step_seconds: t0.elapsed().as_secs_f64(),
        })?;
        bar.set_position(state.step);
        bar.set_message(format!("loss {loss:.2}"));
        interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if state.step % t.eval_every == 0 || state.step == t.steps || interrupted {
            let saved_pool = pool
                .as_ref()
                .filter(|_| t.pool.as_ref().is_some_and(|p| p.save));
            evaluate_and_save(
                cfg, opts, &model, &adam, saved_pool, &mut state, &val_split, &mut log, &bar,
            )?;
        }
        if interrupted {
            bar.println(format!(
                "interrupted: saved `{}` at step {}",
                latest_path(&opts.out).display(),
                state.step
            ));
            break;
        }
    }
    bar.finish();
    Ok(TrainSummary {
        steps: state.step,
        last_loss,
        best_val: state.best_val,
        interrupted,
    })
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

fn non_finite(step: u64, what: &str, value: f64, out: &Path) -> String {
    format!(
        "step {step}: non-finite {what} ({value}); training stopped before applying the update. \
         The last good checkpoint `{}` is untouched; lower train.lr or train.grad_clip and resume.",
        latest_path(out).display()
    )
}

fn progress_bar(total: u64, pos: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(pos);
    bar
}

/// Restore model, optimizer, pool (when the checkpoint holds one) and training state
/// from `out/latest.safetensors`.
fn resume(
    out: &Path,
    model: &Vnca,
    adam: &mut Adam,
    pool: Option<&mut Pool>,
) -> anyhow::Result<TrainState> {
    let path = latest_path(out);
    if !path.exists() {
        bail!(
            "--resume: no checkpoint `{}` to resume from",
            path.display()
        );
    }
    let ck = Loaded::read(&path)?;
    ck.load_model(model)?;
    for (name, m) in adam.m.iter_mut() {
        let t = ck.tensor(&format!("adam.m.{name}"), &m.size())?;
        tch::no_grad(|| m.copy_(&t));
    }
    for (name, v) in adam.v.iter_mut() {
        let t = ck.tensor(&format!("adam.v.{name}"), &v.size())?;
        tch::no_grad(|| v.copy_(&t));
    }
    if let (Some(pool), Some(shape)) = (pool, ck.shape(POOL_STATES)) {
        let n = shape[0];
        let (c, z, side) = (model.cfg.channels, model.cfg.z_dim, model.cfg.image_size);
        let images = ck.tensor(POOL_IMAGES, &[n, c, side, side])?;
        let states = ck.tensor(POOL_STATES, &[n, z, side, side])?;
        pool.restore(&images, &states, model.device());
    }
    let json =
        ck.meta.state.as_deref().with_context(|| {
            format!("`{}` holds weights only, no training state", path.display())
        })?;
    let state: TrainState = serde_json::from_str(json)
        .with_context(|| format!("`{}`: unreadable training state", path.display()))?;
    adam.step = state.adam_step;
    Ok(state)
}

#[allow(clippy::too_many_arguments)]
fn evaluate_and_save(
    cfg: &Config,
    opts: &TrainOptions,
    model: &Vnca,
    adam: &Adam,
    pool: Option<&Pool>,
    state: &mut TrainState,
    val: &Split,
    log: &mut MetricsLog,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let t = &cfg.train;
    let mut noise = Noise::new(EVAL_SEED);
    let report = t.precision.autocast(model.device(), || {
        eval::nll(
            model,
            val,
            Some(t.eval_images),
            t.eval_iw_samples,
            t.batch_size,
            MAX_DECODE,
            &mut noise,
            &mut |_| {},
        )
    });
    log.write(&Record::Eval {
        step: state.step,
        split: report.split.clone(),
        nll_nats: report.nll_nats,
        nll_stderr: report.nll_stderr,
        bpd: report.bpd,
        iw_samples: report.iw_samples,
        n_images: report.n_images,
    })?;
    bar.println(format!(
        "step {}: {} NLL (IWAE-{}) {:.2} ± {:.2} nats, {:.4} bits/dim",
        state.step, report.split, report.iw_samples, report.nll_nats, report.nll_stderr, report.bpd
    ));
    let improved = state.best_val.is_none_or(|b| report.nll_nats < b);
    if improved {
        state.best_val = Some(report.nll_nats);
    }
    let meta = Meta {
        config: Some(cfg.to_toml()),
        state: Some(serde_json::to_string(state)?),
    };
    let mut extra = adam.state_tensors();
    if let Some((images, states)) = pool.and_then(Pool::to_tensors) {
        extra.insert(POOL_IMAGES.into(), images); // [N, C, S, S]
        extra.insert(POOL_STATES.into(), states); // [N, Z, S, S]
    }
    checkpoint::save(&latest_path(&opts.out), model, &extra, &meta)?;
    if improved {
        checkpoint::save(&best_path(&opts.out), model, &Default::default(), &meta)?;
    }
    write_pictures(model, val, &opts.out)
}

/// `samples.png` (64 prior samples, the Bernoulli means) and `reconstructions.png`
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
