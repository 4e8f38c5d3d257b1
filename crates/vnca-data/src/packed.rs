//! Our compact file for shipping binarized MNIST.
//!
//! The `.amat` text spends two bytes per pixel (about 110 MB for the three
//! splits); bit-packing and gzip bring the same content to a few MB, small
//! enough to ship with the crate, and reading it takes milliseconds.
//!
//! Layout: the whole file is one gzip stream (written at best compression).
//! Inside, with big-endian integers:
//!
//! ```text
//! magic      8 bytes  b"VNCABMN1"
//! rows       u32
//! cols       u32
//! 3 times, for train, valid, test:
//!   n          u32     number of images
//!   has_labels u8      0 or 1
//!   images     n * ceil(rows*cols/8) bytes: each image bit-packed on its own,
//!              pixel 0 in the most significant bit, pad bits zero
//!   labels     n bytes (digits 0..=9), only if has_labels == 1
//! end        4 bytes  b"END!"
//! ```
//!
//! Nothing may follow the end marker. Byte offsets in errors count bytes of
//! the decompressed stream.

use super::bytes::{gunzip, is_gzip, read_file, Cursor};
use super::{BinarizedMnist, DataError, ImageSet};
use flate2::{write::GzEncoder, Compression};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// First bytes of the decompressed stream; the digit is the format version.
pub const MAGIC: &[u8; 8] = b"VNCABMN1";
/// Last bytes of the decompressed stream, so truncation is always detected.
pub const END_MARKER: &[u8; 4] = b"END!";

/// Writes `data` atomically: to a temporary file in the same directory, then
/// renamed over `path`, so a crash never leaves a half-written data file.
/// Refuses pixels other than 0/1, labels above 9 and inconsistent shapes.
pub fn write_packed(path: &Path, data: &BinarizedMnist) -> Result<(), DataError> {
    let raw = encode(data).map_err(|msg| DataError::invalid(path, msg))?;
    let tmp = temp_path(path)?;
    let result = write_gzip(&tmp, &raw)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e)));
    if result.is_err() {
        // Best effort: the original error matters more than a failed cleanup.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a file written by [`write_packed`], checking every field.
pub fn read_packed(path: &Path) -> Result<BinarizedMnist, DataError> {
    read_packed_bytes(path, &read_file(path)?)
}

/// Reads the bytes of a file written by [`write_packed`] (one embedded in the binary,
/// say); `path` only names it in errors.
pub fn read_packed_bytes(path: &Path, raw: &[u8]) -> Result<BinarizedMnist, DataError> {
    if !is_gzip(raw) {
        return Err(DataError::format(
            path,
            0,
            "not a gzip file (expected bytes 1f 8b): not a packed binarized MNIST file",
        ));
    }
    let data = gunzip(path, raw)?;
    decode(path, &data)
}

/// Bytes per bit-packed image of `pixels` pixels.
fn packed_len(pixels: usize) -> usize {
    pixels.div_ceil(8)
}

/// Serializes `data` to the uncompressed layout, or says what is unwritable.
fn encode(data: &BinarizedMnist) -> Result<Vec<u8>, String> {
    let (rows, cols) = (data.train.rows, data.train.cols);
    let pixels = rows * cols;
    let (rows32, cols32) = match (u32::try_from(rows), u32::try_from(cols)) {
        (Ok(r), Ok(c)) if pixels > 0 => (r, c),
        _ => return Err(format!("unsupported image shape {rows}x{cols}")),
    };
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&rows32.to_be_bytes());
    out.extend_from_slice(&cols32.to_be_bytes());
    for (name, set) in splits(data) {
        if (set.rows, set.cols) != (rows, cols) || !set.is_whole() {
            return Err(format!(
                "{name}: {} pixels of {}x{} do not make whole {rows}x{cols} images",
                set.images.len(),
                set.rows,
                set.cols
            ));
        }
        let n = set.len();
        let n32 = u32::try_from(n).map_err(|_| format!("{name}: {n} images is too many"))?;
        if let Some(i) = set.images.iter().position(|&p| p > 1) {
            return Err(format!(
                "{name}: pixel {} of image {} is {}, expected 0 or 1",
                i % pixels,
                i / pixels,
                set.images[i]
            ));
        }
        out.extend_from_slice(&n32.to_be_bytes());
        out.push(u8::from(set.labels.is_some()));
        out.reserve(n * packed_len(pixels));
        for image in set.images.chunks_exact(pixels) {
            for bits in image.chunks(8) {
                let byte = bits
                    .iter()
                    .enumerate()
                    .fold(0u8, |acc, (k, &b)| acc | (b << (7 - k)));
                out.push(byte);
            }
        }
        if let Some(labels) = &set.labels {
            if labels.len() != n {
                return Err(format!("{name}: {} labels for {n} images", labels.len()));
            }
            if let Some(i) = labels.iter().position(|&l| l > 9) {
                return Err(format!(
                    "{name}: label {} of image {i} is not 0-9",
                    labels[i]
                ));
            }
            out.extend_from_slice(labels);
        }
    }
    out.extend_from_slice(END_MARKER);
    Ok(out)
}

