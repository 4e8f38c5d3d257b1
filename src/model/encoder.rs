//! q(z|x): five 5x5 convolutions (strides 1,2,2,2,2, ELU) and a linear layer to 2Z
//! numbers, read as (mu, log sigma) as in every VNCA revision of the reference
//! (the [Re] and the baseline VAEs use log-variance instead; PAPER.md 3.1, 3.6).
use super::layers::{conv2d, linear};
use crate::config::ModelConfig;
use tch::{nn, nn::Module, Tensor};

#[derive(Debug)]
pub struct Encoder {
    convs: Vec<nn::Conv2D>,
    fc: nn::Linear,
    z_dim: i64,
    clip_mu: Option<f64>,
    clip_log_sigma: Option<f64>,
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
        }
    }

    /// x: [B, C, H, W] in {0,1} -> (mu [B, Z], log_sigma [B, Z]).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let mut h = x.shallow_clone();
        for conv in &self.convs {
            h = conv.forward(&h).elu(); // [B, w*2^i, H/2^i, W/2^i]
        }
        // [B, 2Z]; under bf16 autocast (src/precision.rs) the linear layer yields bf16:
        // back to the input's float kind, so the KL and z are computed in float32.
        let q = self.fc.forward(&h.flatten(1, -1)).to_kind(x.kind());
        let mut mu = q.narrow(1, 0, self.z_dim);
        let mut log_sigma = q.narrow(1, self.z_dim, self.z_dim);
        // The beta = 100 CelebA run clipped the encoder's outputs (PAPER.md 4.4).
        if let Some(c) = self.clip_mu {
            mu = mu.clamp(-c, c);
        }
        if let Some(c) = self.clip_log_sigma {
            log_sigma = log_sigma.clamp(-c, c);
        }
        (mu, log_sigma)
    }
}
