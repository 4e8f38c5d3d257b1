//! Pool and damage training for the non-doubling VNCA (PAPER.md 4.6, 5.5; the paper's
//! Appendix A.3): half of every batch starts from final states of earlier batches (the
//! pool) instead of from z, a quarter of the batch's rows from damaged ones, so the cells
//! learn states that persist and regrow.
//!
//! Per training batch of B images (reference semantics): when the pool holds more than
//! B/2 entries, take its first B/2 (image, state) pairs, zero a `damage_size` square of
//! all channels in the first B/4 states, and let them replace the last B/2 images and
//! seeds of the batch; encode all B images, decode the fresh rows from z and the pool
//! rows from their states, and return all B (image, final state) pairs to the pool,
//! shuffled and truncated to its capacity.
//!
//! The KL of a pool row: the reference adds the KL of a *fresh* encoding of the pool
//! image although that z is never decoded (its own comment: "yes this is wrong"). That is
//! `PoolKl::Reference`, the default of the paper preset. `PoolKl::FreshOnly` takes the KL
//! over the fresh rows only: each term of the loss then belongs to a path that produced
//! it, and the encoder no longer gets a pull towards the prior from images it did not
//! encode for the decoder (the loss is no longer an ELBO of the pool rows either way).
use crate::config::PoolKl;
use crate::likelihood::gaussian;
use crate::model::Vnca;
use crate::noise::NoiseSource;
use crate::objective::{encode_and_sample, Elbo};
use tch::{Kind, Tensor};

pub struct Pool {
    /// (image [C, S, S], final state [Z, S, S]), both detached, on the model's device.
    entries: Vec<(Tensor, Tensor)>,
    capacity: usize,
    damage_size: i64,
    kl: PoolKl,
}

/// Zero a `side` x `side` square of every channel of `state` [Z, H, W] at a uniformly
/// drawn position (in place on a copy).
pub fn damage_random(state: &Tensor, side: i64, noise: &mut dyn NoiseSource) -> Tensor {
    let (h, w) = (state.size()[1], state.size()[2]);
    let u = noise.uniform(&[2]);
    let top = ((u.double_value(&[0]) * (h - side + 1) as f64) as i64).min(h - side);
    let left = ((u.double_value(&[1]) * (w - side + 1) as f64) as i64).min(w - side);
    let s = state.copy();
    let _ = s.narrow(1, top, side).narrow(2, left, side).zero_();
    s
}

