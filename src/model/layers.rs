//! Layer constructors with PyTorch's default initialisation, so that a model built here
//! starts from the same distribution as the reference (PAPER.md 3.7).
use tch::nn;

/// PyTorch's default for Conv2d/Linear: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
/// (kaiming_uniform with a = sqrt(5) reduces to exactly this bound for the weight.)
pub fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Conv2d(c_in, c_out, k, stride, padding)` with bias and PyTorch's default init.
pub fn conv2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
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
pub fn zero_conv1x1(p: nn::Path, c_in: i64, c_out: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, 1, cfg)
}

/// `nn.Linear(d_in, d_out)` with PyTorch's default init.
pub fn linear(p: nn::Path, d_in: i64, d_out: i64) -> nn::Linear {
    let init = torch_default_init(d_in);
    let cfg = nn::LinearConfig {
        ws_init: init,
        bs_init: Some(init),
        bias: true,
    };
    nn::linear(p, d_in, d_out, cfg)
}
