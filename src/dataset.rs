//! From decoded image sets to training tensors: the splits a config asks for, kept on
//! the CPU as u8 (61 MB for all of MNIST), batched by index, converted to f32 and
//! zero-padded to the model's grid (28 -> 32 for the doubling model) on the way out.
use crate::config::{Config, DataConfig};
use crate::data::{self, BinarizedMnist, ImageSet};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64;
use tch::{Device, Kind, Tensor};

/// One split as a tensor.
pub struct Split {
    pub name: String,
    /// [N, 1, 28, 28] u8 in {0, 1}, CPU.
    pub images: Tensor,
    /// [N] u8 digit labels when the source has them.
    pub labels: Option<Tensor>,
}

impl Split {
    pub fn from_image_set(name: &str, set: &ImageSet) -> Split {
        let (n, r, c) = (set.len() as i64, set.rows as i64, set.cols as i64);
        Split {
            name: name.to_string(),
            images: Tensor::from_slice(&set.images).view([n, 1, r, c]),
            labels: set.labels.as_ref().map(|l| Tensor::from_slice(l)),
        }
    }

    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Images `idx` as f32, zero-padded to `size` x `size`, on `device`: [B, 1, size, size].
    pub fn batch(&self, idx: &[i64], size: i64, device: Device) -> Tensor {
        let sel = self.images.index_select(0, &Tensor::from_slice(idx));
        to_model_input(&sel, size, device)
    }

    /// Images start..start+len, as `batch`.
    pub fn range(&self, start: i64, len: i64, size: i64, device: Device) -> Tensor {
        to_model_input(&self.images.narrow(0, start, len), size, device)
    }
}

/// u8 [B, 1, h, w] -> f32 [B, 1, size, size], centred with zero padding, on `device`.
pub fn to_model_input(images: &Tensor, size: i64, device: Device) -> Tensor {
    let (h, w) = (images.size()[2], images.size()[3]);
    let x = images.to_device(device).to_kind(Kind::Float);
    if h == size && w == size {
        return x;
    }
    let (top, left) = ((size - h) / 2, (size - w) / 2);
    x.constant_pad_nd([left, size - w - left, top, size - h - top])
}

/// Load the data set a config names and return (train, validation) splits.
pub fn load_train_val(cfg: &Config) -> anyhow::Result<(Split, Split)> {
    let all = load_mnist(&cfg.data)?;
    let mut train: Option<ImageSet> = None;
    for name in &cfg.data.train_splits {
        let s = pick(&all, name);
        train = Some(match train {
            None => s.clone(),
            Some(t) => t.concat(s),
        });
    }
    let train = train.expect("validated: train_splits non-empty");
    let val = pick(&all, &cfg.data.val_split);
    Ok((
        Split::from_image_set(&cfg.data.train_splits.join("+"), &train),
        Split::from_image_set(&cfg.data.val_split, val),
    ))
}

/// Load one named split ("train", "valid" or "test").
pub fn load_split(data: &DataConfig, name: &str) -> anyhow::Result<Split> {
    let all = load_mnist(data)?;
    match name {
        "train" | "valid" | "test" => Ok(Split::from_image_set(name, pick(&all, name))),
        _ => anyhow::bail!("unknown split `{name}` (splits: train, valid, test)"),
    }
}

fn load_mnist(data: &DataConfig) -> anyhow::Result<BinarizedMnist> {
    data::load_binarized_mnist(&data.path).map_err(|e| {
        anyhow::anyhow!(
            "{e} (the shipped file is data/binarized_mnist.vbm.gz; `vnca data binarize-mnist` rebuilds it, `vnca data fetch-larochelle` downloads the original .amat files)"
        )
    })
}

fn pick<'a>(all: &'a BinarizedMnist, name: &str) -> &'a ImageSet {
    match name {
        "train" => &all.train,
        "valid" => &all.valid,
        _ => &all.test,
    }
}

/// Endless stream of batch indices: a fresh permutation every pass over the data, batches
/// running across pass boundaries (as the reference's IterableWrapper + DataLoader).
/// The permutation of pass `e` is a pure function of (seed, e), so the state saved in a
/// checkpoint is just (pass, position).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochSampler {
    seed: u64,
    n: usize,
    epoch: u64,
    pos: usize,
    #[serde(skip)]
    perm: Vec<i64>,
}

impl EpochSampler {
    pub fn new(n: usize, seed: u64) -> Self {
        assert!(n > 0, "cannot sample from an empty split");
        EpochSampler {
            seed,
            n,
            epoch: 0,
            pos: 0,
            perm: Vec::new(),
        }
    }

    fn permutation(&self) -> Vec<i64> {
        let mut p: Vec<i64> = (0..self.n as i64).collect();
        let mut rng =
            Pcg64::seed_from_u64(self.seed ^ self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        p.shuffle(&mut rng);
        p
    }

    pub fn next_batch(&mut self, batch: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(batch);
        while out.len() < batch {
            if self.perm.is_empty() {
                self.perm = self.permutation();
            }
            out.push(self.perm[self.pos]);
            self.pos += 1;
            if self.pos == self.n {
                self.pos = 0;
                self.epoch += 1;
                self.perm.clear();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_visits_everything_once_per_pass_and_resumes() {
        let mut s = EpochSampler::new(10, 3);
        let mut first: Vec<i64> = s.next_batch(4);
        first.extend(s.next_batch(6));
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        let _ = s.next_batch(3);
        let saved = serde_json::to_string(&s).unwrap();
        let a = s.next_batch(9);
        let mut r: EpochSampler = serde_json::from_str(&saved).unwrap();
        assert_eq!(a, r.next_batch(9));
    }

    #[test]
    fn pads_to_the_grid_centred() {
        let x = Tensor::ones([1, 1, 28, 28], (Kind::Uint8, Device::Cpu));
        let y = to_model_input(&x, 32, Device::Cpu);
        assert_eq!(y.size(), [1, 1, 32, 32]);
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 784.0);
        assert_eq!(y.double_value(&[0, 0, 1, 1]), 0.0);
        assert_eq!(y.double_value(&[0, 0, 2, 2]), 1.0);
        assert_eq!(y.double_value(&[0, 0, 29, 29]), 1.0);
        assert_eq!(y.double_value(&[0, 0, 30, 30]), 0.0);
    }
}
