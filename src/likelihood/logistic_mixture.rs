//! Discretized logistic mixture p(x|z) for RGB images, PixelCNN++'s "DML" (docs/REFERENCE.md §3).
//!
//! Each pixel is a mixture of K logistics over the three colour channels, with the
//! reference's autoregressive coupling inside a pixel: G's mean moves with R, B's with R
//! and G. The parameters are the first 10K channels of the final cell state, laid out per
//! pixel exactly as pixel-cnn-pp's `discretized_mix_logistic_loss` reads them (channel-last):
//! `[0, K)` mixture logits, then 9K values viewed as (3 colours, 3K), where colour c holds
//! `[0, K)` means, `[K, 2K)` log-scales and `[2K, 3K)` raw coupling coefficients. The
//! coefficients sit in the R slot (alpha: G|R), the G slot (beta: B|R) and the B slot
//! (gamma: B|G). Data in {0, 1/255, ..., 1} is rescaled to [-1, 1], where a bin is 2/255 wide.
use crate::noise::NoiseSource;
use tch::{Kind, Tensor};

/// State channels per mixture component: 1 logit + 3 x (mean, log-scale, coefficient).
pub const CHANNELS_PER_MIX: i64 = 10;

/// Half a bin in the [-1, 1] scale.
const HALF_BIN: f64 = 1.0 / 255.0;
/// The reference floors log-scales here, so a component can't become a spike whose
/// log-density gradients blow up.
const MIN_LOG_SCALE: f64 = -7.0;
/// |x'| beyond this is the first or last level (0 or 255), whose bin extends to infinity.
const EDGE: f64 = 0.999;
/// Below this bin mass the CDF difference is too imprecise (in float32) to take its log;
/// the reference switches to the density at the bin centre times the bin width.
const MIN_BIN_MASS: f64 = 1e-5;
/// Uniform draws are kept inside (U_EPS, 1 - U_EPS) so the Gumbel and logistic
/// transforms stay finite, as the reference's `uniform_(1e-5, 1 - 1e-5)`.
const U_EPS: f64 = 1e-5;

/// The mixture's parameters, channel-last per pixel.
struct Mixture {
    logits: Tensor, // [N, H, W, K]
    means: Tensor,  // [N, H, W, 3, K]
    log_s: Tensor,  // [N, H, W, 3, K], clamped >= MIN_LOG_SCALE
    coeffs: Tensor, // [N, H, W, 3, K], tanh'd: alpha, beta, gamma in the R, G, B slots
}

fn unpack(params: &Tensor, n_mix: i64) -> Mixture {
    let size = params.size();
    assert!(n_mix >= 1, "n_mix must be >= 1, got {n_mix}");
    assert!(
        size.len() == 4 && size[1] >= CHANNELS_PER_MIX * n_mix,
        "logistic mixture params must be [N, >= {}, H, W], got {size:?}",
        CHANNELS_PER_MIX * n_mix
    );
    let (n, h, w, k) = (size[0], size[2], size[3], n_mix);
    // permute + reshape rather than view: the state may be in any memory layout.
    let p = params
        .narrow(1, 0, CHANNELS_PER_MIX * k)
        .permute([0, 2, 3, 1]); // [N, H, W, 10K]
    let rest = p.narrow(3, k, 9 * k).reshape([n, h, w, 3, 3 * k]);
    Mixture {
        logits: p.narrow(3, 0, k),
        means: rest.narrow(4, 0, k),
        log_s: rest.narrow(4, k, k).clamp_min(MIN_LOG_SCALE),
        coeffs: rest.narrow(4, 2 * k, k).tanh(),
    }
}

