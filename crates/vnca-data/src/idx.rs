//! Readers for the canonical MNIST IDX files (LeCun et al.), raw or gzipped.
//!
//! IDX layout, big-endian: a `u32` magic (`0x00000803` for 3-d `u8` image
//! arrays, `0x00000801` for 1-d `u8` label arrays), one `u32` per dimension,
//! then the `u8` payload. Gzip is detected from the content (bytes `1f 8b`),
//! not from the file name. Every dimension is checked against the bytes that
//! are actually present before anything is allocated, so a corrupt header
//! cannot ask for gigabytes; byte offsets in errors count decompressed bytes.

use super::bytes::{read_maybe_gzip, Cursor};
use super::{DataError, ImageSet};
use std::path::{Path, PathBuf};

/// Magic of an IDX file holding a 3-d array of unsigned bytes (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of an IDX file holding a 1-d array of unsigned bytes (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads an IDX image file: `n` images of `rows x cols` pixels, no labels.
pub fn read_images(path: &Path) -> Result<ImageSet, DataError> {
    let data = read_maybe_gzip(path)?;
    let mut c = Cursor::new(path, &data);
    check_magic(&mut c, IMAGES_MAGIC, "images")?;
    let n = c.u32_be("image count")? as usize;
    let rows = c.u32_be("row count")? as usize;
    let cols = c.u32_be("column count")? as usize;
    if rows == 0 || cols == 0 {
        return Err(c.error_at(8, format!("image shape {rows}x{cols} has no pixels")));
    }
    let total = n
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .ok_or_else(|| {
            c.error_at(
                4,
                format!("dimensions {n}x{rows}x{cols} overflow the pixel count"),
            )
        })?;
    let pixels = c.take(total, &format!("{n} images of {rows}x{cols}"))?;
    c.finish()?;
    Ok(ImageSet {
        images: pixels.to_vec(),
        labels: None,
        rows,
        cols,
    })
}

/// Reads an IDX label file. Labels must be digits 0..=9, as in MNIST.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let data = read_maybe_gzip(path)?;
    let mut c = Cursor::new(path, &data);
    check_magic(&mut c, LABELS_MAGIC, "labels")?;
    let n = c.u32_be("label count")? as usize;
    let start = c.offset();
    let labels = c.take(n, &format!("{n} labels"))?;
    c.finish()?;
    if let Some(i) = labels.iter().position(|&l| l > 9) {
        return Err(c.error_at(
            start + i as u64,
            format!("label {} of image {i} is not a digit 0-9", labels[i]),
        ));
    }
    Ok(labels.to_vec())
}

/// Reads the four MNIST files in `dir` and returns `(train, test)` with labels.
///
/// Each file may be named with or without `.gz`
/// (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
/// `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`).
pub fn read_mnist_dir(dir: &Path) -> Result<(ImageSet, ImageSet), DataError> {
    let train = read_labelled(dir, "train")?;
    let test = read_labelled(dir, "t10k")?;
    Ok((train, test))
}

/// Reads `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte` and
/// joins them, refusing mismatched counts.
fn read_labelled(dir: &Path, prefix: &str) -> Result<ImageSet, DataError> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let mut images = read_images(&images_path)?;
    let labels = read_labels(&labels_path)?;
    if labels.len() != images.len() {
        return Err(DataError::invalid(
            &labels_path,
            format!(
                "has {} labels but `{}` has {} images",
                labels.len(),
                images_path.display(),
                images.len()
            ),
        ));
    }
    images.labels = Some(labels);
    Ok(images)
}

/// The path of `name.gz` or `name` in `dir`, whichever exists (gzip first).
fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    Err(DataError::invalid(
        dir,
        format!("neither {name}.gz nor {name} is present"),
    ))
}

