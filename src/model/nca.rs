//! The NCA decoders (docs/REFERENCE.md §2): one growth loop, two ways to grow, and the
//! damage that the non-doubling model learns to regrow from.
//!
//! - Doubling (the reference's `MitosisNCA`): z is copied into every cell of a 2x2 grid;
//!   the cells run `steps_per_stage` NCA steps; then every cell divides into a 2x2 block
//!   of copies of itself and the cells run again, until the grid has the image's size
//!   (2 -> 4 -> 8 -> 16 -> 32: 40 steps).
//! - Non-doubling (the reference's `NCA`, for damage recovery): z is copied into every
//!   cell of the full grid and the cells run T steps, T ~ U{min_steps..max_steps}: in
//!   training drawn once per growth and shared by the batch (`grow`), in evaluation once
//!   per image (`grow_rows`), as the reference.
//!
//! A step is `state + update(state) * mask`, the mask choosing which cells update
//! (all of them when p_update = 1, in which case no mask is drawn at all).
use super::UpdateNet;
use crate::config::{DecoderKind, ModelConfig};
use crate::noise::NoiseSource;
use tch::{nn, Tensor};

#[derive(Debug)]
pub struct Nca {
    pub update_net: UpdateNet,
    growth: Growth,
    p_update: f64,
}

#[derive(Debug, Clone, Copy)]
enum Growth {
    Doubling {
        steps_per_stage: usize,
        n_doublings: usize,
    },
    Grid {
        size: i64,
        min_steps: usize,
        max_steps: usize,
    },
}

/// Erase a `side` x `side` square of cells (every channel set to 0) at (top, left), in
/// place: state [..., Z, H, W].
pub fn erase_(state: &Tensor, top: i64, left: i64, side: i64) {
    let (h, w) = (state.dim() as i64 - 2, state.dim() as i64 - 1);
    let _ = state.narrow(h, top, side).narrow(w, left, side).zero_();
}

/// A copy of `state` [..., Z, H, W] with a `side` x `side` square erased at (top, left).
pub fn damage(state: &Tensor, top: i64, left: i64, side: i64) -> Tensor {
    let s = state.copy();
    erase_(&s, top, left, side);
    s
}

/// Where a `side` x `side` square goes in an `h` x `w` grid, uniformly, from two uniform
/// draws: (top, left).
pub fn random_square(h: i64, w: i64, side: i64, noise: &mut dyn NoiseSource) -> (i64, i64) {
    let u = noise.uniform(&[2]);
    let top = ((u.double_value(&[0]) * (h - side + 1) as f64) as i64).min(h - side);
    let left = ((u.double_value(&[1]) * (w - side + 1) as f64) as i64).min(w - side);
    (top, left)
}

/// A copy of the states [N, Z, H, W] with a `side` x `side` square erased at an
/// independent random place in each (the paper's damage, docs/REFERENCE.md §4.1).
pub fn damage_random(states: &Tensor, side: i64, noise: &mut dyn NoiseSource) -> Tensor {
    let s = states.copy();
    let (h, w) = (s.size()[2], s.size()[3]);
    for i in 0..s.size()[0] {
        let (top, left) = random_square(h, w, side, noise);
        erase_(&s.get(i), top, left, side);
    }
    s
}

/// Each cell becomes a 2x2 block of copies: [N, C, H, W] -> [N, C, 2H, 2W]
/// (`repeat_interleave` twice in the reference; nearest upsampling is the same map).
pub fn double(state: &Tensor) -> Tensor {
    let (h, w) = (state.size()[2], state.size()[3]);
    state.upsample_nearest2d([2 * h, 2 * w], None, None)
}

