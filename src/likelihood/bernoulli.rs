//! Bernoulli p(x|z) with logits = state channel 0 of every cell (docs/REFERENCE.md §3).
use tch::{Kind, Reduction, Tensor};

/// The logits: channel 0 of the final state. [N, Z, H, W] -> [N, 1, H, W].
pub fn logits(state: &Tensor) -> Tensor {
    state.narrow(1, 0, 1)
}

/// log p(x|z) summed over pixels: logits [N, 1, H, W], x [N, 1, H, W] in {0,1} -> [N].
/// Computed as -BCE-with-logits, the same stable form as `torch.distributions.Bernoulli`.
pub fn log_prob(logits: &Tensor, x: &Tensor) -> Tensor {
    let per_pixel =
        logits.binary_cross_entropy_with_logits::<Tensor>(x, None, None, Reduction::None);
    -per_pixel.sum_dim_intlist([1i64, 2, 3].as_slice(), false, None::<Kind>)
}

/// The distribution's mean, sigmoid(logits), shown as grey-level images: [N, 1, H, W].
pub fn mean(logits: &Tensor) -> Tensor {
    logits.sigmoid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_closed_form() {
        let l = Tensor::from_slice(&[0.0f32, 2.0, -3.0, 30.0]).view([1, 1, 2, 2]);
        let x = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([1, 1, 2, 2]);
        let got = log_prob(&l, &x).double_value(&[0]);
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let want = sig(0.0).ln() + (1.0 - sig(2.0)).ln() + (1.0 - sig(-3.0)).ln() + sig(30.0).ln();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