/// Parses the uncompressed layout.
fn decode(path: &Path, data: &[u8]) -> Result<BinarizedMnist, DataError> {
    let mut c = Cursor::new(path, data);
    let magic = c.take(MAGIC.len(), "magic")?;
    if magic != MAGIC {
        return Err(c.error_at(
            0,
            format!(
                "bad magic \"{}\", expected \"{}\"",
                magic.escape_ascii(),
                MAGIC.escape_ascii()
            ),
        ));
    }
    let rows = c.u32_be("row count")? as usize;
    let cols = c.u32_be("column count")? as usize;
    let pixels = match rows.checked_mul(cols) {
        Some(p) if p > 0 => p,
        _ => {
            return Err(c.error_at(
                8,
                format!("pixel count overflow or empty shape: {rows}x{cols}"),
            ))
        }
    };
    let train = decode_split(&mut c, "train", rows, cols, pixels)?;
    let valid = decode_split(&mut c, "valid", rows, cols, pixels)?;
    let test = decode_split(&mut c, "test", rows, cols, pixels)?;
    let at = c.offset();
    match c.take(END_MARKER.len(), "end marker") {
        Ok(m) if m == END_MARKER => {}
        _ => return Err(c.error_at(at, "missing end marker `END!`")),
    }
    c.finish()?;
    Ok(BinarizedMnist { train, valid, test })
}

/// Parses one split: count, label flag, packed images, optional labels.
fn decode_split(
    c: &mut Cursor<'_>,
    name: &str,
    rows: usize,
    cols: usize,
    pixels: usize,
) -> Result<ImageSet, DataError> {
    let n = c.u32_be(&format!("{name} image count"))? as usize;
    let flag_at = c.offset();
    let has_labels = match c.u8(&format!("{name} label flag"))? {
        0 => false,
        1 => true,
        f => {
            return Err(c.error_at(
                flag_at,
                format!("{name}: label flag is {f}, expected 0 or 1"),
            ))
        }
    };
    let per = packed_len(pixels);
    let total = n
        .checked_mul(per)
        .ok_or_else(|| c.error(format!("{name}: pixel count overflow ({n} images)")))?;
    let start = c.offset();
    let packed = c.take(total, &format!("{name}: {n} packed images"))?;
    let mut images = Vec::with_capacity(n * pixels);
    let pad_mask = match pixels % 8 {
        0 => 0,
        used => 0xffu8 >> used,
    };
    for (i, chunk) in packed.chunks_exact(per).enumerate() {
        let (last, full) = chunk.split_last().ok_or_else(|| c.error("empty image"))?;
        if last & pad_mask != 0 {
            let at = start + ((i + 1) * per - 1) as u64;
            return Err(c.error_at(at, format!("{name}: image {i} has nonzero pad bits")));
        }
        for &byte in full {
            images.extend((0..8).rev().map(|k| (byte >> k) & 1));
        }
        let tail = pixels - 8 * full.len();
        images.extend((0..tail).map(|k| (last >> (7 - k)) & 1));
    }
    let labels = if has_labels {
        let at = c.offset();
        let labels = c.take(n, &format!("{name}: {n} labels"))?;
        if let Some(i) = labels.iter().position(|&l| l > 9) {
            return Err(c.error_at(
                at + i as u64,
                format!("{name}: label {} of image {i} is not 0-9", labels[i]),
            ));
        }
        Some(labels.to_vec())
    } else {
        None
    };
    Ok(ImageSet {
        images,
        labels,
        rows,
        cols,
    })
}