impl Nca {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let growth = match cfg.decoder {
            DecoderKind::Doubling => Growth::Doubling {
                steps_per_stage: cfg.steps_per_stage,
                n_doublings: cfg.n_doublings(),
            },
            DecoderKind::NonDoubling => Growth::Grid {
                size: cfg.image_size,
                min_steps: cfg.min_steps,
                max_steps: cfg.max_steps,
            },
            DecoderKind::Deconv => unreachable!("the deconv baseline has no NCA (Vnca::new)"),
        };
        Nca {
            update_net: UpdateNet::new(&(p / "update_net"), cfg),
            growth,
            p_update: cfg.p_update,
        }
    }

    /// NCA steps of one growth: 40 for the paper's 32x32 doubling model; the maximum
    /// of the drawn range for the non-doubling model.
    pub fn n_steps(&self) -> usize {
        match self.growth {
            Growth::Doubling {
                steps_per_stage,
                n_doublings,
            } => steps_per_stage * (n_doublings + 1),
            Growth::Grid { max_steps, .. } => max_steps,
        }
    }

    /// The update mask of one step ([N, 1, H, W] on the state's device), or None when
    /// every cell updates (p_update = 1: no draw, no multiply).
    fn draw_mask(&self, state: &Tensor, noise: &mut dyn NoiseSource) -> Option<Tensor> {
        if self.p_update >= 1.0 {
            return None;
        }
        let s = state.size();
        let mask = noise.mask_per_image(&[s[0], 1, s[2], s[3]], self.p_update);
        Some(mask.to_device(state.device()).to_kind(state.kind())) // broadcast over channels
    }

    /// One NCA step with a given mask: [N, Z, H, W] -> [N, Z, H, W].
    pub fn step_masked(&self, state: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let update = self.update_net.forward(state);
        match mask {
            None => state + update,
            Some(m) => state + update * m,
        }
    }

    /// One NCA step: [N, Z, H, W] -> [N, Z, H, W].
    pub fn step(&self, state: &Tensor, noise: &mut dyn NoiseSource) -> Tensor {
        let mask = self.draw_mask(state, noise);
        self.step_masked(state, mask.as_ref())
    }

    /// `k` more NCA steps at the grid's current size (recovery after damage, a grown
    /// model left running): [N, Z, H, W] -> [N, Z, H, W]. `on_state` sees the state after
    /// every step.
    pub fn run_steps(
        &self,
        state: &Tensor,
        k: usize,
        noise: &mut dyn NoiseSource,
        on_state: &mut dyn FnMut(&Tensor),
    ) -> Tensor {
        let mut s = state.shallow_clone();
        for _ in 0..k {
            s = self.step(&s, noise);
            on_state(&s);
        }
        s
    }

    /// The seed grid: z in every cell of a 2x2 grid (doubling) or of the full grid
    /// (non-doubling), [N, Z] -> [N, Z, s, s], with channels-last strides, the layout
    /// every step keeps.
    pub fn seed(&self, z: &Tensor) -> Tensor {
        let s = match self.growth {
            Growth::Doubling { .. } => 2,
            Growth::Grid { size, .. } => size,
        };
        let (n, c) = (z.size()[0], z.size()[1]);
        z.view([n, 1, 1, c])
            .expand([n, s, s, c], false)
            .contiguous()
            .permute([0, 3, 1, 2])
    }

    /// The schedule of one growth: `true` = a doubling, `false` = an NCA step. The
    /// non-doubling model draws its number of steps here (one uniform draw).
    pub fn schedule(&self, noise: &mut dyn NoiseSource) -> Vec<bool> {
        match self.growth {
            Growth::Doubling {
                steps_per_stage,
                n_doublings,
            } => {
                let mut ops = vec![false; steps_per_stage];
                for _ in 0..n_doublings {
                    ops.push(true);
                    ops.extend(std::iter::repeat_n(false, steps_per_stage));
                }
                ops
            }
            Growth::Grid { .. } => vec![false; self.draw_steps(noise).unwrap_or(0)],
        }
    }

    /// The number of steps of one non-doubling growth, T ~ U{min_steps..max_steps}
    /// (inclusive, the reference's `random.randint`), from one uniform draw; None for the
    /// doubling decoder, whose schedule is fixed.
    pub fn draw_steps(&self, noise: &mut dyn NoiseSource) -> Option<usize> {
        let Growth::Grid {
            min_steps,
            max_steps,
            ..
        } = self.growth
        else {
            return None;
        };
        let u = noise.uniform(&[1]).double_value(&[0]);
        let span = (max_steps - min_steps + 1) as f64;
        Some(min_steps + ((u * span) as usize).min(max_steps - min_steps))
    }

    /// Grows the image from z: [N, Z] -> final state [N, Z, S, S]. `on_state` sees the
    /// seed, every step's state and every freshly doubled grid (45 states for 32x32),
    /// for the growth figures; pass `|_| {}` when they are not needed.
    pub fn grow(
        &self,
        z: &Tensor,
        noise: &mut dyn NoiseSource,
        on_state: &mut dyn FnMut(&Tensor),
    ) -> Tensor {
        self.grow_from(&self.seed(z), noise, on_state)
    }

    /// Runs one growth's schedule from a given initial state (a seed, or for the pool
    /// training of the non-doubling model a stored, possibly damaged, final state).
    pub fn grow_from(
        &self,
        state: &Tensor,
        noise: &mut dyn NoiseSource,
        on_state: &mut dyn FnMut(&Tensor),
    ) -> Tensor {
        let mut state = state.shallow_clone();
        on_state(&state);
        for double_here in self.schedule(noise) {
            state = if double_here {
                double(&state)
            } else {
                self.step(&state, noise)
            };
            on_state(&state);
        }
        state
    }

    /// Non-doubling growth in which row i runs `row_steps[i]` steps: the reference's
    /// evaluation draws T once per test image, and a batch of several images (each with
    /// its K importance samples) must not share one draw. Rows run in lock-step up to the
    /// largest count; a row past its own count is frozen (its update multiplied by 0, so
    /// it is exactly the state it reached). When every row is still running, a step is
    /// the plain step, so equal counts give exactly `grow_from`'s states.
    /// state: [N, Z, S, S], row_steps: N counts -> [N, Z, S, S].
    pub fn grow_rows(
        &self,
        state: &Tensor,
        row_steps: &[usize],
        noise: &mut dyn NoiseSource,
    ) -> Tensor {
        let n = state.size()[0];
        assert_eq!(n as usize, row_steps.len(), "one step count per row");
        let mut state = state.shallow_clone();
        let t_max = row_steps.iter().copied().max().unwrap_or(0);
        for t in 0..t_max {
            let mask = self.draw_mask(&state, noise);
            let mask = if row_steps.iter().all(|&s| s > t) {
                mask
            } else {
                let running: Vec<f32> = row_steps.iter().map(|&s| f32::from(s > t)).collect();
                let running = Tensor::from_slice(&running)
                    .view([n, 1, 1, 1])
                    .to_device(state.device())
                    .to_kind(state.kind());
                Some(match mask {
                    Some(m) => m * running,
                    None => running,
                })
            };
            state = self.step_masked(&state, mask.as_ref());
        }
        state
    }

    /// Gradient checkpointing for small-memory GPUs: grows from z without keeping the
    /// autograd graph (only each step's input state and mask), calls `head` on the final
    /// state to get the scalar loss that depends on it, then walks the steps backwards
    /// recomputing one step at a time and asking autograd for that step's vector-Jacobian
    /// product (`run_backward` of `(out * grad).sum()`, which returns the gradients
    /// instead of accumulating them).
    ///
    /// Returns a loss to backpropagate like any other: its value is `head`'s, and its
    /// gradient is the decoder's true one, delivered through a surrogate
    /// `(seed * d seed).sum() + sum_p (p * d p).sum()` (constant gradients, so autograd
    /// hands exactly them to z's graph and to the update net's parameters). Backward of
    /// it, alone or summed with other terms such as the KL, accumulates the same gradients
    /// as one big backward pass, at ~4/3 the compute; memory holds the states instead of
    /// every step's activations.
    pub fn grow_recompute(
        &self,
        z: &Tensor,
        noise: &mut dyn NoiseSource,
        head: &mut dyn FnMut(&Tensor) -> Tensor,
    ) -> Tensor {
        let seed = self.seed(z);
        let mut inputs: Vec<(Tensor, Option<Tensor>)> = Vec::new(); // (step input, mask)
        let schedule = self.schedule(noise);
        let last = tch::no_grad(|| {
            let mut state = seed.detach();
            for &double_here in &schedule {
                state = if double_here {
                    double(&state)
                } else {
                    let mask = self.draw_mask(&state, noise);
                    let next = self.step_masked(&state, mask.as_ref());
                    inputs.push((state, mask));
                    next
                };
            }
            state
        });
        let last = last.detach().set_requires_grad(true);
        let head_loss = head(&last);
        let mut grad = Tensor::run_backward(&[&head_loss], &[&last], false, false)
            .pop()
            .expect("d loss / d final state");
        let params = self.update_net.parameters();
        let mut param_grads: Vec<Tensor> = params.iter().map(Tensor::zeros_like).collect();
        for &double_here in schedule.iter().rev() {
            grad = if double_here {
                // The adjoint of copying each cell into a 2x2 block: sum over the block.
                let s = grad.size();
                grad.view([s[0], s[1], s[2] / 2, 2, s[3] / 2, 2])
                    .sum_dim_intlist([3i64, 5].as_slice(), false, None::<tch::Kind>)
            } else {
                let (input, mask) = inputs.pop().expect("one stored input per step");
                let input = input.set_requires_grad(true);
                let out = self.step_masked(&input, mask.as_ref());
                let vjp = (out * &grad).sum(None::<tch::Kind>);
                let wrt: Vec<&Tensor> = params.iter().chain([&input]).collect();
                let mut grads = Tensor::run_backward(&[&vjp], &wrt, false, false);
                let d_input = grads.pop().expect("d loss / d step input");
                for (acc, g) in param_grads.iter_mut().zip(grads) {
                    *acc = &*acc + g;
                }
                d_input
            };
        }
        let mut surrogate = (seed * grad).sum(None::<tch::Kind>);
        for (p, g) in params.iter().zip(&param_grads) {
            surrogate += (p * g).sum(None::<tch::Kind>);
        }
        // Value: exactly head's (x - x is 0); gradient: the surrogate's.
        &surrogate - surrogate.detach() + head_loss.detach()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_keeps_channels_last_and_reaches_the_image_size() {
        let cfg = crate::config::Config::preset("tiny-test").unwrap().model;
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let nca = Nca::new(&vs.root(), &cfg);
        let mut sizes = Vec::new();
        let mut noise = crate::noise::Noise::new(0);
        let z = Tensor::randn([2, cfg.z_dim], (tch::Kind::Float, tch::Device::Cpu));
        let out = nca.grow(&z, &mut noise, &mut |s| {
            sizes.push(s.size()[2]);
            // Channels-last: the channel stride is 1 at every state (no layout copies).
            assert_eq!(
                s.stride()[1],
                1,
                "state {} is not channels-last",
                sizes.len()
            );
        });
        assert_eq!(out.size(), [2, cfg.z_dim, 32, 32]);
        // seed + 2 steps, then (doubled + 2 steps) x 4: 1 + 2 + 4 * 3 = 15 states.
        assert_eq!(sizes, [2, 2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32]);
        assert_eq!(nca.n_steps(), 10);
    }

    #[test]
    fn damage_zeroes_one_square_of_every_channel_of_each_state() {
        let s = Tensor::ones([2, 3, 10, 10], (tch::Kind::Float, tch::Device::Cpu));
        let d = damage_random(&s, 4, &mut crate::noise::Noise::new(1));
        assert_eq!(d.sum(tch::Kind::Float).double_value(&[]), 2.0 * 3.0 * 84.0);
        let per_channel = d.sum_dim_intlist([2i64, 3].as_slice(), false, tch::Kind::Float);
        assert!(per_channel.equal(&Tensor::full(
            [2, 3],
            84.0,
            (tch::Kind::Float, tch::Device::Cpu)
        )));
        // Each state's square is drawn on its own: two rows, two places (for this seed).
        assert!(!d.get(0).equal(&d.get(1)));
        assert_eq!(
            s.sum(tch::Kind::Float).double_value(&[]),
            600.0,
            "the original is untouched"
        );
        // A fixed square: rows 2..5, columns 7..10 of every channel.
        let f = damage(&s.get(0), 2, 7, 3);
        assert_eq!(
            f.narrow(1, 2, 3)
                .narrow(2, 7, 3)
                .abs()
                .sum(tch::Kind::Float)
                .double_value(&[]),
            0.0
        );
        assert_eq!(f.sum(tch::Kind::Float).double_value(&[]), 3.0 * 91.0);
    }

    #[test]
    fn doubling_copies_each_cell_into_a_block() {
        let x = Tensor::from_slice(&[1f32, 2., 3., 4.]).view([1, 1, 2, 2]);
        let y = double(&x);
        let got = Vec::<f32>::try_from(y.view(-1)).unwrap();
        #[rustfmt::skip]
        let want = vec![1., 1., 2., 2.,
                        1., 1., 2., 2.,
                        3., 3., 4., 4.,
                        3., 3., 4., 4.];
        assert_eq!(got, want);
        // Same as repeat_interleave on H then W, the reference's operation.
        let r = x
            .repeat_interleave_self_int(2, 2, None)
            .repeat_interleave_self_int(2, 3, None);
        assert!(r.equal(&y));
    }
}
