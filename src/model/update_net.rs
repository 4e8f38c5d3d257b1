//! The update network shared by every cell and every step (PAPER.md 3.5). Two kinds:
//! - residual (every doubling model, non-doubling CelebA): a 3x3 convolution (the only
//!   place cells see their neighbours), residual blocks of 1x1 convolutions, and a
//!   zero-initialised 1x1 convolution back to the state size;
//! - simple (non-doubling MNIST): 3x3 convolution, ELU, zero-initialised 1x1 convolution
//!   without bias.
//!
//! Either way the last layer starts at zero, so the NCA is the identity at initialisation.
use super::layers::{conv2d, zero_conv1x1};
use crate::config::{ModelConfig, UpdateNetKind};
use tch::{nn, nn::Module, Tensor};

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

    /// Every weight and bias, in a fixed order (for the recomputing backward pass, which
    /// asks autograd for their gradients step by step).
    pub fn parameters(&self) -> Vec<Tensor> {
        let convs = std::iter::once(&self.perceive)
            .chain(self.blocks.iter().flat_map(|(a, b)| [a, b]))
            .chain(std::iter::once(&self.out));
        convs
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
