//! The VNCA, top to bottom: a convolutional encoder q(z|x), the update network every cell
//! shares, and the model that owns them with the NCA decoder (`nca.rs`) and reads the
//! likelihood off the final cell states. arXiv 2201.12360 Sec. 2-3; the reference code as
//! summarised in docs/REFERENCE.md §2. Parameter names are the reference's `state_dict`
//! keys (`encoder.0.weight`, ..., `nca.update_net.5.bias`), so its checkpoints load here.
//!
//! Shapes: B images of C channels and side S; Z the latent size, which is also the number
//! of channels of every cell's state; `hidden` the update network's width.
pub mod deconv;
pub mod nca;
pub mod widen;

use crate::config::{DecoderKind, EncoderInput, LikelihoodKind, ModelConfig, UpdateNetKind};
use crate::likelihood::{bernoulli, logistic_mixture};
use crate::noise::NoiseSource;
use deconv::Deconv;
use nca::Nca;
use std::collections::BTreeMap;
use tch::{nn, nn::Module, Device, Tensor};

/// Parameters by name, in name order (what the optimiser and checkpoints walk).
pub type Params = BTreeMap<String, Tensor>;

impl ModelConfig {
    /// A freshly initialised model of this config (burn's `Config::init`); see `Vnca::new`.
    pub fn init(&self, device: Device, seed: u64) -> Vnca {
        Vnca::new(self, device, seed)
    }
}

// ---------------------------------------------------------------------------------------
// Layers with PyTorch's default initialisation, so a model built here starts from the
// same distribution as the reference (docs/REFERENCE.md §2).

