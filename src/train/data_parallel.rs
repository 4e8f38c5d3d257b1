//! Data-parallel training with PyTorch DDP's semantics, on the c10d engine of `crate::dist`
//! (Gloo on CPU, NCCL on CUDA), launched by torchrun or Slurm. Without launcher variables
//! the world is one process and every call here is the identity.
//!
//! What makes a run's result independent of the number of ranks (up to float reduction
//! order, docs/EXPERIMENTS.md "Several processes"):
//! - every rank draws the same global batch from the same sampler and takes its own
//!   contiguous rows ([`DataParallel::rows`]);
//! - every rank draws each random tensor for the *global* batch from the same stream and
//!   keeps its rows ([`ShardedNoise`]), so sample i gets the same noise whoever runs it;
//! - gradients are averaged over ranks (equal shards: the mean of the ranks' means is the
//!   global batch's mean) before the global-norm clip, so the clip and Adam see the
//!   single-process gradient and every rank applies the same update.
//!
//! The damage pool is the exception: each rank keeps its own pool of `size / world` rows
//! (its rows return to it), drawn with a rank's own damage and shuffle stream; a
//! checkpoint holds the ranks' pools concatenated, which a resumed run of any world size
//! deals out again.
use crate::dataset::Split;
use crate::dist::{Backend, Dist, DistEnv, DistOptions};
use crate::model::Params;
use crate::noise::{Noise, NoiseSource};
use anyhow::{bail, Context};
use std::ops::Range;
use tch::{Device, Kind, Tensor};

/// This process's place in the job, and the job's collectives.
pub struct DataParallel {
    dist: Option<Dist>,
}

impl DataParallel {
    /// One rank of a job when torchrun's or Slurm's variables are set (connecting to the
    /// others), else a world of one. `backend` overrides the default (and
    /// `VNCA_DIST_BACKEND`).
    pub fn from_env(device: Device, backend: Option<Backend>) -> anyhow::Result<DataParallel> {
        let Some(env) = DistEnv::from_env()? else {
            return Ok(DataParallel { dist: None });
        };
        let mut opts = DistOptions::from_env()?;
        opts.backend = backend.or(opts.backend);
        Ok(DataParallel {
            dist: Some(Dist::connect(env, device, &opts)?),
        })
    }

    pub fn rank(&self) -> usize {
        self.dist.as_ref().map_or(0, Dist::rank)
    }

    pub fn world(&self) -> usize {
        self.dist.as_ref().map_or(1, Dist::world_size)
    }

    /// Rank 0 writes checkpoints, metrics and pictures, and shows progress.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// The device this rank computes on (`cuda` becomes `cuda:LOCAL_RANK`).
    pub fn device(&self, requested: Device) -> Device {
        self.dist
            .as_ref()
            .map_or(requested, |d| d.device(requested))
    }

    /// This rank's rows of `n` items split into `world` contiguous parts, the first
    /// `n mod world` parts one longer.
    pub fn rows(&self, n: usize) -> Range<usize> {
        shard(n, self.rank(), self.world())
    }

    /// Refuses to go on unless every rank's `fingerprint` equals rank 0's.
    pub fn check_same(&self, what: &str, fingerprint: &str) -> anyhow::Result<()> {
        if let Some(d) = &self.dist {
            d.check_same(what, fingerprint)?;
        }
        Ok(())
    }

    /// Every rank's parameters become rank 0's (as DDP does at construction).
    pub fn broadcast_params(&self, params: &Params) -> anyhow::Result<()> {
        if let Some(d) = &self.dist {
            for p in params.values() {
                d.broadcast(&p.detach(), 0)?;
            }
        }
        Ok(())
    }

