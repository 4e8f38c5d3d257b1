//! Deterministic stochastic binarization of grey MNIST.
//!
//! Larochelle's fixed binarization cannot be re-derived from grey MNIST, and
//! dynamic binarization changes every epoch; we want a fixed set that anyone
//! can regenerate bit for bit from the canonical IDX files, so the algorithm
//! is specified completely here:
//!
//! 1. One generator, `rand_pcg::Pcg64::seed_from_u64(seed)` (default seed
//!    [`DEFAULT_SEED`] = 0), for the whole call of [`binarize_mnist`].
//! 2. Walk the 60,000 MNIST train images in file order, then the 10,000 t10k
//!    images in file order; within an image, pixels in row-major order.
//! 3. For each pixel value `p` draw one `r = next_u32()` and emit 1 iff
//!    `(r as u64) * 255 < (p as u64) << 32`, i.e. `r / 2^32 < p / 255`. So
//!    `P(1) = ceil(p * 2^32 / 255) / 2^32`, which is `p / 255` to within
//!    `2^-32`; `p = 0` never gives 1 and `p = 255` always does. Integer
//!    arithmetic only, so no float rounding differs across machines.
//! 4. Splits: train = binarized train images 0..50,000, valid = 50,000..60,000,
//!    test = all binarized t10k images. Labels are carried along.
//!
//! [`binarize`] applies steps 1 and 3 to a single set with its own generator.

use super::{BinarizedMnist, ImageSet};
use rand::{RngCore, SeedableRng};
use rand_pcg::Pcg64;

/// Seed of the binarization we ship.
pub const DEFAULT_SEED: u64 = 0;
/// Number of MNIST train images kept for training; the rest become `valid`.
pub const TRAIN_SIZE: usize = 50_000;

/// Binarizes one grey set with a fresh generator seeded with `seed`.
pub fn binarize(grey: &ImageSet, seed: u64) -> ImageSet {
    binarize_with(grey, &mut Pcg64::seed_from_u64(seed))
}

/// Binarizes MNIST train then test from one generator and splits train into
/// the first [`TRAIN_SIZE`] images and the rest (see the module doc). A
/// `train` smaller than [`TRAIN_SIZE`] yields an empty `valid`.
pub fn binarize_mnist(train: &ImageSet, test: &ImageSet, seed: u64) -> BinarizedMnist {
    let mut rng = Pcg64::seed_from_u64(seed);
    let full = binarize_with(train, &mut rng);
    let test = binarize_with(test, &mut rng);
    let cut = TRAIN_SIZE.min(full.len());
    BinarizedMnist {
        train: full.slice(0..cut),
        valid: full.slice(cut..full.len()),
        test,
    }
}

/// One draw per pixel, in storage (= row-major, image after image) order.
fn binarize_with(grey: &ImageSet, rng: &mut Pcg64) -> ImageSet {
    let images = grey
        .images
        .iter()
        .map(|&p| u8::from(u64::from(rng.next_u32()) * 255 < u64::from(p) << 32))
        .collect();
    ImageSet {
        images,
        labels: grey.labels.clone(),
        rows: grey.rows,
        cols: grey.cols,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(value: u8, n: usize) -> ImageSet {
        ImageSet {
            images: vec![value; n],
            labels: None,
            rows: 1,
            cols: 1,
        }
    }

    #[test]
    fn deterministic_per_seed() {
        let g = ImageSet {
            images: (0..=255).cycle().take(4096).collect(),
            labels: Some((0..16).map(|i| i % 10).collect()),
            rows: 16,
            cols: 16,
        };
        let a = binarize(&g, 7);
        assert_eq!(a, binarize(&g, 7));
        assert_ne!(a.images, binarize(&g, 8).images);
        assert_eq!(a.labels, g.labels);
        assert!(a.images.iter().all(|&b| b <= 1));
    }

    #[test]
    fn golden_bits_pin_the_algorithm() {
        // If this changes, the shipped file can no longer be reproduced.
        let g = ImageSet {
            images: vec![128; 32],
            labels: None,
            rows: 4,
            cols: 8,
        };
        let bits: String = binarize(&g, DEFAULT_SEED)
            .images
            .iter()
            .map(|b| char::from(b'0' + b))
            .collect();
        assert_eq!(bits, GOLDEN);
    }
    /// Cross-checked against an independent Python re-implementation of
    /// rand_core 0.6 `seed_from_u64` + PCG XSL-RR 128/64 and the rule above.
    const GOLDEN: &str = "01100110111011010111011000000101";

    #[test]
    fn extremes_are_exact() {
        assert!(binarize(&flat(0, 100_000), 1)
            .images
            .iter()
            .all(|&b| b == 0));
        assert!(binarize(&flat(255, 100_000), 1)
            .images
            .iter()
            .all(|&b| b == 1));
    }

    #[test]
    fn probability_is_pixel_over_255() {
        let n = 400_000;
        for (k, p) in [1u8, 64, 128, 200, 254].into_iter().enumerate() {
            let ones = binarize(&flat(p, n), k as u64)
                .images
                .iter()
                .map(|&b| b as usize)
                .sum::<usize>();
            let q = f64::from(p) / 255.0;
            let sd = (q * (1.0 - q) / n as f64).sqrt();
            let got = ones as f64 / n as f64;
            assert!((got - q).abs() < 6.0 * sd, "p={p}: got {got}, want {q}");
        }
    }

    #[test]
    fn one_stream_spans_train_then_test() {
        let train = flat(128, 60_000);
        let test = flat(128, 40);
        let b = binarize_mnist(&train, &test, 3);
        let both = binarize(&train.concat(&test), 3);
        assert_eq!(b.train.images, both.images[..50_000]);
        assert_eq!(b.valid.images, both.images[50_000..60_000]);
        assert_eq!(b.test.images, both.images[60_000..]);
    }

    #[test]
    fn real_mnist_splits() {
        let Some(dir) = super::super::tests::real_mnist_dir() else {
            return;
        };
        let (train, test) = super::super::idx::read_mnist_dir(&dir).unwrap();
        let b = binarize_mnist(&train, &test, DEFAULT_SEED);
        assert_eq!(
            (b.train.len(), b.valid.len(), b.test.len()),
            (50_000, 10_000, 10_000)
        );
        assert_eq!(b.valid.label(0), train.label(50_000));
        assert_eq!(b.test.labels, test.labels);
        assert!(b.train.images.iter().all(|&p| p <= 1));
        let mean =
            b.train.images.iter().map(|&p| p as f64).sum::<f64>() / b.train.images.len() as f64;
        assert!((mean - 0.13).abs() < 0.01, "mean {mean}");
    }
}
