//! From decoded image sets to training tensors: the splits a config asks for, kept on
//! the CPU as u8 (61 MB for all of MNIST), batched by index, converted to f32 in [0, 1]
//! and zero-padded to the model's grid (28 -> 32 for the doubling model) on the way out.
//! Binarized MNIST comes with its own splits; the emoji and folder sets get a seeded
//! held-out split; CelebA uses its official partition.
use crate::config::{Config, DataConfig};
use crate::data::folder::ImageFolder;
use crate::data::{self, BinarizedMnist, ImageSet};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64;
use tch::{Device, Kind, Tensor};

/// One split as a tensor.
pub struct Split {
    pub name: String,
    /// [N, C, H, W] u8, CPU: {0, 1} for binarized MNIST, 0..=255 for colour images.
    pub images: Tensor,
    /// [N] u8 digit labels when the source has them.
    pub labels: Option<Tensor>,
    /// The value of a full-intensity pixel in `images` (1 or 255).
    pub levels: f64,
}

impl Split {
    pub fn from_image_set(name: &str, set: &ImageSet) -> Split {
        let (n, r, c) = (set.len() as i64, set.rows as i64, set.cols as i64);
        Split {
            name: name.to_string(),
            images: Tensor::from_slice(&set.images).view([n, 1, r, c]),
            labels: set.labels.as_ref().map(|l| Tensor::from_slice(l)),
            levels: 1.0,
        }
    }

    /// 8-bit images (interleaved channels) as a split; `idx` picks which, in order.
    pub fn from_folder(name: &str, f: &ImageFolder, idx: &[usize]) -> Split {
        let (s, c) = (f.size as usize, f.channels as usize);
        let per = s * s * c;
        let mut bytes = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            bytes.extend_from_slice(&f.images[i * per..(i + 1) * per]);
        }
        let images = Tensor::from_slice(&bytes)
            .view([idx.len() as i64, s as i64, s as i64, c as i64])
            .permute([0, 3, 1, 2])
            .contiguous(); // [N, C, S, S]
        Split {
            name: name.to_string(),
            images,
            labels: None,
            levels: 255.0,
        }
    }

    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The split without its first `first` images (a long evaluation run in parts:
    /// `vnca eval --skip`). The name says where it starts, e.g. `test[500..]`.
    pub fn skip(&self, first: usize) -> anyhow::Result<Split> {
        let n = self.len();
        anyhow::ensure!(
            (first as i64) < n,
            "the {} split has only {n} images",
            self.name
        );
        let first = first as i64;
        Ok(Split {
            name: format!("{}[{first}..]", self.name),
            images: self.images.narrow(0, first, n - first),
            labels: self.labels.as_ref().map(|l| l.narrow(0, first, n - first)),
            levels: self.levels,
        })
    }

    /// Images `idx` as f32, zero-padded to `size` x `size`, on `device`: [B, 1, size, size].
    pub fn batch(&self, idx: &[i64], size: i64, device: Device) -> Tensor {
        let sel = self.images.index_select(0, &Tensor::from_slice(idx));
        to_model_input(&sel, size, device, self.levels)
    }

    /// Images start..start+len, as `batch`.
    pub fn range(&self, start: i64, len: i64, size: i64, device: Device) -> Tensor {
        to_model_input(
            &self.images.narrow(0, start, len),
            size,
            device,
            self.levels,
        )
    }
}

/// u8 [B, C, h, w] -> f32 [B, C, size, size] in [0, 1], centred with zero padding, on
/// `device`. `levels` is the u8 value of a full-intensity pixel.
pub fn to_model_input(images: &Tensor, size: i64, device: Device, levels: f64) -> Tensor {
    let mut x = images.to_device(device).to_kind(Kind::Float);
    if levels != 1.0 {
        x /= levels;
    }
    pad_centred(&x, size)
}

/// [B, C, h, w] -> [B, C, size, size]: centred in a zero border (as the data pipeline pads
/// 28x28 MNIST onto the 32x32 grid of the doubling model; as figures and the web page
/// show a growing grid inside the final image).
pub fn pad_centred(x: &Tensor, size: i64) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    if h == size && w == size {
        return x.shallow_clone();
    }
    let (top, left) = ((size - h) / 2, (size - w) / 2);
    x.constant_pad_nd([left, size - w - left, top, size - h - top])
}