impl Pool {
    pub fn new(capacity: usize, damage_size: i64, kl: PoolKl) -> Self {
        Pool {
            entries: Vec::new(),
            capacity,
            damage_size,
            kl,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The single-sample ELBO of a batch x [B, C, S, S] with pool rows mixed in.
    pub fn elbo(
        &mut self,
        model: &Vnca,
        x: &Tensor,
        beta: f64,
        noise: &mut dyn NoiseSource,
    ) -> Elbo {
        let b = x.size()[0];
        let n_pool = b / 2;
        let use_pool = n_pool > 0 && self.entries.len() > n_pool as usize;
        let mut x = x.shallow_clone();
        let mut pool_states: Option<Tensor> = None;
        if use_pool {
            let taken: Vec<(Tensor, Tensor)> = self.entries.drain(..n_pool as usize).collect();
            let imgs: Vec<Tensor> = taken.iter().map(|(i, _)| i.shallow_clone()).collect();
            let states: Vec<Tensor> = taken
                .iter()
                .enumerate()
                .map(|(i, (_, s))| {
                    if (i as i64) < b / 4 {
                        damage_random(s, self.damage_size, noise)
                    } else {
                        s.shallow_clone()
                    }
                })
                .collect();
            x = Tensor::cat(&[x.narrow(0, 0, b - n_pool), Tensor::stack(&imgs, 0)], 0);
            pool_states = Some(Tensor::stack(&states, 0)); // [B/2, Z, S, S]
        }
        let (q, z) = encode_and_sample(model, &x, noise); // z: [B, Z]
        let mut seeds = model.nca.seed(&z); // [B, Z, S, S]
        if let Some(ps) = &pool_states {
            seeds = Tensor::cat(
                &[seeds.narrow(0, 0, b - n_pool), ps.to_kind(seeds.kind())],
                0,
            );
        }
        let state = model.nca.grow_from(&seeds, noise, &mut |_| {}); // [B, Z, S, S]
        let recon = -model.log_likelihood(&state, &x); // [B]
        let kl_all = gaussian::kl_std(&q.mu, &q.log_sigma); // [B]
        let kl_term = match (self.kl, use_pool) {
            (PoolKl::FreshOnly, true) => kl_all.narrow(0, 0, b - n_pool).mean(None::<Kind>),
            _ => kl_all.mean(None::<Kind>),
        };
        let loss = recon.mean(None::<Kind>) + kl_term * beta;
        self.give_back(&x, &state, noise);
        Elbo {
            loss,
            recon,
            kl: kl_all,
        }
    }

    /// Append the batch's (image, final state) pairs, shuffle, keep `capacity`.
    fn give_back(&mut self, x: &Tensor, state: &Tensor, noise: &mut dyn NoiseSource) {
        let (x, state) = (x.detach(), state.detach());
        for i in 0..x.size()[0] {
            self.entries.push((x.get(i), state.get(i)));
        }
        // Fisher-Yates with the run's noise stream (reproducible, resumable).
        let n = self.entries.len();
        let u = Vec::<f32>::try_from(noise.uniform(&[n as i64])).unwrap_or_default();
        for i in (1..n).rev() {
            let j = ((u[i] as f64 * (i + 1) as f64) as usize).min(i);
            self.entries.swap(i, j);
        }
        self.entries.truncate(self.capacity);
    }

    /// The pool's contents as two stacked tensors, images [N, C, S, S] and final states
    /// [N, Z, S, S] (None when empty), in pool order, for checkpoints.
    pub fn to_tensors(&self) -> Option<(Tensor, Tensor)> {
        if self.entries.is_empty() {
            return None;
        }
        let imgs: Vec<Tensor> = self
            .entries
            .iter()
            .map(|(i, _)| i.shallow_clone())
            .collect();
        let states: Vec<Tensor> = self
            .entries
            .iter()
            .map(|(_, s)| s.shallow_clone())
            .collect();
        Some((Tensor::stack(&imgs, 0), Tensor::stack(&states, 0)))
    }

    /// Refill the pool from `to_tensors`' output (e.g. read back from a checkpoint), moved
    /// to `device`; the order is kept, so a resumed run draws the same entries.
    pub fn restore(&mut self, images: &Tensor, states: &Tensor, device: tch::Device) {
        let (images, states) = (images.to_device(device), states.to_device(device));
        self.entries = (0..images.size()[0])
            .map(|i| (images.get(i), states.get(i)))
            .collect();
        self.entries.truncate(self.capacity);
    }

    /// Up to `n` pool states [n, Z, S, S] for pictures.
    pub fn states(&self, n: usize) -> Option<Tensor> {
        let v: Vec<Tensor> = self
            .entries
            .iter()
            .take(n)
            .map(|(_, s)| s.shallow_clone())
            .collect();
        (!v.is_empty()).then(|| Tensor::stack(&v, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::noise::Noise;

    fn grid_model() -> Vnca {
        let mut cfg = Config::preset("mnist-nondoubling-damage-small").unwrap();
        cfg.model.z_dim = 8;
        cfg.model.hidden = 8;
        cfg.model.encoder_width = 2;
        cfg.model.min_steps = 2;
        cfg.model.max_steps = 3;
        Vnca::new(&cfg.model, tch::Device::Cpu, 0)
    }

    #[test]
    fn damage_zeroes_one_square_of_every_channel() {
        let s = Tensor::ones([3, 10, 10], (Kind::Float, tch::Device::Cpu));
        let d = damage_random(&s, 4, &mut Noise::new(1));
        assert_eq!(d.sum(Kind::Float).double_value(&[]), 3.0 * (100.0 - 16.0));
        let per_channel = d.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float);
        assert!(per_channel.equal(&Tensor::from_slice(&[84.0f32, 84.0, 84.0])));
        assert_eq!(
            s.sum(Kind::Float).double_value(&[]),
            300.0,
            "the original is untouched"
        );
    }

    #[test]
    fn pool_fills_then_feeds_half_the_batch() {
        let model = grid_model();
        let mut pool = Pool::new(10, 14, PoolKl::Reference);
        let mut noise = Noise::new(0);
        let x = Tensor::rand([4, 1, 28, 28], (Kind::Float, tch::Device::Cpu))
            .lt(0.3)
            .to_kind(Kind::Float);
        let e = pool.elbo(&model, &x, 1.0, &mut noise);
        assert_eq!(pool.len(), 4);
        assert!(e.loss.double_value(&[]).is_finite());
        // From now on the pool has more than B/2 = 2 entries: 2 are taken, 4 come back.
        let _ = pool.elbo(&model, &x, 1.0, &mut noise);
        assert_eq!(pool.len(), 6);
        let _ = pool.elbo(&model, &x, 1.0, &mut noise);
        assert_eq!(pool.len(), 8);
        let e = pool.elbo(&model, &x, 1.0, &mut noise);
        assert_eq!(pool.len(), 10, "8 - 2 + 4 = 10, the capacity");
        let _ = pool.elbo(&model, &x, 1.0, &mut noise);
        assert_eq!(pool.len(), 10, "truncated to the capacity");
        e.loss.backward();
        let mut fresh = Pool::new(10, 14, PoolKl::FreshOnly);
        for _ in 0..3 {
            let _ = fresh.elbo(&model, &x, 1.0, &mut noise);
        }
        let f = fresh.elbo(&model, &x, 1.0, &mut noise);
        // FreshOnly: loss = mean recon + mean KL over the 2 fresh rows.
        let want = f.recon.mean(Kind::Float).double_value(&[])
            + f.kl.narrow(0, 0, 2).mean(Kind::Float).double_value(&[]);
        assert!((f.loss.double_value(&[]) - want).abs() < 1e-3);
        assert_eq!(pool.states(3).unwrap().size(), [3, 8, 28, 28]);
    }

    #[test]
    fn to_tensors_and_restore_round_trip_in_order() {
        let model = grid_model();
        let mut pool = Pool::new(10, 14, PoolKl::Reference);
        let mut noise = Noise::new(3);
        let x = Tensor::rand([4, 1, 28, 28], (Kind::Float, tch::Device::Cpu))
            .lt(0.3)
            .to_kind(Kind::Float);
        for _ in 0..3 {
            let _ = pool.elbo(&model, &x, 1.0, &mut noise);
        }
        let (imgs, states) = pool.to_tensors().unwrap();
        assert_eq!(imgs.size(), [8, 1, 28, 28]);
        assert_eq!(states.size(), [8, 8, 28, 28]);
        let mut back = Pool::new(10, 14, PoolKl::Reference);
        back.restore(&imgs, &states, tch::Device::Cpu);
        let (imgs2, states2) = back.to_tensors().unwrap();
        assert!(imgs.equal(&imgs2) && states.equal(&states2));
        // The same next batch from both pools, with the same noise, gives the same loss.
        let (mut n1, mut n2) = (Noise::new(9), Noise::new(9));
        let a = pool.elbo(&model, &x, 1.0, &mut n1).loss.double_value(&[]);
        let b = back.elbo(&model, &x, 1.0, &mut n2).loss.double_value(&[]);
        assert_eq!(a, b);
        assert!(Pool::new(4, 14, PoolKl::Reference).to_tensors().is_none());
    }
}
