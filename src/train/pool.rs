//! Pool and damage training for the non-doubling VNCA (docs/REFERENCE.md §4.1; the paper's
//! Appendix A.3): half of every batch starts from final states of earlier batches (the
//! pool) instead of from z, a quarter of the batch's rows from damaged ones, so the cells
//! learn states that persist and regrow.
//!
//! Per training batch of B images (reference semantics): when the pool holds more than
//! B/2 entries, take its first B/2 (image, state) pairs, zero a `damage_size` square of
//! all channels in the first B/4 states (`damaged_fraction` = 0.5 of the pool rows), and
//! let them replace the last B/2 images and seeds of the batch; encode all B images,
//! decode the fresh rows from z and the pool rows from their states, and return all B
//! (image, final state) pairs to the pool, shuffled and truncated to its capacity.
//!
//! The KL of a pool row: the reference adds the KL of a *fresh* encoding of the pool
//! image although that z is never decoded (its own comment: "yes this is wrong"). That is
//! `PoolKl::Reference`, the default of the paper preset. `PoolKl::FreshOnly` takes the KL
//! over the fresh rows only: each term of the loss then belongs to a path that produced
//! it, and the encoder no longer gets a pull towards the prior from images it did not
//! encode for the decoder (the loss is no longer an ELBO of the pool rows either way).
use crate::config::PoolKl;
use crate::likelihood::gaussian;
use crate::model::nca::{erase_, random_square};
use crate::model::Vnca;
use crate::noise::{Noise, NoiseSource};
use crate::objective::{encode_and_sample, Elbo};
use tch::{Kind, Tensor};

/// The pool's own stream when it has one, else the run's.
fn pick<'b>(own: &'b mut Option<Noise>, run: &'b mut dyn NoiseSource) -> &'b mut dyn NoiseSource {
    match own {
        Some(n) => n,
        None => run,
    }
}

/// The pool's (image, final state) pairs, stored compactly: two preallocated slabs of
/// rows, images [slots, C, S, S] and states [slots, Z, S, S], and the pool order as a list
/// of slots. A row is copied into a free slot when it enters and its slot freed when it
/// leaves, so the pool holds exactly its slabs, whatever batches its rows came from. (Rows
/// kept as views into their batch's tensors would keep every such batch alive: at least
/// 4x the memory for the small MNIST preset, measured in docs/EXPERIMENTS.md.)
pub struct Pool {
    slabs: Option<(Tensor, Tensor)>,
    /// Slots of the entries, in pool order.
    order: Vec<i64>,
    free: Vec<i64>,
    capacity: usize,
    damage_size: i64,
    /// Fraction of the pool rows of a batch that are damaged (0.5 in the reference).
    damaged_fraction: f64,
    kl: PoolKl,
    /// In a data-parallel run, this rank's stream for the pool's own draws (damage
    /// squares, shuffles), set before each step; None: they come from the run's stream.
    pub own_noise: Option<Noise>,
}

