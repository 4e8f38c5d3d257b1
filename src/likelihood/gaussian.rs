//! Diagonal Gaussians: q(z|x) = N(mu, exp(log_sigma)^2) and the prior p(z) = N(0, I).
//! Formulas as in `torch.distributions.Normal` and its analytic KL (arXiv 2201.12360 Sec. 2; docs/REFERENCE.md §3).
use tch::{Kind, Tensor};

const LOG_SQRT_2PI: f64 = 0.918_938_533_204_672_7;

/// Sum over the last dim of log N(z; mu, sigma^2). z: [..., Z] -> [...].
pub fn log_prob(z: &Tensor, mu: &Tensor, log_sigma: &Tensor) -> Tensor {
    let d = (z - mu) * (-log_sigma).exp();
    (d.square() * -0.5 - log_sigma - LOG_SQRT_2PI).sum_dim_intlist(-1, false, None::<Kind>)
}

/// Sum over the last dim of log N(z; 0, I). z: [..., Z] -> [...].
pub fn log_prob_std(z: &Tensor) -> Tensor {
    (z.square() * -0.5 - LOG_SQRT_2PI).sum_dim_intlist(-1, false, None::<Kind>)
}

/// KL(N(mu, sigma^2) || N(0, I)) summed over Z: [B, Z] -> [B].
/// Per dimension: -log sigma + (sigma^2 + mu^2)/2 - 1/2.
pub fn kl_std(mu: &Tensor, log_sigma: &Tensor) -> Tensor {
    let per_dim = -log_sigma + ((log_sigma * 2.0).exp() + mu.square()) * 0.5 - 0.5;
    per_dim.sum_dim_intlist(-1, false, None::<Kind>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_expected_log_ratio() {
        // Monte Carlo check of the closed form: KL = E_q[log q - log p].
        let mu = Tensor::from_slice(&[0.5f64, -1.0]).view([1, 2]);
        let ls = Tensor::from_slice(&[-0.3f64, 0.2]).view([1, 2]);
        let n = 400_000;
        let eps = Tensor::randn([n, 2], (Kind::Double, tch::Device::Cpu));
        let z = &mu + &eps * ls.exp();
        let mc = (log_prob(&z, &mu, &ls) - log_prob_std(&z))
            .mean(Kind::Double)
            .double_value(&[]);
        let kl = kl_std(&mu, &ls).double_value(&[0]);
        assert!((mc - kl).abs() < 0.01, "{mc} vs {kl}");
        // And log_prob at the mean of a unit Gaussian is -Z/2 log(2 pi).
        let lp =
            log_prob_std(&Tensor::zeros([2], (Kind::Double, tch::Device::Cpu))).double_value(&[]);
        assert!((lp + 2.0 * LOG_SQRT_2PI).abs() < 1e-12);
    }
}