/// Reads the magic number and fails, naming both numbers, if it is wrong.
fn check_magic(c: &mut Cursor<'_>, expected: u32, kind: &str) -> Result<(), DataError> {
    let found = c.u32_be("magic number")?;
    if found != expected {
        return Err(c.error_at(
            0,
            format!("bad magic 0x{found:08x}, expected 0x{expected:08x} (IDX {kind})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn idx_images(n: u32, rows: u32, cols: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [IMAGES_MAGIC, n, rows, cols] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut v = LABELS_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        v.extend_from_slice(labels);
        v
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn err(bytes: &[u8], labels: bool) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "f", bytes);
        if labels {
            read_labels(&p).unwrap_err().to_string()
        } else {
            read_images(&p).unwrap_err().to_string()
        }
    }

    #[test]
    fn reads_small_raw_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx_images(2, 2, 3, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let raw = read_images(&write(dir.path(), "raw.gz", &bytes)).unwrap();
        let zipped = read_images(&write(dir.path(), "zipped", &gz(&bytes))).unwrap();
        assert_eq!(raw, zipped);
        assert_eq!((raw.len(), raw.rows, raw.cols), (2, 2, 3));
        assert_eq!(raw.image(1), &[7, 8, 9, 10, 11, 12]);
        let l = read_labels(&write(dir.path(), "l", &gz(&idx_labels(&[3, 9])))).unwrap();
        assert_eq!(l, vec![3, 9]);
    }

    #[test]
    fn rejects_bad_magic() {
        let e = err(&idx_labels(&[1]), false);
        assert!(
            e.ends_with("byte 0: bad magic 0x00000801, expected 0x00000803 (IDX images)"),
            "{e}"
        );
        let e = err(&idx_images(1, 1, 1, &[0]), true);
        assert!(
            e.contains("bad magic 0x00000803, expected 0x00000801"),
            "{e}"
        );
    }

    #[test]
    fn rejects_truncation_and_trailing_bytes() {
        let e = err(&idx_images(2, 2, 2, &[0; 7]), false);
        assert!(
            e.ends_with("byte 23: unexpected end of data: 2 images of 2x2 needs 8 bytes from byte 16, but only 7 remain"),
            "{e}"
        );
        let e = err(&IMAGES_MAGIC.to_be_bytes()[..3], false);
        assert!(
            e.contains("byte 3: unexpected end of data: magic number"),
            "{e}"
        );
        let e = err(&idx_images(1, 1, 2, &[0, 0, 0]), false);
        assert!(e.ends_with("byte 18: 1 unexpected trailing bytes"), "{e}");
        let mut l = idx_labels(&[1, 2]);
        l.push(0);
        assert!(err(&l, true).ends_with("byte 10: 1 unexpected trailing bytes"));
    }

    #[test]
    fn rejects_absurd_dims_without_allocating() {
        let e = err(&idx_images(u32::MAX, u32::MAX, u32::MAX, &[]), false);
        assert!(
            e.contains("overflow") || e.contains("unexpected end"),
            "{e}"
        );
        let e = err(&idx_images(1_000_000, 1000, 1000, &[0; 10]), false);
        assert!(e.contains("needs 1000000000000 bytes"), "{e}");
        let e = err(&idx_images(1, 0, 28, &[]), false);
        assert!(e.contains("byte 8: image shape 0x28 has no pixels"), "{e}");
    }

    #[test]
    fn rejects_non_digit_labels() {
        let e = err(&idx_labels(&[1, 2, 10]), true);
        assert!(
            e.ends_with("byte 10: label 10 of image 2 is not a digit 0-9"),
            "{e}"
        );
    }

    #[test]
    fn dir_accepts_both_names_and_checks_counts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "train-images-idx3-ubyte.gz",
            &gz(&idx_images(2, 1, 1, &[4, 5])),
        );
        write(d, "train-labels-idx1-ubyte", &idx_labels(&[1, 2]));
        write(d, "t10k-images-idx3-ubyte", &idx_images(1, 1, 1, &[6]));
        let e = read_mnist_dir(d).unwrap_err().to_string();
        assert!(e.contains("neither t10k-labels-idx1-ubyte.gz nor"), "{e}");
        write(d, "t10k-labels-idx1-ubyte.gz", &gz(&idx_labels(&[7, 8])));
        let e = read_mnist_dir(d).unwrap_err().to_string();
        assert!(e.contains("has 2 labels but"), "{e}");
        assert!(e.contains("has 1 images"), "{e}");
        write(d, "t10k-labels-idx1-ubyte.gz", &gz(&idx_labels(&[7])));
        let (train, test) = read_mnist_dir(d).unwrap();
        assert_eq!(train.labels, Some(vec![1, 2]));
        assert_eq!(test.image(0), &[6]);
        assert_eq!(test.label(0), Some(7));
    }

    #[test]
    fn reads_real_mnist() {
        let Some(dir) = super::super::tests::real_mnist_dir() else {
            return;
        };
        let (train, test) = read_mnist_dir(&dir).unwrap();
        assert_eq!((train.len(), train.rows, train.cols), (60000, 28, 28));
        assert_eq!((test.len(), test.rows, test.cols), (10000, 28, 28));
        assert_eq!(train.label(0), Some(5));
        assert_eq!(test.label(0), Some(7));
        // The decompressed bytes are the canonical files listed in SHA256SUMS.
        if let Ok(sums) = std::fs::read_to_string(dir.join("SHA256SUMS")) {
            for line in sums.lines().filter(|l| !l.starts_with('#')) {
                let mut it = line.split_whitespace();
                let (Some(sum), Some(name)) = (it.next(), it.next()) else {
                    continue;
                };
                let bytes = read_maybe_gzip(&dir.join(format!("{name}.gz"))).unwrap();
                let digest =
                    sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes));
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(hex, sum, "{name}");
            }
        }
    }
}