/// log p(x|params) summed over pixels: params [N, >=10K, H, W] (any memory layout),
/// x [N, 3, H, W] in [0,1] -> [N]. Differentiable w.r.t. params; float32 or float64
/// (x is cast to the kind of params).
pub fn log_prob(params: &Tensor, x: &Tensor, n_mix: i64) -> Tensor {
    let m = unpack(params, n_mix);
    let (n, h, w) = (m.logits.size()[0], m.logits.size()[1], m.logits.size()[2]);
    assert_eq!(x.size(), [n, 3, h, w], "x must be [N, 3, H, W] like params");
    let x = (x.to_kind(params.kind()).to_device(params.device()) * 2.0 - 1.0)
        .permute([0, 2, 3, 1])
        .unsqueeze(-1); // [N, H, W, 3, 1]
    let (r, g) = (x.narrow(3, 0, 1), x.narrow(3, 1, 1)); // [N, H, W, 1, 1]
    let coeff = |c: i64| m.coeffs.narrow(3, c, 1); // [N, H, W, 1, K]
    let mean = |c: i64| m.means.narrow(3, c, 1);
    // Each channel's mean conditioned on the observed earlier channels of the pixel.
    let mu = Tensor::cat(
        &[
            mean(0),
            mean(1) + coeff(0) * &r,
            mean(2) + coeff(1) * &r + coeff(2) * &g,
        ],
        3,
    ); // [N, H, W, 3, K]
    let centered = &x - mu;
    let inv_s = (-&m.log_s).exp();
    let plus_in = (&centered + HALF_BIN) * &inv_s;
    let min_in = (&centered - HALF_BIN) * &inv_s;
    let mid_in = &centered * &inv_s;

    // Bin mass sigmoid(plus_in) - sigmoid(min_in). Above the mean both terms approach 1
    // and float32 cancels; there the equal sigmoid(-min_in) - sigmoid(-plus_in) is
    // taken, whose terms are small and exact. Same value, so the same branch choice.
    let mass_below = plus_in.sigmoid() - min_in.sigmoid();
    let mass_above = (-&min_in).sigmoid() - (-&plus_in).sigmoid();
    let mass = mass_above.where_self(&mid_in.gt(0.0), &mass_below);
    let log_mass = mass.clamp_min(1e-12).log();
    // log(pdf(centre) * bin width) in the [0, 255] scale: pdf in x' times 2/255 = 1/127.5.
    let log_mid = &mid_in - &m.log_s - mid_in.softplus() * 2.0 - 127.5f64.ln();
    let interior = log_mass.where_self(&mass.gt(MIN_BIN_MASS), &log_mid);
    // Level 0 takes all mass below its upper edge: log sigmoid(plus_in); level 255 all
    // mass above its lower edge: log(1 - sigmoid(min_in)). Both via softplus, stably.
    let lowest = -(-&plus_in).softplus();
    let highest = -min_in.softplus();
    let per_channel = lowest.where_self(&x.lt(-EDGE), &highest.where_self(&x.gt(EDGE), &interior)); // [N, H, W, 3, K]

    let per_component = per_channel.sum_dim_intlist([3i64].as_slice(), false, None::<Kind>)
        + m.logits.log_softmax(-1, None::<Kind>); // [N, H, W, K]
    per_component
        .logsumexp([-1i64].as_slice(), false) // [N, H, W]
        .sum_dim_intlist([1i64, 2].as_slice(), false, None::<Kind>)
}

/// One sample per image in [0,1]: -> [N, 3, H, W], in the kind and on the device of
/// params, not rounded to 8 bits and not differentiable. Uniform draws come from
/// `noise.uniform`, in this order: [N, H, W, K] for the Gumbel-max choice of component,
/// then [N, H, W, 3] for the logistic draws of R, G, B.
pub fn sample(params: &Tensor, n_mix: i64, noise: &mut dyn NoiseSource) -> Tensor {
    let params = params.detach();
    let m = unpack(&params, n_mix);
    let size = m.logits.size();
    let (n, h, w) = (size[0], size[1], size[2]);
    let (kind, device) = (params.kind(), params.device());
    let mut uniform = |shape: &[i64]| {
        noise.uniform(shape).to_kind(kind).to_device(device) * (1.0 - 2.0 * U_EPS) + U_EPS
    };

    // Gumbel-max: argmax_k (logit_k + Gumbel noise) is a draw from softmax(logits).
    let u = uniform(&[n, h, w, n_mix]);
    let gumbel = -(-u.log()).log();
    let pick = (&m.logits + gumbel).argmax(-1, true); // [N, H, W, 1]
    let index = pick.unsqueeze(-1).expand([n, h, w, 3, 1], false);
    let select = |t: &Tensor| t.gather(4, &index, false).squeeze_dim(4); // [N, H, W, 3]
    let (mu, log_s, coeffs) = (select(&m.means), select(&m.log_s), select(&m.coeffs));

    // Inverse-CDF logistic draws, log(u) - log(1 - u), for the three channels at once.
    let u = uniform(&[n, h, w, 3]);
    let v = mu + log_s.exp() * (u.log() - (-&u).log1p()); // [N, H, W, 3]
                                                          // The coupling uses the clamped earlier channels, as the reference does.
    let ch = |t: &Tensor, c: i64| t.select(3, c); // [N, H, W]
    let r = ch(&v, 0).clamp(-1.0, 1.0);
    let g = (ch(&v, 1) + ch(&coeffs, 0) * &r).clamp(-1.0, 1.0);
    let b = (ch(&v, 2) + ch(&coeffs, 1) * &r + ch(&coeffs, 2) * &g).clamp(-1.0, 1.0);
    (Tensor::stack(&[r, g, b], 1) + 1.0) / 2.0 // [N, 3, H, W]
}

/// Average of `n` samples (the figures' "mean"; the reference uses n = 100): -> [N, 3, H, W].
/// Monte Carlo, as in the reference: with the clamping to [0, 1] and the coupling
/// between channels, the mean has no simple closed form.
pub fn sample_mean(params: &Tensor, n_mix: i64, n: i64, noise: &mut dyn NoiseSource) -> Tensor {
    assert!(n >= 1, "sample_mean needs n >= 1, got {n}");
    let mut total = sample(params, n_mix, noise);
    for _ in 1..n {
        total += sample(params, n_mix, noise);
    }
    total / n as f64
}