/// PyTorch's default for Conv2d/Linear: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
/// (kaiming_uniform with a = sqrt(5) reduces to exactly this bound for the weight.)
fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Conv2d(c_in, c_out, k, stride, padding)` with bias and PyTorch's default init.
fn conv2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let init = torch_default_init(c_in * k * k);
    let cfg = nn::ConvConfig {
        stride,
        padding,
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// A 1x1 convolution whose weight and bias start at zero: the update net's last layer,
/// which makes the NCA the identity map at initialisation.
fn zero_conv1x1(p: nn::Path, c_in: i64, c_out: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, 1, cfg)
}

/// `nn.Linear(d_in, d_out)` with PyTorch's default init.
fn linear(p: nn::Path, d_in: i64, d_out: i64) -> nn::Linear {
    let init = torch_default_init(d_in);
    let cfg = nn::LinearConfig {
        ws_init: init,
        bs_init: Some(init),
        bias: true,
    };
    nn::linear(p, d_in, d_out, cfg)
}

// ---------------------------------------------------------------------------------------
// q(z|x): five 5x5 convolutions (strides 1,2,2,2,2, ELU) and a linear layer to 2Z numbers,
// read as (mu, log sigma) as in every VNCA revision of the reference (the [Re] and the
// baseline VAEs use log-variance instead).

#[derive(Debug)]
pub struct Encoder {
    convs: Vec<nn::Conv2D>,
    fc: nn::Linear,
    z_dim: i64,
    clip_mu: Option<f64>,
    clip_log_sigma: Option<f64>,
    input: EncoderInput,
}

impl Encoder {
    /// Builds `encoder.{0,2,4,6,8}` (convolutions) and `encoder.11` (linear): the indices
    /// of the reference's `nn.Sequential`, where ELUs and the Flatten sit in between.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let w = cfg.encoder_width;
        let mut convs = Vec::with_capacity(5);
        let mut c_in = cfg.channels;
        // Sides that are not a multiple of 16 (28x28 MNIST for the non-doubling model) are
        // padded up by the first convolution: padding 4 takes 28 to 32, as the reference.
        let side = (cfg.image_size + 15) / 16 * 16;
        let first_pad = 2 + (side - cfg.image_size) / 2;
        for i in 0..5 {
            let c_out = w << i;
            let (stride, pad) = if i == 0 { (1, first_pad) } else { (2, 2) };
            convs.push(conv2d(p / (2 * i), c_in, c_out, 5, stride, pad));
            c_in = c_out;
        }
        let side = side / 16;
        let fc = linear(p / 11, c_in * side * side, 2 * cfg.z_dim);
        Encoder {
            convs,
            fc,
            z_dim: cfg.z_dim,
            clip_mu: cfg.clip_mu,
            clip_log_sigma: cfg.clip_log_sigma,
            input: cfg.encoder_input,
        }
    }

    /// x: [B, C, H, W] in [0, 1] -> (mu [B, Z], log_sigma [B, Z]). The doubling colour
    /// models of the reference see the image in [-1, 1] (`EncoderInput::Signed`).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let mut h = match self.input {
            EncoderInput::Unit => x.shallow_clone(),
            EncoderInput::Signed => x * 2.0 - 1.0,
        };
        for conv in &self.convs {
            h = conv.forward(&h).elu(); // [B, w*2^i, H/2^i, W/2^i]
        }
        // [B, 2Z]; under bf16 autocast (src/precision.rs) the linear layer yields bf16:
        // back to the input's float kind, so the KL and z are computed in float32.
        let q = self.fc.forward(&h.flatten(1, -1)).to_kind(x.kind());
        let mut mu = q.narrow(1, 0, self.z_dim);
        let mut log_sigma = q.narrow(1, self.z_dim, self.z_dim);
        // The beta = 100 CelebA run clipped the encoder's outputs (docs/REFERENCE.md §4).
        if let Some(c) = self.clip_mu {
            mu = mu.clamp(-c, c);
        }
        if let Some(c) = self.clip_log_sigma {
            log_sigma = log_sigma.clamp(-c, c);
        }
        (mu, log_sigma)
    }
}

// ---------------------------------------------------------------------------------------
// The update network shared by every cell and every step. Two kinds:
// - residual (every doubling model, non-doubling CelebA): a 3x3 convolution (the only
//   place cells see their neighbours), residual blocks of 1x1 convolutions, and a
//   zero-initialised 1x1 convolution back to the state size;
// - simple (non-doubling MNIST): 3x3 convolution, ELU, zero-initialised 1x1 convolution
//   without bias.
// Either way the last layer starts at zero, so the NCA is the identity at initialisation.

#[derive(Debug)]
pub struct UpdateNet {
    perceive: nn::Conv2D,
    blocks: Vec<(nn::Conv2D, nn::Conv2D)>,
    out: nn::Conv2D,
    /// The simple net has an ELU after the 3x3 convolution; the residual net has none.
    elu_after_perceive: bool,
}

impl UpdateNet {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        match cfg.update_net {
            UpdateNetKind::Residual => Self::residual(p, cfg),
            UpdateNetKind::Simple => Self::simple(p, cfg),
        }
    }

    /// The reference's `Sequential(Conv3x3, ELU, Conv1x1(bias=False))`: names `0`, `2`.
    fn simple(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let (z, h) = (cfg.z_dim, cfg.hidden);
        let out = nn::conv2d(
            p / 2,
            h,
            z,
            1,
            nn::ConvConfig {
                bias: false,
                ws_init: nn::Init::Const(0.0),
                ..Default::default()
            },
        );
        UpdateNet {
            perceive: conv2d(p / 0, z, h, 3, 1, 1),
            blocks: Vec::new(),
            out,
            elu_after_perceive: true,
        }
    }

    /// Names: `0` (3x3), `1..=n`.delegate.{0,2} (residual blocks), `n+1` (output); the
    /// reference's `Sequential(Conv, Residual(Conv, ELU, Conv) x4, Conv)`.
    fn residual(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let (z, h) = (cfg.z_dim, cfg.hidden);
        let perceive = conv2d(p / 0, z, h, 3, 1, 1);
        let blocks = (1..=cfg.n_residual)
            .map(|i| {
                let d = p / i / "delegate";
                (conv2d(&d / 0, h, h, 1, 1, 0), conv2d(&d / 2, h, h, 1, 1, 0))
            })
            .collect();
        let out = zero_conv1x1(p / (cfg.n_residual + 1), h, z);
        UpdateNet {
            perceive,
            blocks,
            out,
            elu_after_perceive: false,
        }
    }

    /// The last layer's weight [Z, hidden, 1, 1]: row `c` is what a step writes into state
    /// channel `c` (`widen` gives a widened model's new channels their first writes here).
    pub fn output_weight(&self) -> &Tensor {
        &self.out.ws
    }

    /// The convolutions in the order they run.
    fn convs(&self) -> impl Iterator<Item = &nn::Conv2D> {
        std::iter::once(&self.perceive)
            .chain(self.blocks.iter().flat_map(|(a, b)| [a, b]))
            .chain(std::iter::once(&self.out))
    }

    /// Multiply-adds per cell of one forward pass, counted from the weights: every
    /// convolution has stride 1 and keeps the grid, so each weight is used once per cell
    /// (biases and the ELUs left out). What `vnca bench` divides its hot loop's time by.
    pub fn macs_per_cell(&self) -> i64 {
        self.convs().map(|c| c.ws.numel() as i64).sum()
    }

    /// Every weight and bias, in a fixed order (for the recomputing backward pass, which
    /// asks autograd for their gradients step by step).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.convs()
            .flat_map(|c| {
                std::iter::once(c.ws.shallow_clone())
                    .chain(c.bs.as_ref().map(Tensor::shallow_clone))
            })
            .collect()
    }

    /// state: [N, Z, H, W] -> update: [N, Z, H, W]. The residual net has no nonlinearity
    /// between the 3x3 convolution and the first block, as in the reference.
    ///
    /// Speed: the NCA keeps its state channels-last (NCHW shape, NHWC strides); libtorch's
    /// oneDNN convolutions then run channels-last end to end, the output keeps that layout,
    /// and no step pays a layout copy. Measured against NCHW and against 1x1 convolutions
    /// as GEMMs on [N*H*W, C] in docs/BENCHMARKS.md: channels-last convolutions won.
    pub fn forward(&self, state: &Tensor) -> Tensor {
        let mut h = self.perceive.forward(state); // [N, hidden, H, W]
        if self.elu_after_perceive {
            h = h.elu();
        }
        for (a, b) in &self.blocks {
            h = b.forward(&a.forward(&h).elu()) + h;
        }
        self.out.forward(&h) // [N, Z, H, W]
    }
}

// ---------------------------------------------------------------------------------------
// The model: encoder, NCA decoder and the likelihood read-out, owning the VarStore.

#[derive(Debug)]
pub struct Vnca {
    pub vs: nn::VarStore,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub cfg: ModelConfig,
}

/// What turns z into the likelihood's parameters: the NCA (a VNCA), or the baseline VAE's
/// deconvolutions (`deconv.rs`), which has no cells to grow, damage or step.
#[derive(Debug)]
pub enum Decoder {
    Nca(Nca),
    Deconv(Deconv),
}

/// q(z|x) of a batch.
pub struct Posterior {
    pub mu: Tensor,        // [B, Z]
    pub log_sigma: Tensor, // [B, Z]
}

impl Posterior {
    /// Reparameterised samples z = mu + sigma * eps: eps [B, K, Z] -> z [B, K, Z].
    pub fn sample_with(&self, eps: &Tensor) -> Tensor {
        self.mu.unsqueeze(1) + self.log_sigma.exp().unsqueeze(1) * eps
    }
}

impl Vnca {
    /// A freshly initialised model (PyTorch default init, zeroed last update layer).
    /// Initialisation draws from libtorch's generator, seeded here for reproducibility.
    pub fn new(cfg: &ModelConfig, device: Device, seed: u64) -> Self {
        // libtorch's generator is global: two models built at once in one process (tests
        // run in threads; serve loads models) would interleave their draws. One at a time.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let encoder = Encoder::new(&(&root / "encoder"), cfg);
        let decoder = match cfg.decoder {
            DecoderKind::Deconv => Decoder::Deconv(Deconv::new(&(&root / "decoder"), cfg)),
            _ => Decoder::Nca(Nca::new(&(&root / "nca"), cfg)),
        };
        Vnca {
            vs,
            encoder,
            decoder,
            cfg: cfg.clone(),
        }
    }

    /// The NCA decoder, None for the baseline VAE.
    pub fn as_nca(&self) -> Option<&Nca> {
        match &self.decoder {
            Decoder::Nca(nca) => Some(nca),
            Decoder::Deconv(_) => None,
        }
    }

    /// The NCA decoder of a VNCA. Commands that grow, damage or step cells refuse the
    /// baseline VAE up front (`require_nca`), so reaching here without one is a bug.
    pub fn nca(&self) -> &Nca {
        self.as_nca()
            .expect("an NCA model (require_nca refuses the baseline VAE)")
    }

    /// An error for commands that need cells (growth, damage, the web page) when this is
    /// the baseline VAE.
    pub fn require_nca(&self, what: &str) -> anyhow::Result<()> {
        if self.as_nca().is_none() {
            anyhow::bail!(
                "{what} needs a neural cellular automaton, and this model (decoder = \"deconv\") is the baseline VAE, which has none"
            );
        }
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Every parameter by name, in name order (what the optimiser and checkpoints walk).
    pub fn params(&self) -> Params {
        self.vs.variables().into_iter().collect()
    }

    /// Total number of scalar parameters (6,585,088 for the paper's MNIST model).
    pub fn n_parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// x: [B, C, S, S] in [0, 1] -> q(z|x).
    pub fn encode(&self, x: &Tensor) -> Posterior {
        let (mu, log_sigma) = self.encoder.forward(x);
        Posterior { mu, log_sigma }
    }

    /// z: [N, Z] -> final cell states [N, Z, S, S].
    /// For the baseline VAE: Bernoulli logits [N, 1, S, S], the channel read from states.
    pub fn decode(&self, z: &Tensor, noise: &mut dyn NoiseSource) -> Tensor {
        match &self.decoder {
            Decoder::Nca(nca) => nca.grow(z, noise, &mut |_| {}),
            Decoder::Deconv(deconv) => deconv.forward(z),
        }
    }

    /// z: [N, Z] -> final states [N, Z, S, S], row i of a non-doubling model running
    /// `row_steps[i]` steps (one T per image in evaluation); doubling models ignore it.
    pub fn decode_rows(
        &self,
        z: &Tensor,
        row_steps: Option<&[usize]>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor {
        match row_steps {
            Some(steps) => self.nca().grow_rows(&self.nca().seed(z), steps, noise),
            None => self.decode(z, noise),
        }
    }

    /// log p(x|z) of final states against images: [N, Z, S, S], [N, C, S, S] -> [N].
    pub fn log_likelihood(&self, state: &Tensor, x: &Tensor) -> Tensor {
        match self.cfg.likelihood {
            LikelihoodKind::Bernoulli => bernoulli::log_prob(&bernoulli::logits(state), x),
            LikelihoodKind::Dml => logistic_mixture::log_prob(state, x, self.cfg.n_mix),
        }
    }

    /// The picture of a state: the likelihood's mean, [N, Z, H, W] -> [N, C, H, W] in [0, 1].
    pub fn render_mean(&self, state: &Tensor) -> Tensor {
        match self.cfg.likelihood {
            LikelihoodKind::Bernoulli => bernoulli::mean(&bernoulli::logits(state)),
            // The reference's figures show the average of 100 samples; a fixed noise seed
            // keeps the picture of a state deterministic.
            LikelihoodKind::Dml => logistic_mixture::sample_mean(
                state,
                self.cfg.n_mix,
                100,
                &mut crate::noise::Noise::new(0),
            ),
        }
    }

    /// A state [N, Z, h, w] rendered (the likelihood's mean) and centred on a black
    /// canvas of the final size, as the growth figures and the web page show a grid that
    /// is still growing: -> [N, C, size, size] in [0, 1].
    pub fn render_centred(&self, state: &Tensor, size: i64) -> Tensor {
        crate::dataset::pad_centred(&self.render_mean(state), size)
    }

    /// Draws z ~ N(0, I) and grows the images: -> final states [n, Z, S, S].
    pub fn sample_prior(&self, n: i64, noise: &mut dyn NoiseSource) -> Tensor {
        let z = noise.normal(&[n, self.cfg.z_dim]).to_device(self.device());
        self.decode(&z, noise)
    }
}