/// The splits in file order, with names for messages.
fn splits(data: &BinarizedMnist) -> [(&'static str, &ImageSet); 3] {
    [
        ("train", &data.train),
        ("valid", &data.valid),
        ("test", &data.test),
    ]
}

/// `.NAME.tmp.PID` next to `path`, so the final rename stays on one filesystem.
fn temp_path(path: &Path) -> Result<PathBuf, DataError> {
    let name = path
        .file_name()
        .ok_or_else(|| DataError::invalid(path, "not a file path"))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp.{}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Gzips `raw` at best compression into `path` and syncs it to disk.
fn write_gzip(path: &Path, raw: &[u8]) -> Result<(), DataError> {
    let io = |e| DataError::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut z = GzEncoder::new(file, Compression::best());
    z.write_all(raw).map_err(io)?;
    let file = z.finish().map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{binary_set, real_mnist_dir};
    use super::*;

    fn sample() -> BinarizedMnist {
        BinarizedMnist {
            train: binary_set(7, 1, true),
            valid: binary_set(3, 2, false),
            test: binary_set(4, 3, true),
        }
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Decodes a hand-made uncompressed stream through the file reader.
    fn read_raw(raw: &[u8]) -> Result<BinarizedMnist, DataError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gz");
        std::fs::write(&p, gz(raw)).unwrap();
        read_packed(&p)
    }

    fn err(raw: &[u8]) -> String {
        read_raw(raw).unwrap_err().to_string()
    }

    #[test]
    fn round_trip_is_bit_exact_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.gz");
        write_packed(&p, &sample()).unwrap();
        write_packed(&p, &sample()).unwrap(); // overwriting is fine
        assert_eq!(read_packed(&p).unwrap(), sample());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn odd_shapes_use_zero_pad_bits() {
        let set = |n: usize| ImageSet {
            images: (0..n * 15).map(|i| (i % 3 == 1) as u8).collect(),
            labels: None,
            rows: 3,
            cols: 5,
        };
        let data = BinarizedMnist {
            train: set(3),
            valid: set(0),
            test: set(1),
        };
        let raw = encode(&data).unwrap();
        assert_eq!(decode(Path::new("x"), &raw).unwrap(), data);
        // Header 16, train count+flag 5, then image 0 is 2 bytes: 0100 1001 0010 010_
        assert_eq!(raw[21..23], [0b0100_1001, 0b0010_0100]);
        let mut bad = raw.clone();
        bad[22] |= 1;
        let e = decode(Path::new("x"), &bad).unwrap_err().to_string();
        assert_eq!(e, "`x`: byte 22: train: image 0 has nonzero pad bits");
    }

    #[test]
    fn writer_refuses_bad_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.gz");
        let mut d = sample();
        d.valid.images[784 + 5] = 2;
        let e = write_packed(&p, &d).unwrap_err().to_string();
        assert!(
            e.ends_with("valid: pixel 5 of image 1 is 2, expected 0 or 1"),
            "{e}"
        );
        let mut d = sample();
        d.test.labels = Some(vec![0, 1, 12, 3]);
        let e = write_packed(&p, &d).unwrap_err().to_string();
        assert!(e.ends_with("test: label 12 of image 2 is not 0-9"), "{e}");
        let mut d = sample();
        d.test.cols = 14;
        d.test.rows = 56;
        assert!(write_packed(&p, &d).is_err());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn rejects_non_gzip_and_corrupt_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.amat");
        std::fs::write(&p, b"0 1 0 1").unwrap();
        let e = read_packed(&p).unwrap_err().to_string();
        assert!(e.contains("byte 0: not a gzip file"), "{e}");
        let mut z = gz(&encode(&sample()).unwrap());
        let cut = z.len() - 20;
        z.truncate(cut);
        std::fs::write(&p, &z).unwrap();
        let e = read_packed(&p).unwrap_err().to_string();
        assert!(e.contains("corrupt gzip"), "{e}");
    }

    #[test]
    fn rejects_malformed_streams() {
        let good = encode(&sample()).unwrap();
        let mut bad = good.clone();
        bad[..8].copy_from_slice(b"VNCABMN2");
        assert!(err(&bad).contains("byte 0: bad magic \"VNCABMN2\", expected \"VNCABMN1\""));
        bad[..2].copy_from_slice(&[0x1f, 0x8b]);
        let e = err(&bad);
        assert!(e.contains(r#"bad magic "\x1f\x8bCABMN2""#), "{e}");
        let e = err(&good[..100]);
        assert!(
            e.contains("byte 100: unexpected end of data: train: 7 packed images needs 686 bytes from byte 21"),
            "{e}"
        );
        let e = err(&good[..good.len() - 4]);
        assert!(e.ends_with("missing end marker `END!`"), "{e}");
        let mut bad = good.clone();
        bad.push(0);
        let e = err(&bad);
        assert!(
            e.ends_with(&format!("byte {}: 1 unexpected trailing bytes", good.len())),
            "{e}"
        );
        let mut bad = good.clone();
        bad[20] = 2;
        assert!(err(&bad).ends_with("byte 20: train: label flag is 2, expected 0 or 1"));
        let mut bad = good.clone();
        bad[21 + 7 * 98] = 10;
        let e = err(&bad);
        assert!(
            e.ends_with("byte 707: train: label 10 of image 0 is not 0-9"),
            "{e}"
        );
        let mut bad = good.clone();
        bad[8..16].copy_from_slice(&[0xff; 8]);
        let e = err(&bad);
        assert!(e.contains("unexpected end of data"), "{e}");
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&[0xff; 4]);
        assert!(err(&bad).contains("needs 420906794910 bytes"));
    }

    #[test]
    fn real_mnist_round_trip_is_fast() {
        let Some(dir) = real_mnist_dir() else { return };
        let (train, test) = super::super::idx::read_mnist_dir(&dir).unwrap();
        let data = super::super::binarize::binarize_mnist(&train, &test, 0);
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("binarized_mnist.vnca.gz");
        write_packed(&p, &data).unwrap();
        let t = std::time::Instant::now();
        let back = read_packed(&p).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let size = std::fs::metadata(&p).unwrap().len();
        eprintln!("packed real binarized MNIST: {size} bytes, read in {secs:.3} s");
        assert!(back == data);
        if !cfg!(debug_assertions) {
            assert!(secs < 1.0, "read took {secs} s");
        }
    }
}
