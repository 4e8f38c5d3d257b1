//! The baseline VAE's decoder (`model.decoder = "deconv"`, preset `mnist-vae-baseline`): a
//! conventional deconvolutional decoder mirroring the encoder, in place of the NCA, with
//! the same encoder, likelihood, data and evaluation, so that the two differ in the decoder
//! alone (issue 14 §4; the [Re] reproduction's baseline VAE is of this kind).
//!
//! z [N, Z] -> Linear -> ELU -> [N, 16w, 2, 2] -> 4 x (ConvTranspose 5x5, stride 2,
//! padding 2, output padding 1: the side doubles; channels halve; ELU) -> [N, w, 32, 32]
//! -> ConvTranspose 5x5, stride 1, padding 2 -> Bernoulli logits [N, 1, 32, 32], the
//! channel the NCA's likelihood reads from its cell states. w = `encoder_width`, the
//! number of doublings log2(image_size) - 1 as the doubling NCA's.
use super::{linear, torch_default_init};
use crate::config::ModelConfig;
use tch::{nn, nn::Module, Tensor};

#[derive(Debug)]
pub struct Deconv {
    fc: nn::Linear,
    ups: Vec<nn::ConvTranspose2D>,
    out: nn::ConvTranspose2D,
    /// Channels of the first grid (16w for 32x32).
    c0: i64,
}

/// `nn.ConvTranspose2d(c_in, c_out, k, stride, padding, output_padding)` with PyTorch's
/// default init (its fan-in is `c_out * k * k`: the weight is [c_in, c_out, k, k]).
fn conv_transpose(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    stride: i64,
    out_pad: i64,
) -> nn::ConvTranspose2D {
    let init = torch_default_init(c_out * 25);
    let cfg = nn::ConvTransposeConfig {
        stride,
        padding: 2,
        output_padding: out_pad,
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv_transpose2d(p, c_in, c_out, 5, cfg)
}

impl Deconv {
    /// `decoder.0` (linear), `decoder.1` .. `decoder.4` (doubling transposed convolutions),
    /// `decoder.5` (the output layer).
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let n_up = cfg.n_doublings() as i64;
        let c0 = cfg.encoder_width << n_up;
        let fc = linear(p / 0, cfg.z_dim, c0 * 4);
        let ups = (0..n_up)
            .map(|i| conv_transpose(p / (i + 1), c0 >> i, c0 >> (i + 1), 2, 1))
            .collect();
        let out = conv_transpose(p / (n_up + 1), cfg.encoder_width, 1, 1, 0);
        Deconv { fc, ups, out, c0 }
    }

    /// z [N, Z] -> logits [N, 1, S, S].
    pub fn forward(&self, z: &Tensor) -> Tensor {
        let n = z.size()[0];
        let mut h = self.fc.forward(z).elu().view([n, self.c0, 2, 2]); // [N, 16w, 2, 2]
        for up in &self.ups {
            h = up.forward(&h).elu(); // side x2, channels / 2
        }
        self.out.forward(&h) // [N, 1, S, S]
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn shapes_and_parameter_count() {
        let cfg = Config::preset("mnist-vae-baseline").unwrap().model;
        let model = cfg.init(tch::Device::Cpu, 0);
        let z = tch::Tensor::zeros([3, cfg.z_dim], (tch::Kind::Float, tch::Device::Cpu));
        let d = model.decode(&z, &mut crate::noise::Noise::new(0));
        assert_eq!(d.size(), [3, 1, 32, 32]);
        // w = 16, Z = 32: linear 32 -> 256 x 4, then 256 -> 128 -> 64 -> 32 -> 16 -> 1.
        let decoder: i64 = model
            .params()
            .iter()
            .filter(|(k, _)| k.starts_with("decoder."))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        let convt = |i: i64, o: i64| i * o * 25 + o;
        let want = 32 * 1024
            + 1024
            + convt(256, 128)
            + convt(128, 64)
            + convt(64, 32)
            + convt(32, 16)
            + convt(16, 1);
        assert_eq!(decoder, want);
        // No cells: the commands that grow, damage or step them refuse it in one line.
        let e = model.require_nca("vnca serve").unwrap_err().to_string();
        assert!(
            e.starts_with("vnca serve needs a neural cellular automaton"),
            "{e}"
        );
        assert!(model.as_nca().is_none());
    }
}
