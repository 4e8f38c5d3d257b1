//! `vnca-data`: the data sets VNCA trains on, from file to pixels. No tensors, no
//! model, no config: the main crate turns these into batches.
//!
//! Everything ends up as plain row-major `u8` pixels ([`ImageSet`] for the MNIST
//! formats), so that the model code does not care which file format the data came from.
//!
//! * [`idx`]: the canonical grey MNIST IDX files (raw or gzipped).
//! * [`amat`]: Larochelle & Murray's fixed binarization, as `.amat` text.
//! * [`binarize`]: our own reproducible stochastic binarization of grey MNIST.
//! * [`packed`]: a compact gzipped bit-packed file for shipping binarized MNIST.
//! * [`download`]: fetching the Larochelle files with checksum verification.
//! * [`folder`]: a folder of PNG/JPEG/GIF pictures, cropped and shrunk to a square.
//! * [`celeba`]: CelebA's aligned faces and its partition file.
//! * [`emoji`]: colour emoji from the Noto Color Emoji font or a folder of PNGs.
//!
//! All errors are [`DataError`]s that name the file and, where it applies, the
//! line or byte at fault; no data-derived value is unwrapped.

pub mod amat;
pub mod binarize;
mod bytes;
pub mod celeba;
pub mod download;
pub mod emoji;
pub mod error;
pub mod folder;
pub mod idx;
pub mod packed;

pub use error::DataError;

use std::ops::Range;
use std::path::Path;

/// Images of one split, in memory, row-major u8 pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// `len() * rows * cols` pixels, image after image, each row-major.
    pub images: Vec<u8>,
    /// One label per image, when the source has labels.
    pub labels: Option<Vec<u8>>,
    pub rows: usize,
    pub cols: usize,
}

