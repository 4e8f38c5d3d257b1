//! The whole model: encoder, NCA decoder and the likelihood read-out, owning the
//! VarStore whose names match the reference's `state_dict` (PAPER.md 3.1).
use super::encoder::Encoder;
use super::nca::Nca;
use crate::config::{LikelihoodKind, ModelConfig};
use crate::likelihood::{bernoulli, logistic_mixture};
use crate::noise::NoiseSource;
use tch::{nn, Device, Tensor};

#[derive(Debug)]
pub struct Vnca {
    pub vs: nn::VarStore,
    pub encoder: Encoder,
    pub nca: Nca,
    pub cfg: ModelConfig,
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
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let encoder = Encoder::new(&(&root / "encoder"), cfg);
        let nca = Nca::new(&(&root / "nca"), cfg);
        Vnca {
            vs,
            encoder,
            nca,
            cfg: cfg.clone(),
        }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Every parameter by name, in name order (what the optimiser and checkpoints walk).
    pub fn params(&self) -> crate::train::optim::Params {
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
    pub fn decode(&self, z: &Tensor, noise: &mut dyn NoiseSource) -> Tensor {
        self.nca.grow(z, noise, &mut |_| {})
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
            Some(steps) => self.nca.grow_rows(&self.nca.seed(z), steps, noise),
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

    /// Draws z ~ N(0, I) and grows the images: -> final states [n, Z, S, S].
    pub fn sample_prior(&self, n: i64, noise: &mut dyn NoiseSource) -> Tensor {
        let z = noise.normal(&[n, self.cfg.z_dim]).to_device(self.device());
        self.decode(&z, noise)
    }
}
