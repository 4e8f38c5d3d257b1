//! Every random draw the model makes (the reparameterisation noise and the stochastic
//! update masks) comes from a seeded Rust PCG stream whose state can be saved in a
//! checkpoint. That gives bit-exact resume on CPU and the same noise on every device,
//! which libtorch's global generator does not (its state is not reachable from tch).
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_pcg::Pcg64;
use tch::Tensor;

/// A source of model noise. Tests substitute fixed noise to compare against PyTorch.
pub trait NoiseSource {
    /// Standard normal draws, f32 on the CPU.
    fn normal(&mut self, shape: &[i64]) -> Tensor;
    /// 0/1 f32 mask on the CPU, each entry 1 with probability `p`.
    fn mask(&mut self, shape: &[i64], p: f64) -> Tensor;
    /// Uniform f32 draws in [0, 1) on the CPU (the logistic mixture's sampling noise).
    fn uniform(&mut self, shape: &[i64]) -> Tensor;
    /// `normal` with one row per image of the batch (dim 0 of `shape` is the batch).
    /// Said apart from a shared draw because a data-parallel rank holds only some of the
    /// batch's rows and must take them from the global batch's draw
    /// (`train::data_parallel::ShardedNoise`); everywhere else it is `normal`.
    fn normal_per_image(&mut self, shape: &[i64]) -> Tensor {
        self.normal(shape)
    }
    /// `mask` with one row per image of the batch, as [`NoiseSource::normal_per_image`].
    fn mask_per_image(&mut self, shape: &[i64], p: f64) -> Tensor {
        self.mask(shape, p)
    }
}

/// The seeded, serialisable noise stream used in training and evaluation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Noise {
    rng: Pcg64,
}

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise {
            rng: Pcg64::seed_from_u64(seed),
        }
    }
}

fn numel(shape: &[i64]) -> usize {
    shape.iter().product::<i64>().max(0) as usize
}

impl NoiseSource for Noise {
    fn normal(&mut self, shape: &[i64]) -> Tensor {
        let v: Vec<f32> = (0..numel(shape))
            .map(|_| self.rng.sample(StandardNormal))
            .collect();
        Tensor::from_slice(&v).view(shape)
    }

    fn mask(&mut self, shape: &[i64], p: f64) -> Tensor {
        let v: Vec<f32> = (0..numel(shape))
            .map(|_| f32::from(self.rng.gen::<f64>() < p))
            .collect();
        Tensor::from_slice(&v).view(shape)
    }

    fn uniform(&mut self, shape: &[i64]) -> Tensor {
        let v: Vec<f32> = (0..numel(shape)).map(|_| self.rng.gen::<f32>()).collect();
        Tensor::from_slice(&v).view(shape)
    }
}

/// Pre-recorded noise handed out in order (a PyTorch fixture's eps), for the numerics
/// tests and `vnca check`: normal and uniform draws both take the next recorded tensor;
/// masks are not expected (the fixtures use p_update = 1).
pub struct FixedNoise(pub std::collections::VecDeque<Tensor>);

/// [`FixedNoise`] whose uniform draws are all `0.5`.
pub struct FixedNormalsHalfUniform(pub FixedNoise);

impl FixedNoise {
    /// The next recorded tensor; a request for fewer leading rows than it has takes those
    /// rows and keeps the rest for the next request (evaluation draws image by image).
    fn next(&mut self, shape: &[i64]) -> Tensor {
        let t = self.0.pop_front().expect("fixture noise exhausted");
        let size = t.size();
        if size.len() == shape.len() && size[1..] == shape[1..] && shape[0] < size[0] {
            self.0.push_front(t.narrow(0, shape[0], size[0] - shape[0]));
            return t.narrow(0, 0, shape[0]);
        }
        assert_eq!(size, shape, "fixture noise shape");
        t
    }
}

impl NoiseSource for FixedNoise {
    fn normal(&mut self, shape: &[i64]) -> Tensor {
        self.next(shape)
    }
    fn mask(&mut self, _shape: &[i64], _p: f64) -> Tensor {
        panic!("the fixtures use p_update = 1: no mask expected")
    }
    fn uniform(&mut self, shape: &[i64]) -> Tensor {
        self.next(shape)
    }
}

impl NoiseSource for FixedNormalsHalfUniform {
    fn normal(&mut self, shape: &[i64]) -> Tensor {
        self.0.normal(shape)
    }
    fn mask(&mut self, shape: &[i64], p: f64) -> Tensor {
        self.0.mask(shape, p)
    }
    fn uniform(&mut self, shape: &[i64]) -> Tensor {
        Tensor::full(shape, 0.5, (tch::Kind::Float, tch::Device::Cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_resumable() {
        let mut a = Noise::new(7);
        let _ = a.normal(&[10]);
        let saved = serde_json::to_string(&a).unwrap();
        let x = a.normal(&[3, 4]);
        let mut b: Noise = serde_json::from_str(&saved).unwrap();
        let y = b.normal(&[3, 4]);
        assert_eq!(
            Vec::<f32>::try_from(x.view(-1)).unwrap(),
            Vec::<f32>::try_from(y.view(-1)).unwrap()
        );
    }

    #[test]
    fn moments_and_mask_rate() {
        let mut n = Noise::new(1);
        let x = n.normal(&[100_000]);
        let mean = x.mean(tch::Kind::Float).double_value(&[]);
        let std = x.std(true).double_value(&[]);
        assert!(
            mean.abs() < 0.02 && (std - 1.0).abs() < 0.02,
            "{mean} {std}"
        );
        let m = n.mask(&[100_000], 0.3);
        let rate = m.mean(tch::Kind::Float).double_value(&[]);
        assert!((rate - 0.3).abs() < 0.01, "{rate}");
        let u = n.uniform(&[100_000]);
        let (lo, hi) = (u.min().double_value(&[]), u.max().double_value(&[]));
        let mean = u.mean(tch::Kind::Float).double_value(&[]);
        assert!(
            lo >= 0.0 && hi < 1.0 && (mean - 0.5).abs() < 0.01,
            "{lo} {hi} {mean}"
        );
    }
}