/// Load the data set a config names and return (train, validation) splits.
pub fn load_train_val(cfg: &Config) -> anyhow::Result<(Split, Split)> {
    if cfg.data.dataset != "binarized-mnist" {
        let train = load_split(cfg, "train")?;
        let val = load_split(cfg, &cfg.data.val_split)?;
        return Ok((train, val));
    }
    let all = load_mnist(&cfg.data)?;
    let mut train: Option<ImageSet> = None;
    for name in &cfg.data.train_splits {
        let s = pick(&all, name);
        train = Some(match train {
            None => s.clone(),
            Some(t) => t.concat(s),
        });
    }
    let train = limited(
        train.expect("validated: train_splits non-empty"),
        cfg.data.limit,
    );
    let val = limited(pick(&all, &cfg.data.val_split).clone(), cfg.data.limit);
    // A valid file may hold an empty split; training and validation need images.
    for (split, set) in [
        (cfg.data.train_splits.join("+"), &train),
        (cfg.data.val_split.clone(), &val),
    ] {
        if set.is_empty() {
            anyhow::bail!("`{}`: split {split} has no images", cfg.data.path.display());
        }
    }
    Ok((
        Split::from_image_set(&cfg.data.train_splits.join("+"), &train),
        Split::from_image_set(&cfg.data.val_split, &val),
    ))
}

fn limited(set: ImageSet, limit: Option<usize>) -> ImageSet {
    match limit {
        Some(l) if l < set.len() => set.slice(0..l),
        _ => set,
    }
}

/// Load one named split ("train", "valid" or "test") of the config's data set. For the
/// emoji and folder sets, which have one held-out split, "test" is "valid".
pub fn load_split(cfg: &Config, name: &str) -> anyhow::Result<Split> {
    if !["train", "valid", "test"].contains(&name) {
        anyhow::bail!("unknown split `{name}` (splits: train, valid, test)");
    }
    let d = &cfg.data;
    let size = cfg.model.image_size as u32;
    let pick_held_out = |n: usize| {
        let (train, valid) = data::folder::split_indices(n, d.split_seed, d.valid_fraction);
        let mut idx = if name == "train" { train } else { valid };
        if let Some(l) = d.limit {
            idx.truncate(l);
        }
        idx
    };
    let split = match d.dataset.as_str() {
        "binarized-mnist" => {
            let all = load_mnist(d)?;
            Split::from_image_set(name, &limited(pick(&all, name).clone(), d.limit))
        }
        "emoji" => {
            let opts = data::emoji::EmojiOptions {
                size,
                drop_flags: d.drop_flags,
                drop_skin_tones: d.drop_skin_tones,
            };
            let items = if d.path.is_dir() {
                data::emoji::read_png_folder(&d.path, &opts)?
            } else {
                data::emoji::read_font(&d.path, &opts)?
            };
            let (train, valid) = data::emoji::split(items, d.split_seed, d.valid_fraction);
            let mut chosen = if name == "train" { train } else { valid };
            if let Some(l) = d.limit {
                chosen.truncate(l);
            }
            let folder = ImageFolder {
                names: chosen.iter().map(|e| e.name.clone()).collect(),
                images: chosen.iter().flat_map(|e| e.rgb.iter().copied()).collect(),
                size,
                channels: 3,
            };
            Split::from_folder(name, &folder, &(0..chosen.len()).collect::<Vec<_>>())
        }
        "celeba" => {
            let f = data::celeba::read_split(&d.path, name, size, d.limit)?;
            Split::from_folder(name, &f, &(0..f.names.len()).collect::<Vec<_>>())
        }
        _ => {
            let f = data::folder::read_folder(&d.path, size, cfg.model.channels as u8)?;
            let idx = pick_held_out(f.names.len());
            Split::from_folder(name, &f, &idx)
        }
    };
    if split.is_empty() {
        anyhow::bail!("`{}`: split {name} has no images", d.path.display());
    }
    Ok(split)
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

    /// Number of items it permutes: the size of the split it was made for.
    pub fn n_items(&self) -> usize {
        self.n
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
    fn skip_keeps_the_images_and_labels_after_the_first_n() {
        let set = ImageSet {
            images: (0..5 * 4).map(|i| (i / 4) as u8).collect(), // image k is all k
            labels: Some(vec![10, 11, 12, 13, 14]),
            rows: 2,
            cols: 2,
        };
        let split = Split::from_image_set("test", &set);
        let rest = split.skip(3).unwrap();
        assert_eq!(rest.name, "test[3..]");
        assert_eq!(rest.len(), 2);
        assert_eq!(
            Vec::<u8>::try_from(rest.images.flatten(0, -1)).unwrap(),
            [3, 3, 3, 3, 4, 4, 4, 4]
        );
        assert_eq!(
            Vec::<u8>::try_from(rest.labels.as_ref().unwrap()).unwrap(),
            [13, 14]
        );
        let err = split.skip(5).err().unwrap().to_string();
        assert_eq!(err, "the test split has only 5 images");
    }

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
        let y = to_model_input(&x, 32, Device::Cpu, 1.0);
        assert_eq!(y.size(), [1, 1, 32, 32]);
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 784.0);
        assert_eq!(y.double_value(&[0, 0, 1, 1]), 0.0);
        assert_eq!(y.double_value(&[0, 0, 2, 2]), 1.0);
        assert_eq!(y.double_value(&[0, 0, 29, 29]), 1.0);
        assert_eq!(y.double_value(&[0, 0, 30, 30]), 0.0);
    }
}
