//! A trained model as sessions share it.
//!
//! libtorch tensors are `Send` but not `Sync`, so a model cannot be shared between session
//! threads; each session builds its own copy of a model from a [`ModelSnapshot`] (plain
//! CPU floats, shared read-only) the first time it uses that model.
use super::protocol::ModelInfo;
use crate::checkpoint::to_f32_vec;
use crate::config::{Config, DecoderKind};
use crate::model::Vnca;
use tch::{Device, Kind, Tensor};

/// A trained model's weights and config, shareable between threads, with what the page
/// needs to know about it.
pub struct ModelSnapshot {
    pub name: String,
    pub cfg: Config,
    weights: Vec<(String, Vec<i64>, Vec<f32>)>,
    /// The colour of an erased (all-zero) cell, so that the page can draw an erase at
    /// once, before the server's frame arrives.
    erased_rgb: [u8; 3],
}

impl ModelSnapshot {
    /// Copies every variable of `model` to plain CPU memory.
    pub fn from_model(name: impl Into<String>, model: &Vnca, cfg: &Config) -> Self {
        let mut weights: Vec<(String, Vec<i64>, Vec<f32>)> = model
            .vs
            .variables()
            .into_iter()
            .map(|(k, t)| (k, t.size(), to_f32_vec(&t)))
            .collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        let zero = Tensor::zeros([1, cfg.model.z_dim, 1, 1], (Kind::Float, model.device())); // [1, Z, 1, 1]
        let rgb = to_f32_vec(&tch::no_grad(|| model.render_mean(&zero))); // C values
        let grey = |c: usize| (rgb[c.min(rgb.len() - 1)].clamp(0.0, 1.0) * 255.0).round() as u8;
        ModelSnapshot {
            name: name.into(),
            cfg: cfg.clone(),
            weights,
            erased_rgb: [grey(0), grey(1), grey(2)],
        }
    }

    /// A model on `device` with these weights (for one session thread).
    pub fn instantiate(&self, device: Device) -> anyhow::Result<Vnca> {
        let model = Vnca::new(&self.cfg.model, device, 0);
        let mut vars = model.vs.variables();
        anyhow::ensure!(
            vars.len() == self.weights.len(),
            "model `{}`: {} variables, snapshot has {}",
            self.name,
            vars.len(),
            self.weights.len()
        );
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, shape, values) in &self.weights {
                let Some(var) = vars.get_mut(name) else {
                    anyhow::bail!("model `{}` has no variable `{name}`", self.name);
                };
                anyhow::ensure!(&var.size() == shape, "shape of `{name}`");
                let src = Tensor::from_slice(values).view(shape.as_slice());
                var.copy_(&src.to_device(device).to_kind(var.kind()));
            }
            Ok(())
        })?;
        Ok(model)
    }

    /// Whether the model was trained to regrow damage (pool and damage training, the
    /// paper's section 4.6): only then does the page call NCA steps after growth
    /// "healing", and only then does the session run on by itself after growth.
    pub fn heals(&self) -> bool {
        self.cfg.train.pool.is_some()
    }

    /// The side of the drawings this model encodes: the side of its data set's images
    /// (28 for binarized MNIST, padded to the grid as in training), or None for a model
    /// whose data is not binarized MNIST (the drawing pad makes binary digits).
    pub fn draw_size(&self) -> Option<usize> {
        (self.cfg.data.dataset == "binarized-mnist" && self.cfg.model.channels == 1)
            .then_some(super::drawing::MNIST_SIDE)
    }

    pub fn info(&self) -> ModelInfo {
        let m = &self.cfg.model;
        ModelInfo {
            name: self.name.clone(),
            config: self.cfg.name.clone(),
            z_dim: m.z_dim,
            image_size: m.image_size,
            channels: m.channels,
            decoder: match m.decoder {
                DecoderKind::Doubling => "doubling",
                DecoderKind::NonDoubling => "non-doubling",
                DecoderKind::Deconv => "deconv",
            },
            growth_steps: growth_steps(&self.cfg),
            heals: self.heals(),
            erased_rgb: self.erased_rgb,
            draw_size: self.draw_size(),
        }
    }
}

/// Updates of one growth: for the doubling decoder steps_per_stage x (doublings + 1) NCA
/// steps plus the doublings; for the non-doubling one the most steps it may draw.
pub fn growth_steps(cfg: &Config) -> usize {
    match cfg.model.decoder {
        DecoderKind::Doubling => {
            cfg.model.steps_per_stage * (cfg.n_doublings() + 1) + cfg.n_doublings()
        }
        DecoderKind::NonDoubling => cfg.model.max_steps,
        DecoderKind::Deconv => 0,
    }
}