impl Pool {
    pub fn new(capacity: usize, damage_size: i64, damaged_fraction: f64, kl: PoolKl) -> Self {
        Pool {
            slabs: None,
            order: Vec::new(),
            free: Vec::new(),
            capacity,
            damage_size,
            damaged_fraction,
            kl,
            own_noise: None,
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes the pool holds: its two slabs (capacity + one batch of rows once it has
    /// been fed). The pool of the paper's MNIST preset: 1152 x (1 + 128) x 28 x 28 x 4 B.
    pub fn bytes(&self) -> usize {
        self.slabs.as_ref().map_or(0, |(i, s)| {
            (i.numel() + s.numel()) * i.kind().elt_size_in_bytes()
        })
    }

    /// Copies of the entries at pool positions `range`: images [n, C, S, S], states
    /// [n, Z, S, S].
    fn rows(&self, range: std::ops::Range<usize>) -> Option<(Tensor, Tensor)> {
        let (images, states) = self.slabs.as_ref()?;
        if range.is_empty() {
            return None;
        }
        let slots = Tensor::from_slice(&self.order[range]).to_device(images.device());
        Some((
            images.index_select(0, &slots),
            states.index_select(0, &slots),
        ))
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
        let use_pool = n_pool > 0 && self.len() > n_pool as usize;
        let mut x = x.shallow_clone();
        let mut pool_states: Option<Tensor> = None;
        if use_pool {
            let (imgs, states) = self.rows(0..n_pool as usize).expect("a non-empty pool");
            let taken: Vec<i64> = self.order.drain(..n_pool as usize).collect();
            self.free.extend(taken);
            self.damage_first_rows(&states, noise);
            x = Tensor::cat(&[x.narrow(0, 0, b - n_pool), imgs], 0);
            pool_states = Some(states); // [B/2, Z, S, S]
        }
        let (q, z) = encode_and_sample(model, &x, noise); // z: [B, Z]
        let mut seeds = model.nca().seed(&z); // [B, Z, S, S]
        if let Some(ps) = &pool_states {
            seeds = Tensor::cat(
                &[seeds.narrow(0, 0, b - n_pool), ps.to_kind(seeds.kind())],
                0,
            );
        }
        let state = model.nca().grow_from(&seeds, noise, &mut |_| {}); // [B, Z, S, S]
        let recon = -model.log_likelihood(&state, &x); // [B]
        let kl_all = gaussian::kl_std(&q.mu, &q.log_sigma); // [B]
        let kl_term = match (self.kl, use_pool) {
            (PoolKl::FreshOnly, true) => kl_all.narrow(0, 0, b - n_pool).mean(None::<Kind>),
            _ => kl_all.mean(None::<Kind>),
        };
        let loss = recon.mean(None::<Kind>) + kl_term * beta;
        let mut own = self.own_noise.take();
        self.give_back(&x, &state, pick(&mut own, noise));
        self.own_noise = own;
        Elbo {
            loss,
            recon,
            kl: kl_all,
        }
    }

    /// Zero a random `damage_size` square of all channels in the first `damaged_fraction`
    /// of the taken pool states [n, Z, S, S] (a copy: the pool's slabs stay as they were).
    /// The reference damages B/4 rows of B/2: floor(floor(B/2) x 0.5) is the same number.
    fn damage_first_rows(&mut self, states: &Tensor, noise: &mut dyn NoiseSource) {
        let (n, h, w) = (states.size()[0], states.size()[2], states.size()[3]);
        let n_damaged = (n as f64 * self.damaged_fraction).floor() as i64;
        for i in 0..n_damaged {
            let draw = pick(&mut self.own_noise, noise);
            let (top, left) = random_square(h, w, self.damage_size, draw);
            erase_(&states.get(i), top, left, self.damage_size);
        }
    }

    /// At least `n` free slots, growing the slabs (images like `x`'s rows, states like
    /// `state`'s) when there are not.
    fn reserve(&mut self, n: usize, x: &Tensor, state: &Tensor) {
        if self.free.len() >= n {
            return;
        }
        let have = self.slabs.as_ref().map_or(0, |(i, _)| i.size()[0]);
        let want = (self.capacity + n).max(have as usize + n - self.free.len()) as i64;
        let grow = |old: Option<&Tensor>, like: &Tensor| {
            let mut shape = like.size();
            shape[0] = want;
            let slab = Tensor::zeros(&shape, (like.kind(), like.device()));
            if let Some(old) = old {
                slab.narrow(0, 0, have).copy_(old);
            }
            slab
        };
        let slabs = (
            grow(self.slabs.as_ref().map(|s| &s.0), x),
            grow(self.slabs.as_ref().map(|s| &s.1), state),
        );
        self.slabs = Some(slabs);
        self.free.extend(have..want);
    }

    /// Append the batch's (image, final state) pairs, shuffle, keep `capacity`.
    fn give_back(&mut self, x: &Tensor, state: &Tensor, noise: &mut dyn NoiseSource) {
        let b = x.size()[0] as usize;
        self.reserve(b, x, state);
        // Lowest free slots first, so the slots used do not depend on the free list's history.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        let slots: Vec<i64> = (0..b).map(|_| self.free.pop().expect("reserved")).collect();
        let (mut images, mut states) = {
            let (i, s) = self.slabs.as_ref().expect("reserved");
            (i.shallow_clone(), s.shallow_clone()) // handles on the same storage
        };
        let index = Tensor::from_slice(&slots).to_device(images.device());
        tch::no_grad(|| {
            let _ = images.index_copy_(0, &index, &x.detach().to_kind(images.kind()));
            let _ = states.index_copy_(0, &index, &state.detach().to_kind(states.kind()));
        });
        self.order.extend(slots);
        // Fisher-Yates with the run's noise stream (reproducible, resumable).
        let n = self.order.len();
        let u = Vec::<f32>::try_from(noise.uniform(&[n as i64])).unwrap_or_default();
        for i in (1..n).rev() {
            let j = ((u[i] as f64 * (i + 1) as f64) as usize).min(i);
            self.order.swap(i, j);
        }
        let dropped = self.order.split_off(self.order.len().min(self.capacity));
        self.free.extend(dropped);
    }

    /// The pool's contents as two stacked tensors, images [N, C, S, S] and final states
    /// [N, Z, S, S] (None when empty), in pool order, for checkpoints.
    pub fn to_tensors(&self) -> Option<(Tensor, Tensor)> {
        self.rows(0..self.len())
    }

    /// Refill the pool from `to_tensors`' output (e.g. read back from a checkpoint), moved
    /// to `device`; the order is kept, so a resumed run draws the same entries.
    pub fn restore(&mut self, images: &Tensor, states: &Tensor, device: tch::Device) {
        let n = (images.size()[0] as usize).min(self.capacity) as i64;
        self.slabs = None;
        self.order.clear();
        self.free.clear();
        let (images, states) = (
            images.narrow(0, 0, n).to_device(device),
            states.narrow(0, 0, n).to_device(device),
        );
        self.reserve(n as usize, &images, &states);
        let (slab_i, slab_s) = self.slabs.as_ref().expect("reserved");
        tch::no_grad(|| {
            slab_i.narrow(0, 0, n).copy_(&images);
            slab_s.narrow(0, 0, n).copy_(&states);
        });
        self.free.retain(|&slot| slot >= n);
        self.order = (0..n).collect();
    }

    /// Up to `n` pool states [n, Z, S, S] for pictures.
    pub fn states(&self, n: usize) -> Option<Tensor> {
        self.rows(0..n.min(self.len())).map(|(_, s)| s)
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
    fn pool_fills_then_feeds_half_the_batch() {
        let model = grid_model();
        let mut pool = Pool::new(10, 14, 0.5, PoolKl::Reference);
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
        let mut fresh = Pool::new(10, 14, 0.5, PoolKl::FreshOnly);
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

    /// The pool's memory is its two slabs, capacity + one batch of rows, however many
    /// batches have passed through it (rows are copied in, not kept as batch views).
    #[test]
    fn pool_memory_is_capacity_plus_one_batch_of_rows() {
        let model = grid_model();
        let mut pool = Pool::new(10, 14, 0.5, PoolKl::Reference);
        let mut noise = Noise::new(2);
        let x = Tensor::rand([4, 1, 28, 28], (Kind::Float, tch::Device::Cpu))
            .lt(0.3)
            .to_kind(Kind::Float);
        let row_bytes = (1 + 8) * 28 * 28 * 4;
        for step in 0..12 {
            let _ = pool.elbo(&model, &x, 1.0, &mut noise);
            assert_eq!(pool.bytes(), (10 + 4) * row_bytes, "step {step}");
        }
        // Every entry is a distinct slot, and entries + free slots are all the slots.
        let mut slots: Vec<i64> = pool.order.iter().chain(&pool.free).copied().collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..14).collect::<Vec<i64>>());
        // The states stored are the batch's final states: taking them back and growing
        // them 0 further steps is what `states` returns, and they are not all equal.
        let s = pool.states(10).unwrap();
        assert_eq!(s.size(), [10, 8, 28, 28]);
        assert!(s.get(0).ne_tensor(&s.get(1)).any().int64_value(&[]) == 1);
    }

    #[test]
    fn damaged_fraction_of_the_pool_rows_get_one_square_each() {
        let mut noise = Noise::new(4);
        // (fraction, pool rows, rows damaged): 0.5 is the reference's B/4 of B/2 rows.
        for (fraction, n, want) in [
            (0.5, 8, 4),
            (0.5, 7, 3),
            (1.0, 8, 8),
            (0.3, 8, 2),
            (0.0, 8, 0),
        ] {
            let mut pool = Pool::new(10, 5, fraction, PoolKl::Reference);
            let states = Tensor::ones([n, 3, 28, 28], (Kind::Float, tch::Device::Cpu));
            pool.damage_first_rows(&states, &mut noise);
            // zeros per row: one 5x5 square of all 3 channels in the first `want` rows.
            let zeros = states
                .eq(0.0)
                .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Int64);
            let want_zeros: Vec<i64> = (0..n).map(|i| if i < want { 75 } else { 0 }).collect();
            assert_eq!(
                Vec::<i64>::try_from(zeros).unwrap(),
                want_zeros,
                "{fraction} of {n}"
            );
        }
    }

    #[test]
    fn to_tensors_and_restore_round_trip_in_order() {
        let model = grid_model();
        let mut pool = Pool::new(10, 14, 0.5, PoolKl::Reference);
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
        let mut back = Pool::new(10, 14, 0.5, PoolKl::Reference);
        back.restore(&imgs, &states, tch::Device::Cpu);
        let (imgs2, states2) = back.to_tensors().unwrap();
        assert!(imgs.equal(&imgs2) && states.equal(&states2));
        // The same next batch from both pools, with the same noise, gives the same loss.
        let (mut n1, mut n2) = (Noise::new(9), Noise::new(9));
        let a = pool.elbo(&model, &x, 1.0, &mut n1).loss.double_value(&[]);
        let b = back.elbo(&model, &x, 1.0, &mut n2).loss.double_value(&[]);
        assert_eq!(a, b);
        assert!(Pool::new(4, 14, 0.5, PoolKl::Reference)
            .to_tensors()
            .is_none());
    }
}