impl ImageSet {
    /// Pixels per image.
    fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// True when `images` holds a whole number of non-empty images, the
    /// invariant every writer checks before trusting `len()`.
    fn is_whole(&self) -> bool {
        self.pixels() > 0 && self.len() * self.pixels() == self.images.len()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        match self.pixels() {
            0 => 0,
            p => self.images.len() / p,
        }
    }

    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixels of image `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let p = self.pixels();
        &self.images[i * p..(i + 1) * p]
    }

    /// Label of image `i`, if the set has labels.
    ///
    /// # Panics
    /// If `i >= self.len()` and the set has labels, like slice indexing.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.as_ref().map(|l| l[i])
    }

    /// The images (and labels) with indices in `range`, copied.
    ///
    /// # Panics
    /// If `range` reaches past `self.len()` or is decreasing, like slice indexing.
    pub fn slice(&self, range: Range<usize>) -> ImageSet {
        let p = self.pixels();
        ImageSet {
            images: self.images[range.start * p..range.end * p].to_vec(),
            labels: self.labels.as_ref().map(|l| l[range].to_vec()),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// `self` followed by `other`. Labels are kept only if both have them,
    /// since a partially labelled set would misalign labels and images.
    ///
    /// # Panics
    /// If the image shapes differ: that is a programming error, not bad data.
    pub fn concat(&self, other: &ImageSet) -> ImageSet {
        assert_eq!(
            (self.rows, self.cols),
            (other.rows, other.cols),
            "ImageSet::concat: image shapes differ"
        );
        let labels = match (&self.labels, &other.labels) {
            (Some(a), Some(b)) => Some([a.as_slice(), b.as_slice()].concat()),
            _ => None,
        };
        ImageSet {
            images: [self.images.as_slice(), other.images.as_slice()].concat(),
            labels,
            rows: self.rows,
            cols: self.cols,
        }
    }
}

/// The three splits of binarized MNIST (pixels 0/1).
#[derive(Clone, Debug, PartialEq)]
pub struct BinarizedMnist {
    pub train: ImageSet,
    pub valid: ImageSet,
    pub test: ImageSet,
}

/// File names of the Larochelle & Murray splits, in train, valid, test order.
pub const AMAT_NAMES: [&str; 3] = [
    "binarized_mnist_train.amat",
    "binarized_mnist_valid.amat",
    "binarized_mnist_test.amat",
];

/// Load binarized MNIST from either our packed file (see packed.rs) or a directory holding
/// the three Larochelle files binarized_mnist_{train,valid,test}.amat. Errors name the path.
pub fn load_binarized_mnist(path: &Path) -> Result<BinarizedMnist, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !meta.is_dir() {
        return packed::read_packed(path);
    }
    let missing: Vec<&str> = AMAT_NAMES
        .iter()
        .copied()
        .filter(|n| !path.join(n).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(DataError::invalid(
            path,
            format!(
                "directory lacks {} (expected the three Larochelle .amat files, \
                 or pass a packed file instead)",
                missing.join(", ")
            ),
        ));
    }
    let [train, valid, test] = AMAT_NAMES;
    Ok(BinarizedMnist {
        train: amat::read_amat(&path.join(train))?,
        valid: amat::read_amat(&path.join(valid))?,
        test: amat::read_amat(&path.join(test))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn set(n: usize, labels: bool) -> ImageSet {
        ImageSet {
            images: (0..n * 6).map(|v| v as u8).collect(),
            labels: labels.then(|| (0..n as u8).collect()),
            rows: 2,
            cols: 3,
        }
    }

    /// A random-looking 28x28 binary set, for the file-format tests.
    pub(crate) fn binary_set(n: usize, salt: usize, labels: bool) -> ImageSet {
        ImageSet {
            images: (0..n * 784)
                .map(|i| ((((i * 7 + salt) * 2654435761) >> 7) & 1) as u8)
                .collect(),
            labels: labels.then(|| (0..n).map(|i| ((i + salt) % 10) as u8).collect()),
            rows: 28,
            cols: 28,
        }
    }

    /// Where the real MNIST files are: `VNCA_MNIST_DIR`, else the project's
    /// `shared/data/mnist` beside the workspace. The tests need them (CI has them): a missing copy is a
    /// failure, not a silent skip. Returns `Some` always; the Option keeps call sites terse.
    pub(crate) fn real_mnist_dir() -> Option<PathBuf> {
        let dir = std::env::var_os("VNCA_MNIST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist")
            });
        assert!(
            dir.join("train-images-idx3-ubyte.gz").is_file(),
            "real MNIST not found in `{}` (set VNCA_MNIST_DIR)",
            dir.display()
        );
        Some(dir)
    }

    #[test]
    fn image_set_accessors() {
        let s = set(4, true);
        assert_eq!(s.len(), 4);
        assert!(!s.is_empty());
        assert_eq!(s.image(1), &[6, 7, 8, 9, 10, 11]);
        assert_eq!(s.label(3), Some(3));
        assert_eq!(set(2, false).label(0), None);
        let t = s.slice(1..3);
        assert_eq!(t.len(), 2);
        assert_eq!(t.image(0), s.image(1));
        assert_eq!(t.labels, Some(vec![1, 2]));
        assert!(s.slice(2..2).is_empty());
    }

    #[test]
    fn concat_keeps_labels_only_if_both_have_them() {
        let a = set(2, true);
        let b = set(3, true);
        let ab = a.concat(&b);
        assert_eq!(ab.len(), 5);
        assert_eq!(ab.image(2), b.image(0));
        assert_eq!(ab.labels, Some(vec![0, 1, 0, 1, 2]));
        assert_eq!(a.concat(&set(1, false)).labels, None);
        assert_eq!(set(1, false).concat(&a).labels, None);
    }

    #[test]
    fn empty_shape_has_no_images() {
        let s = ImageSet {
            images: vec![],
            labels: None,
            rows: 0,
            cols: 28,
        };
        assert!(s.is_empty());
    }

    #[test]
    fn loads_amat_directory_and_packed_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = BinarizedMnist {
            train: binary_set(5, 1, false),
            valid: binary_set(2, 2, false),
            test: binary_set(3, 3, false),
        };
        for (name, s) in AMAT_NAMES
            .iter()
            .zip([&data.train, &data.valid, &data.test])
        {
            amat::write_amat(&dir.path().join(name), s).unwrap();
        }
        assert_eq!(load_binarized_mnist(dir.path()).unwrap(), data);

        let file = dir.path().join("bmnist.vnca.gz");
        packed::write_packed(&file, &data).unwrap();
        assert_eq!(load_binarized_mnist(&file).unwrap(), data);
    }

    #[test]
    fn load_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_binarized_mnist(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        assert!(e.contains("binarized_mnist_valid.amat"), "{e}");
        let nowhere = dir.path().join("nope.gz");
        let e = load_binarized_mnist(&nowhere).unwrap_err();
        assert!(matches!(e, DataError::Io { .. }));
        assert!(e.to_string().contains("nope.gz"));
    }
}
