//! Run configuration: one TOML file per experiment (`configs/*.toml`), parsed with serde,
//! validated up front so that a bad value fails with one line naming the field instead of
//! a tensor-shape panic an hour into training. The config is saved next to every run's
//! outputs and inside every checkpoint, so a run directory describes itself.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

// The presets shipped in `configs/` (`(name, TOML text)`, in name order), compiled in so
// `--preset NAME` works from any directory; build.rs lists the directory.
include!(concat!(env!("OUT_DIR"), "/presets.rs"));

/// The preset `vnca train` uses when given neither `--config` nor `--preset`.
pub const DEFAULT_PRESET: &str = "mnist-doubling-small";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{origin}`: {msg}")]
    Parse { origin: String, msg: String },
    #[error("`{origin}`: invalid value for `{field}`: {msg}")]
    Invalid {
        origin: String,
        field: &'static str,
        msg: String,
    },
    #[error("unknown preset `{0}` (known: {1})")]
    UnknownPreset(String, String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Free-form name, shown in logs.
    pub name: String,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
}

/// Which decoder grows the image from z (docs/REFERENCE.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderKind {
    /// z broadcast to a 2x2 grid, then (double every cell, run steps) until `image_size`.
    Doubling,
    /// z broadcast to every cell of the `image_size` grid, then T ~ U{min..max} steps.
    NonDoubling,
    /// Not an NCA: the baseline VAE's deconvolutional decoder (src/model/deconv.rs).
    Deconv,
}

/// The update network's architecture (docs/REFERENCE.md §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateNetKind {
    /// 3x3 conv, `n_residual` residual 1x1 blocks, zero-initialised 1x1 conv.
    #[default]
    Residual,
    /// 3x3 conv, ELU, zero-initialised 1x1 conv without bias.
    Simple,
}

/// p(x|z) read from the final cell states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LikelihoodKind {
    /// Bernoulli with logits = state channel 0 (binary images).
    Bernoulli,
    /// Discretized logistic mixture over RGB (PixelCNN++), `n_mix` components read
    /// from the first 10 * n_mix state channels (8-bit colour images).
    Dml,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Latent size Z; also the number of channels of every cell's state.
    pub z_dim: i64,
    /// Hidden width of the update network's residual blocks (required for the NCA
    /// decoders; the deconv baseline has no update network).
    #[serde(default)]
    pub hidden: i64,
    /// Number of residual blocks in the update network (4 in the paper).
    #[serde(default = "default_n_residual")]
    pub n_residual: usize,
    /// Width of the encoder's first convolution; it doubles at each of the 5 layers (32 in the paper).
    #[serde(default = "default_encoder_width")]
    pub encoder_width: i64,
    /// Image channels (1 for MNIST).
    #[serde(default = "default_channels")]
    pub channels: i64,
    /// Side of the (square) image and of the final grid; a power of two for `doubling`.
    pub image_size: i64,
    pub decoder: DecoderKind,
    #[serde(default)]
    pub update_net: UpdateNetKind,
    /// Doubling: NCA steps after the seed and after every doubling (8 in the paper).
    #[serde(default = "default_steps_per_stage")]
    pub steps_per_stage: usize,
    /// Non-doubling: the number of steps of a growth is drawn from min..=max.
    #[serde(default)]
    pub min_steps: usize,
    #[serde(default)]
    pub max_steps: usize,
    /// Probability that a cell applies its update at a step (1.0 = synchronous, deterministic).
    #[serde(default = "default_p_update")]
    pub p_update: f64,
    pub likelihood: LikelihoodKind,
    /// Mixture components of the `dml` likelihood.
    #[serde(default = "default_n_mix")]
    pub n_mix: i64,
    /// Clip the encoder's mu to [-c, c] (the beta = 100 CelebA run used 100).
    #[serde(default)]
    pub clip_mu: Option<f64>,
    /// Clip the encoder's log sigma to [-c, c] (the beta = 100 CelebA run used 7).
    #[serde(default)]
    pub clip_log_sigma: Option<f64>,
    /// The range the encoder sees the image in. Configs without the key (every checkpoint
    /// written before it existed) mean `unit`, which is what they were trained with.
    #[serde(default)]
    pub encoder_input: EncoderInput,
}

/// The value range of the images fed to the encoder. The likelihood always sees the
/// image as the data pipeline delivers it ([0, 1]); only the encoder's input differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncoderInput {
    /// [0, 1] as loaded: binarized MNIST (every revision) and the non-doubling CelebA run
    /// (reference a17aafd, which rescales only inside the DML log-likelihood).
    #[default]
    Unit,
    /// [-1, 1] (`x * 2 - 1` before the encoder): the reference's doubling colour runs,
    /// CelebA 641588a, CelebA beta = 100 8d1ee6e and Noto emoji 028b599 (`forward` in
    /// vae-nca.py).
    Signed,
}

impl ModelConfig {
    /// Number of doublings from the 2x2 seed to `image_size` (4 for 32x32; 0 for the
    /// non-doubling decoder; the deconvolutional decoder doubles its 2x2 grid as often).
    pub fn n_doublings(&self) -> usize {
        match self.decoder {
            DecoderKind::Doubling | DecoderKind::Deconv => {
                (self.image_size as u64).trailing_zeros() as usize - 1
            }
            DecoderKind::NonDoubling => 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `binarized-mnist`, `emoji` (the Noto Color Emoji font or a folder of emoji PNGs),
    /// `celeba` or `folder` (any folder of PNG/JPEG images).
    pub dataset: String,
    /// MNIST: the packed file written by `vnca data binarize-mnist`, or a directory holding
    /// the Larochelle `binarized_mnist_{train,valid,test}.amat` files; emoji: the font or a
    /// folder; CelebA: the directory with `img_align_celeba/` and
    /// `list_eval_partition.txt`; folder: the folder. Relative paths are resolved against
    /// the current directory.
    #[serde(default = "default_data_path")]
    pub path: PathBuf,
    /// Splits trained on. The reference trained on train+valid; we keep valid for model
    /// selection by default (see docs/EXPERIMENTS.md).
    #[serde(default = "default_train_splits")]
    pub train_splits: Vec<String>,
    /// Split used for the periodic evaluation and the `best` checkpoint.
    #[serde(default = "default_val_split")]
    pub val_split: String,
    /// emoji: leave out the flag glyphs / the skin-tone variants.
    #[serde(default)]
    pub drop_flags: bool,
    #[serde(default)]
    pub drop_skin_tones: bool,
    /// emoji, folder: the seeded held-out fraction (the `valid` split, which is also
    /// what `test` means for them), and its seed.
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    #[serde(default)]
    pub split_seed: u64,
    /// Use only the first N images of each split (quick runs on big data sets).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub batch_size: i64,
    pub lr: f64,
    #[serde(default = "default_betas")]
    pub adam_betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub adam_eps: f64,
    /// Global L2 gradient-norm clip (PyTorch `clip_grad_norm_`).
    pub grad_clip: f64,
    /// KL weight of the ELBO (1 = the true ELBO).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Total number of gradient updates.
    pub steps: u64,
    /// Evaluate on the validation split, write checkpoints and pictures every this many steps.
    pub eval_every: u64,
    /// Number of validation images per evaluation (the first N of the split, fixed noise).
    pub eval_images: usize,
    /// Importance samples per image in the periodic evaluation (1 = single-sample ELBO).
    #[serde(default = "default_eval_iw")]
    pub eval_iw_samples: i64,
    /// Recompute each NCA step in the backward pass instead of keeping its activations
    /// (as the reference always did): ~4/3 the compute, a fraction of the memory. For
    /// GPUs with little memory; off by default.
    #[serde(default)]
    pub grad_checkpointing: bool,
    /// Arithmetic of convolutions and matrix products: fp32 (default; bit-exact resume
    /// on the CPU), tf32 or bf16 (src/precision.rs).
    #[serde(default)]
    pub precision: crate::precision::Precision,
    /// Pool and damage training (non-doubling models only; docs/REFERENCE.md §4.1).
    #[serde(default)]
    pub pool: Option<PoolConfig>,
    /// Lower the learning rate along a straight line over a span of updates (none in the
    /// paper, whose lr is constant; `lr_at`).
    #[serde(default)]
    pub lr_decay: Option<LrDecay>,
    /// Raise the learning rate along a straight line from `lr / lr_warmup` at update 1
    /// to the schedule's rate at update `lr_warmup` (0: none, as the paper). Meant for a
    /// run that starts trained weights with fresh Adam moments (`init_from`), whose
    /// first updates move every weight by about `lr` whatever its gradient; measured, it
    /// did not spare such a start its rise in loss (docs/EXPERIMENTS.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lr_warmup: u64,
    /// Seed of every random stream (init, data order, noise).
    #[serde(default)]
    pub seed: u64,
    /// Start from the weights of this checkpoint (a run's `latest` or `best`, a file of
    /// `models/`) instead of a random init; Adam, the data order and the pool start
    /// afresh. A narrower model of the same kind (smaller `z_dim` or `hidden`) is widened
    /// so that it computes what it did (src/model/widen.rs). A resumed run ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_n_residual() -> usize {
    4
}
fn default_encoder_width() -> i64 {
    32
}
fn default_channels() -> i64 {
    1
}
/// Which KL the pool rows of a batch contribute (see src/train/pool.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolKl {
    /// The reference's: the KL of a fresh encoding of the pool image (never decoded).
    #[default]
    Reference,
    /// Only the rows decoded from z contribute a KL.
    FreshOnly,
}

/// `train.lr` up to update `start`, then a straight line down to `final_lr` at update
/// `end`, and `final_lr` from there on. The span is in updates, not a fraction of
/// `train.steps`, so a run resumed with other `--steps` keeps its schedule; the rate is a
/// function of the update alone, so a resumed run stays bit-exact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrDecay {
    pub start: u64,
    pub end: u64,
    pub final_lr: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Entries kept (1024 in the paper).
    pub size: usize,
    /// Side of the zeroed square (14 for 28x28 MNIST, 16 for 32x32 CelebA).
    pub damage_size: i64,
    /// Fraction of a batch's pool rows that are damaged before they grow on: 0.5 in the
    /// reference (B/4 of the B/2 pool rows). Higher trains regrowth on more of the batch.
    #[serde(default = "default_damaged_fraction")]
    pub damaged_fraction: f64,
    #[serde(default)]
    pub kl: PoolKl,
    /// Keep the pool's images and states in `latest.safetensors` (N x (C + Z) x S x S
    /// floats: 103 MB for the small MNIST preset, 411 MB for the paper's, 1 GB for
    /// CelebA-32), so `--resume` continues bit-exactly. Off: smaller checkpoints, and a
    /// resumed run starts with an empty pool.
    #[serde(default = "default_true")]
    pub save: bool,
}

fn default_damaged_fraction() -> f64 {
    0.5
}

fn default_true() -> bool {
    true
}

fn default_valid_fraction() -> f64 {
    0.2
}
fn default_steps_per_stage() -> usize {
    8
}
fn default_n_mix() -> i64 {
    1
}
fn default_p_update() -> f64 {
    1.0
}
fn default_data_path() -> PathBuf {
    PathBuf::from("data/binarized_mnist.vbm.gz")
}
fn default_train_splits() -> Vec<String> {
    vec!["train".into()]
}
fn default_val_split() -> String {
    "valid".into()
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_beta() -> f64 {
    1.0
}
fn default_eval_iw() -> i64 {
    1
}

impl Config {
    /// Parse and validate TOML text; `origin` names the file or preset in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // toml's syntax messages have an "expected ..." second line: keep errors one
            // line. A control character in a comment comes with no message at all.
            let msg = match e.message().trim_end() {
                "" => "invalid TOML syntax".to_string(),
                m => one_line(m),
            };
            ConfigError::Parse {
                origin: origin.to_string(),
                msg: msg + &span_hint(text, e.span()),
            }
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    pub fn preset(name: &str) -> Result<Config, ConfigError> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            ConfigError::UnknownPreset(name.to_string(), known.join(", "))
        })?;
        Self::from_toml_str(text, &format!("preset {name}"))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serializes to TOML")
    }

    /// Number of doublings from the 2x2 seed to `image_size` (see `ModelConfig::n_doublings`).
    pub fn n_doublings(&self) -> usize {
        self.model.n_doublings()
    }

    /// Every section checks its own fields, then the checks that span sections.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |field: &'static str, msg: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field,
            msg: one_line(&msg),
        };
        self.model.validate().map_err(|(f, m)| bad(f, m))?;
        self.data.validate().map_err(|(f, m)| bad(f, m))?;
        self.train.validate().map_err(|(f, m)| bad(f, m))?;
        self.validate_across().map_err(|(f, m)| bad(f, m))
    }

    /// The data set fixes the likelihood; the pool needs the non-doubling decoder.
    fn validate_across(&self) -> Invalid {
        let m = &self.model;
        let want = match self.data.dataset.as_str() {
            "binarized-mnist" => LikelihoodKind::Bernoulli,
            "emoji" | "celeba" | "folder" => LikelihoodKind::Dml,
            other => {
                return Err((
                    "data.dataset",
                    format!("`{other}` (supported: binarized-mnist, emoji, celeba, folder)"),
                ))
            }
        };
        if want != m.likelihood {
            return Err((
                "model.likelihood",
                format!(
                    "{:?} does not fit data set `{}` (use {want:?})",
                    m.likelihood, self.data.dataset
                ),
            ));
        }
        if self.train.grad_checkpointing && m.decoder == DecoderKind::Deconv {
            return Err((
                "train.grad_checkpointing",
                "recomputes NCA steps; the deconv baseline has none".into(),
            ));
        }
        if let Some(pool) = &self.train.pool {
            if m.decoder != DecoderKind::NonDoubling {
                return Err((
                    "train.pool",
                    "pool training needs decoder = \"non-doubling\"".into(),
                ));
            }
            if self.train.grad_checkpointing {
                return Err((
                    "train.pool",
                    "not supported together with grad_checkpointing".into(),
                ));
            }
            if pool.damage_size < 1 || pool.damage_size > m.image_size {
                return Err((
                    "train.pool.damage_size",
                    format!("{} (must be in 1..={})", pool.damage_size, m.image_size),
                ));
            }
            if !(0.0..=1.0).contains(&pool.damaged_fraction) {
                return Err((
                    "train.pool.damaged_fraction",
                    format!("{} (must be in 0..=1)", pool.damaged_fraction),
                ));
            }
            if pool.size < self.train.batch_size as usize {
                return Err((
                    "train.pool.size",
                    format!("{} (must be >= batch_size)", pool.size),
                ));
            }
        }
        Ok(())
    }
}

/// A field that failed validation and why: `Config::validate` adds the file's name.
type Invalid = Result<(), (&'static str, String)>;

impl ModelConfig {
    fn validate(&self) -> Invalid {
        let m = self;
        if m.z_dim < 1 {
            return Err(("model.z_dim", format!("{} (must be >= 1)", m.z_dim)));
        }
        if m.hidden < 1 && m.decoder != DecoderKind::Deconv {
            return Err((
                "model.hidden",
                format!("{} (must be >= 1; required for an NCA decoder)", m.hidden),
            ));
        }
        if m.encoder_width < 1 {
            return Err((
                "model.encoder_width",
                format!("{} (must be >= 1)", m.encoder_width),
            ));
        }
        let want_channels = match m.likelihood {
            LikelihoodKind::Bernoulli => 1,
            LikelihoodKind::Dml => 3,
        };
        if m.channels != want_channels {
            return Err((
                "model.channels",
                format!(
                    "{} (the {:?} likelihood models {want_channels}-channel images)",
                    m.channels, m.likelihood
                ),
            ));
        }
        if m.likelihood == LikelihoodKind::Dml && (m.n_mix < 1 || 10 * m.n_mix > m.z_dim) {
            return Err((
                "model.n_mix",
                format!(
                    "{} (needs 1 <= n_mix and 10 * n_mix <= z_dim = {})",
                    m.n_mix, m.z_dim
                ),
            ));
        }
        let s = m.image_size;
        match m.decoder {
            DecoderKind::Doubling | DecoderKind::Deconv
                if s < 16 || (s as u64).count_ones() != 1 =>
            {
                return Err((
                    "model.image_size",
                    format!(
                        "{s} (the {:?} decoder needs a power of two >= 16)",
                        m.decoder
                    ),
                ));
            }
            DecoderKind::Deconv if m.likelihood != LikelihoodKind::Bernoulli => {
                return Err((
                    "model.decoder",
                    "\"deconv\" (the baseline VAE) is built for the Bernoulli likelihood only"
                        .into(),
                ));
            }
            DecoderKind::NonDoubling if !(16..=512).contains(&s) || (s % 16) % 2 == 1 => {
                return Err((
                    "model.image_size",
                    format!("{s} (must be even and in 16..=512: the encoder pads it to a multiple of 16)"),
                ));
            }
            DecoderKind::NonDoubling if m.min_steps == 0 || m.max_steps < m.min_steps => {
                return Err((
                    "model.min_steps/max_steps",
                    format!(
                        "{}..={} (need 1 <= min_steps <= max_steps)",
                        m.min_steps, m.max_steps
                    ),
                ));
            }
            _ => {}
        }
        if m.steps_per_stage == 0 {
            return Err(("model.steps_per_stage", "0 (must be >= 1)".into()));
        }
        if !(m.p_update > 0.0 && m.p_update <= 1.0) {
            return Err((
                "model.p_update",
                format!("{} (must be in (0, 1])", m.p_update),
            ));
        }
        let s = m.image_size;
        let limits = [
            ("model.z_dim", m.z_dim, 4096),
            ("model.hidden", m.hidden, 4096),
            ("model.encoder_width", m.encoder_width, 256),
            (
                "model.n_residual",
                i64::try_from(m.n_residual).unwrap_or(i64::MAX),
                64,
            ),
            ("model.image_size", s, 512),
        ];
        below_limits(&limits)
    }
}

impl DataConfig {
    fn validate(&self) -> Invalid {
        if !(0.0..1.0).contains(&self.valid_fraction) {
            return Err((
                "data.valid_fraction",
                format!("{} (must be in [0, 1))", self.valid_fraction),
            ));
        }
        let splits = ["train", "valid", "test"];
        for sp in self.train_splits.iter().chain([&self.val_split]) {
            if !splits.contains(&sp.as_str()) {
                return Err((
                    "data.train_splits/val_split",
                    format!("`{sp}` (splits: train, valid, test)"),
                ));
            }
        }
        if self.train_splits.is_empty() {
            return Err(("data.train_splits", "empty".into()));
        }
        if self.train_splits.contains(&self.val_split) {
            return Err((
                "data.val_split",
                format!(
                    "`{}` is also trained on; validation must be held out",
                    self.val_split
                ),
            ));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// The learning rate of update `step` (counted from 1): the warm-up's fraction of
    /// the decay schedule's rate.
    pub fn lr_at(&self, step: u64) -> f64 {
        let warmup = if step < self.lr_warmup {
            step.max(1) as f64 / self.lr_warmup as f64
        } else {
            1.0
        };
        let scheduled = match &self.lr_decay {
            None => self.lr,
            Some(d) if step <= d.start => self.lr,
            Some(d) if step >= d.end => d.final_lr,
            Some(d) => {
                let done = (step - d.start) as f64 / (d.end - d.start) as f64;
                self.lr + (d.final_lr - self.lr) * done
            }
        };
        warmup * scheduled
    }

    fn validate(&self) -> Invalid {
        let t = self;
        if t.batch_size < 1 {
            return Err((
                "train.batch_size",
                format!("{} (must be >= 1)", t.batch_size),
            ));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(("train.lr", format!("{} (must be > 0)", t.lr)));
        }
        if t.grad_clip.is_nan() || t.grad_clip <= 0.0 {
            return Err(("train.grad_clip", format!("{} (must be > 0)", t.grad_clip)));
        }
        if !(t.beta >= 0.0 && t.beta.is_finite()) {
            return Err(("train.beta", format!("{} (must be >= 0)", t.beta)));
        }
        if t.adam_betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err((
                "train.adam_betas",
                format!("{:?} (each in [0, 1))", t.adam_betas),
            ));
        }
        if t.eval_every == 0 {
            return Err(("train.eval_every", "0 (must be >= 1)".into()));
        }
        if t.eval_iw_samples < 1 {
            return Err((
                "train.eval_iw_samples",
                format!("{} (must be >= 1)", t.eval_iw_samples),
            ));
        }
        if let Some(d) = &t.lr_decay {
            if d.end <= d.start {
                return Err((
                    "train.lr_decay",
                    format!("end {} (must be after start {})", d.end, d.start),
                ));
            }
            if !(d.final_lr >= 0.0 && d.final_lr.is_finite()) {
                return Err((
                    "train.lr_decay.final_lr",
                    format!("{} (must be >= 0)", d.final_lr),
                ));
            }
        }
        below_limits(&[("train.batch_size", t.batch_size, 65536)])
    }
}

/// Typo guards, far above the paper's sizes (Z = hidden = 256, width 32, 32x32, batch 32):
/// a stray extra digit fails here instead of aborting the process in an allocation of
/// terabytes while the model or the first batch is built.
fn below_limits(limits: &[(&'static str, i64, i64)]) -> Invalid {
    for &(field, value, max) in limits {
        if value > max {
            return Err((field, format!("{value} (must be <= {max})")));
        }
    }
    Ok(())
}

/// " (line L, column C: `the line`)" for a TOML error span, so users find the bad key
/// quickly: type errors ("expected usize") do not name the key themselves.
/// Whether `c` would break an error line on a terminal: control characters (newlines,
/// tabs, escapes) and the Unicode line and paragraph separators.
fn breaks_line(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `s` as one printable line: newlines become "; ", other line-breaking characters
/// their escapes (`\t`, `\u{1b}`), so an error quoting the input stays one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(crate::data::error::escape_controls)
        .collect::<Vec<_>>()
        .join("; ")
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let col = before.len() - line_start + 1;
    let content = text[line_start..].lines().next().unwrap_or("");
    let content = content.replace(breaks_line, " ");
    let content = content.trim();
    if content.is_empty() {
        return format!(" (line {line}, column {col})");
    }
    let shown = match content.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &content[..i]),
        None => content.to_string(),
    };
    format!(" (line {line}, column {col}: `{shown}`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key with a tab and an escape in it is quoted by the TOML reader's error: the
    /// message stays one printable line, the characters escaped.
    #[test]
    fn errors_quoting_the_input_stay_one_printable_line() {
        let text = Config::preset("tiny-test").unwrap().to_toml();
        let text = text.replace("[model]\n", "[model]\n\"z\\tdim\\u001b[2J\" = 3\n");
        let e = Config::from_toml_str(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("z\\tdim\\u{1b}[2J"), "{e}");
        assert!(!e.chars().any(breaks_line), "{e:?}");
    }

    /// The tiny preset's training config at lr 1e-3, decayed to 2e-4 over `start..end`.
    fn decaying_from_1e3(start: u64, end: u64) -> TrainConfig {
        let mut t = Config::preset("tiny-test").unwrap().train;
        t.lr = 1e-3;
        t.lr_decay = Some(LrDecay {
            start,
            end,
            final_lr: 2e-4,
        });
        t
    }

    fn assert_lrs(t: &TrainConfig, steps: &[u64], want: &[f64]) {
        let lrs: Vec<f64> = steps.iter().map(|&s| t.lr_at(s)).collect();
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}, want {want:?}");
        }
    }

    #[test]
    fn lr_decay_is_constant_then_a_straight_line_then_constant() {
        let mut t = decaying_from_1e3(10, 20);
        let steps = [1, 10, 11, 15, 19, 20, 500];
        assert_lrs(&t, &steps, &[1e-3, 1e-3, 9.2e-4, 6e-4, 2.8e-4, 2e-4, 2e-4]);
        t.lr_decay = None;
        assert_lrs(&t, &steps, &[1e-3; 7]);
    }

    #[test]
    fn lr_warmup_ramps_up_to_the_schedule_and_is_left_out_of_the_toml_when_off() {
        let mut t = decaying_from_1e3(2, 6);
        t.lr_warmup = 4;
        // warm-up fractions 1/4, 2/4, 3/4, 1, 1, 1, 1 of the decay's 1e-3, 1e-3, 8e-4, 6e-4,
        // 4e-4, 2e-4, 2e-4
        let want = [2.5e-4, 5e-4, 6e-4, 6e-4, 4e-4, 2e-4, 2e-4];
        assert_lrs(&t, &[1, 2, 3, 4, 5, 6, 9], &want);
        let mut c = Config::preset("tiny-test").unwrap();
        assert!(!c.to_toml().contains("lr_warmup"), "off: not written");
        c.train.lr_warmup = 300;
        let text = c.to_toml();
        assert!(text.contains("lr_warmup = 300"), "{text}");
        assert_eq!(Config::from_toml_str(&text, "x.toml").unwrap(), c);
    }

    #[test]
    fn lr_decay_reads_from_toml_and_refuses_a_backward_span() {
        let text = Config::preset("tiny-test").unwrap().to_toml();
        let with = |decay: &str| format!("{text}\n[train.lr_decay]\n{decay}\n");
        let c =
            Config::from_toml_str(&with("start = 5\nend = 9\nfinal_lr = 0.0"), "x.toml").unwrap();
        assert_eq!(c.train.lr_decay.as_ref().map(|d| d.end), Some(9));
        assert_eq!(Config::from_toml_str(&c.to_toml(), "x.toml").unwrap(), c);
        let e = Config::from_toml_str(&with("start = 9\nend = 9\nfinal_lr = 0.0"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.lr_decay") && e.contains("after start 9"),
            "{e}"
        );
        let e = Config::from_toml_str(&with("start = 1\nend = 9\nfinal_lr = -1.0"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.lr_decay.final_lr"), "{e}");
    }

    #[test]
    fn every_preset_parses() {
        for (name, _) in PRESETS {
            Config::preset(name).unwrap();
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::preset("mnist-doubling").unwrap();
        let back = Config::from_toml_str(&c.to_toml(), "x").unwrap();
        assert_eq!(c, back);
        assert_eq!(c.n_doublings(), 4);
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        let good = Config::preset("tiny-test").unwrap().to_toml();
        let cases = [
            ("p_update = 1.0", "p_update = 1.5", "model.p_update"),
            ("image_size = 32", "image_size = 48", "model.image_size"),
            ("batch_size = 4", "batch_size = -1", "train.batch_size"),
        ];
        for (from, to, field) in cases {
            assert!(good.contains(from), "{from}");
            let err = Config::from_toml_str(&good.replace(from, to), "t.toml").unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(field) && msg.contains("t.toml"), "{msg}");
        }
        let pool = Config::preset("mnist-nondoubling-damage-small")
            .unwrap()
            .to_toml();
        let bad = pool.replace("damaged_fraction = 0.5", "damaged_fraction = 1.5");
        let msg = Config::from_toml_str(&bad, "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("train.pool.damaged_fraction") && msg.contains("p.toml"),
            "{msg}"
        );
        let err = Config::from_toml_str(&good.replace("[model]", "[model]\nzdim = 3"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `zdim`") && err.contains("line"),
            "{err}"
        );
    }
}
