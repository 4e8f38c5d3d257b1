//! Adam and global gradient-norm clipping, written out rather than taken from tch so
//! that the moments can be saved in checkpoints (exact resume) and the arithmetic matches
//! PyTorch's `torch.optim.Adam` and `clip_grad_norm_` (docs/REFERENCE.md §2).
use tch::{Kind, Tensor};

/// Parameters in a fixed (name-sorted) order.
pub use crate::model::Params;

#[derive(Debug)]
pub struct Adam {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Number of updates taken (PyTorch's `state['step']`).
    pub step: u64,
    pub m: Params,
    pub v: Params,
}

impl Adam {
    pub fn new(params: &Params, lr: f64, betas: [f64; 2], eps: f64) -> Self {
        let zeros = || -> Params {
            params
                .iter()
                .map(|(k, p)| (k.clone(), p.zeros_like()))
                .collect()
        };
        Adam {
            lr,
            betas,
            eps,
            step: 0,
            m: zeros(),
            v: zeros(),
        }
    }

    /// Continue from saved moments after `step` updates (a resumed run).
    pub fn restore(&mut self, m: Params, v: Params, step: u64) {
        tch::no_grad(|| {
            for (name, saved) in m {
                self.m
                    .get_mut(&name)
                    .expect("moment for every parameter")
                    .copy_(&saved);
            }
            for (name, saved) in v {
                self.v
                    .get_mut(&name)
                    .expect("moment for every parameter")
                    .copy_(&saved);
            }
        });
        self.step = step;
    }

    /// One update from the parameters' `.grad()`, as PyTorch's single-tensor Adam:
    /// m = lerp(m, g, 1-b1); v = b2 v + (1-b2) g^2;
    /// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
    pub fn update(&mut self, params: &Params) {
        self.step += 1;
        let [b1, b2] = self.betas;
        let t = self.step as i32;
        let step_size = self.lr / (1.0 - b1.powi(t));
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        tch::no_grad(|| {
            for (name, p) in params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let m = self.m.get_mut(name).expect("moment for every parameter");
                let _ = m.lerp_(&g, 1.0 - b1);
                let v = self.v.get_mut(name).expect("moment for every parameter");
                let _ = v.g_mul_scalar_(b2);
                let _ = v.g_add_(&(g.square() * (1.0 - b2)));
                let denom = v.sqrt() / bc2_sqrt + self.eps;
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&(&*m / denom * step_size));
            }
        });
    }
}

/// The global L2 norm of all gradients, then scaling by min(1, max_norm / (norm + 1e-6)),
/// as `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping (it may be
/// non-finite: the caller decides what to do).
pub fn clip_grad_norm(params: &Params, max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .values()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let total = Tensor::stack(&norms, 0)
            .norm()
            .to_kind(Kind::Double)
            .double_value(&[]);
        let coef = (max_norm / (total + 1e-6)).min(1.0);
        if coef < 1.0 && total.is_finite() {
            for g in &grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(coef);
            }
        }
        total
    })
}

/// Reset every gradient to zero before the next backward pass.
pub fn zero_grad(params: &Params) {
    for p in params.values() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_first_steps_match_closed_form() {
        // With a constant gradient g, Adam's first update is exactly -lr * sign(g)
        // (up to eps), whatever the betas.
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let params: Params = [("w".to_string(), p.shallow_clone())].into();
        let mut adam = Adam::new(&params, 0.1, [0.9, 0.999], 1e-8);
        let loss = (&p * Tensor::from_slice(&[3.0f32, -0.5])).sum(Kind::Float);
        loss.backward();
        adam.update(&params);
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6,
            "{got:?}"
        );
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let params: Params = [("w".to_string(), p.shallow_clone())].into();
        (&p * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let norm = clip_grad_norm(&params, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let g = Vec::<f32>::try_from(&p.grad()).unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5,
            "{g:?}"
        );
    }
}