    /// After backward: the parameters' gradients become their mean over ranks (bucketed
    /// all-reduces), and so do `stats`, returned: per-rank means over equal shards give
    /// the global batch's, and 0/1 flags a mean > 0 when any rank raised one.
    pub fn average_step(&self, params: &Params, stats: &[f64]) -> anyhow::Result<Vec<f64>> {
        let Some(d) = &self.dist else {
            return Ok(stats.to_vec());
        };
        let grads: Vec<Tensor> = params.values().map(Tensor::grad).collect();
        d.all_reduce_mean_grads(&grads)?;
        let t = Tensor::from_slice(stats).to_kind(Kind::Double);
        d.all_reduce_mean(&t)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Element-wise sums over ranks of `values` (f64, exact for counts).
    pub fn sum(&self, values: &[f64]) -> anyhow::Result<Vec<f64>> {
        let t = Tensor::from_slice(values);
        if let Some(d) = &self.dist {
            d.all_reduce_sum(&t)?;
        }
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// The ranks' `t` [n_r, ...] concatenated in rank order, on every rank (a sum of
    /// zero-padded buffers: c10d's all-gather would need equal n_r).
    pub fn gather_rows(&self, t: &Tensor) -> anyhow::Result<Tensor> {
        let Some(d) = &self.dist else {
            return Ok(t.shallow_clone());
        };
        let (rank, world) = (d.rank(), d.world_size());
        let mut counts = vec![0.0; world];
        counts[rank] = t.size()[0] as f64;
        let counts: Vec<i64> = self.sum(&counts)?.iter().map(|&c| c as i64).collect();
        let mut shape = t.size();
        shape[0] = counts.iter().sum();
        let all = Tensor::zeros(&shape, (t.kind(), t.device()));
        let offset: i64 = counts[..rank].iter().sum();
        all.narrow(0, offset, counts[rank]).copy_(t);
        d.all_reduce_sum(&all)?;
        Ok(all)
    }

    /// This rank's damage and shuffle stream for the pool at `step` (None in a world of
    /// one, where the pool draws from the run's stream as it always has). Derived from
    /// (seed, rank, step), so resuming at the same world size repeats it exactly.
    pub fn pool_noise(&self, seed: u64, step: u64) -> Option<Noise> {
        (self.world() > 1).then(|| {
            Noise::new(
                seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(step + 1)
                    ^ (self.rank() as u64 + 1).rotate_left(40),
            )
        })
    }
}

/// Rows `[n r / w, n (r+1) / w)` with the remainder spread over the first parts.
pub fn shard(n: usize, rank: usize, world: usize) -> Range<usize> {
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The rank's part of `split` among the first `limit` images (sharded evaluation).
pub fn split_part(split: &Split, limit: usize, rows: Range<usize>) -> Split {
    let n = (limit as i64).min(split.len()) as usize;
    let (start, end) = (rows.start.min(n) as i64, rows.end.min(n) as i64);
    Split {
        name: split.name.clone(),
        images: split.images.narrow(0, start, end - start),
        labels: split
            .labels
            .as_ref()
            .map(|l| l.narrow(0, start, end - start)),
        levels: split.levels,
    }
}

/// Checks a data-parallel run can split `batch_size` and the pool evenly.
pub fn check_divisible(dp: &DataParallel, batch: i64, pool: Option<usize>) -> anyhow::Result<()> {
    let w = dp.world();
    if !(batch as usize).is_multiple_of(w) {
        bail!(
            "train.batch_size = {batch} does not split evenly over {w} ranks; \
             use a multiple of {w} (the global batch is divided among the ranks)"
        );
    }
    if let Some(size) = pool.filter(|s| !s.is_multiple_of(w)) {
        bail!(
            "train.pool.size = {size} does not split evenly over {w} ranks; use a multiple of {w}"
        );
    }
    Ok(())
}

/// A fingerprint of a split's images (FNV-1a over the bytes), for refusing ranks that
/// loaded different data.
pub fn data_fingerprint(split: &Split) -> anyhow::Result<String> {
    let bytes = Vec::<u8>::try_from(split.images.to_kind(Kind::Uint8).reshape([-1]))
        .context("reading the images for their fingerprint")?;
    Ok(format!("{} images {:016x}", split.len(), fnv1a(&bytes)))
}

/// 64-bit FNV-1a: a fingerprint, not a security hash.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The run's noise stream seen by one rank. The model says which draws have one row per
/// image (`NoiseSource::normal_per_image`, `mask_per_image`: the reparameterisation noise
/// [B, 1, Z], the update masks [B, 1, H, W]); those are drawn for the whole global batch
/// and this rank keeps its rows. Every other draw (the non-doubling model's step count, one
/// [1] per batch) is shared: every rank draws the same. Every rank thus consumes the
/// stream exactly as a single process would, and stays in step with it.
pub struct ShardedNoise<'a> {
    inner: &'a mut dyn NoiseSource,
    global: i64,
    rows: Range<i64>,
}

impl<'a> ShardedNoise<'a> {
    pub fn new(inner: &'a mut dyn NoiseSource, global: usize, rows: Range<usize>) -> Self {
        ShardedNoise {
            inner,
            global: global as i64,
            rows: rows.start as i64..rows.end as i64,
        }
    }

    /// `draw` for the global batch ([global, shape[1..]]), narrowed to this rank's rows.
    fn draw_rows(
        &mut self,
        shape: &[i64],
        draw: impl FnOnce(&mut dyn NoiseSource, &[i64]) -> Tensor,
    ) -> Tensor {
        let local = self.rows.end - self.rows.start;
        assert!(
            shape.first() == Some(&local),
            "a per-image draw of shape {shape:?} on a rank that holds {local} images"
        );
        let mut global = shape.to_vec();
        global[0] = self.global;
        draw(&mut *self.inner, &global).narrow(0, self.rows.start, local)
    }
}

/// Shared draws (a non-doubling growth's step count, a damage square) come from the run's
/// stream as they are, the same on every rank; per-image draws are the global batch's rows.
impl NoiseSource for ShardedNoise<'_> {
    fn normal(&mut self, shape: &[i64]) -> Tensor {
        self.inner.normal(shape)
    }

    fn mask(&mut self, shape: &[i64], p: f64) -> Tensor {
        self.inner.mask(shape, p)
    }

    fn uniform(&mut self, shape: &[i64]) -> Tensor {
        self.inner.uniform(shape)
    }

    fn normal_per_image(&mut self, shape: &[i64]) -> Tensor {
        self.draw_rows(shape, |n, s| n.normal(s))
    }

    fn mask_per_image(&mut self, shape: &[i64], p: f64) -> Tensor {
        self.draw_rows(shape, |n, s| n.mask(s, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_once_in_order() {
        for n in [1usize, 4, 7, 32, 33] {
            for w in 1..=5usize {
                let rows: Vec<usize> = (0..w).flat_map(|r| shard(n, r, w)).collect();
                assert_eq!(rows, (0..n).collect::<Vec<_>>(), "n {n}, world {w}");
                let lens: Vec<usize> = (0..w).map(|r| shard(n, r, w).len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
        assert_eq!(shard(32, 1, 2), 16..32);
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.reshape([-1])).unwrap()
    }

    /// Two ranks' per-sample draws are the single process's rows, and every rank's stream
    /// ends where the single process's does.
    #[test]
    fn sharded_draws_are_the_global_draws_rows() {
        let mut single = Noise::new(5);
        let eps = single.normal(&[6, 1, 3]);
        let steps = single.uniform(&[1]);
        let mask = single.mask(&[6, 1, 4, 4], 0.5);
        // A shared draw shaped like rank 0's rows stays shared (no guessing from shapes).
        let shared = single.normal(&[2, 3]);
        let after = single.normal(&[2]);
        for (rank, rows) in [(0, 0..2), (1, 2..6)] {
            let mut stream = Noise::new(5);
            let mut n = ShardedNoise::new(&mut stream, 6, rows.clone());
            let k = rows.len() as i64;
            let (s, l) = (rows.start as i64, k);
            assert_eq!(
                values(&n.normal_per_image(&[k, 1, 3])),
                values(&eps.narrow(0, s, l)),
                "rank {rank}"
            );
            assert_eq!(values(&n.uniform(&[1])), values(&steps));
            assert_eq!(
                values(&n.mask_per_image(&[k, 1, 4, 4], 0.5)),
                values(&mask.narrow(0, s, l))
            );
            assert_eq!(values(&n.normal(&[2, 3])), values(&shared), "rank {rank}");
            assert_eq!(values(&stream.normal(&[2])), values(&after));
        }
    }
}
