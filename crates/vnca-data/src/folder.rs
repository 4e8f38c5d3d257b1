//! A folder of PNG/JPEG pictures (e.g. CelebA) as one array of small images.
//!
//! Every picture goes through the same steps, shared with the emoji reader:
//! 1. decode, with the format read from the content (renamed files are common);
//! 2. composite any alpha channel on white, *before* resizing: resizing
//!    straight RGBA would bleed the arbitrary colour that fully transparent
//!    pixels happen to hold (often black) into the edges;
//! 3. for one channel, convert to grey with image's `to_luma8` (BT.709 weights);
//! 4. resize to `size x size` with image's `Triangle` filter. When shrinking,
//!    the tent widens with the scale factor, so each output pixel is a
//!    weighted average of the source pixels it covers (proper anti-aliasing),
//!    without the overshoot of `Lanczos3`, which rings into halos around the
//!    hard outlines of emoji and is about twice as slow.
//!
//! The aspect ratio is squashed, not cropped: VNCA's CelebA pipeline was
//! `Resize((64, 64))` on the 178x218 aligned faces.

use super::DataError;
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Pixel, RgbImage};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

/// The pictures of a folder, resized, in file-name order.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageFolder {
    /// File names (with extension), sorted.
    pub names: Vec<String>,
    /// `names.len() * size * size * channels` bytes: image after image, each
    /// row-major, channels interleaved (RGB) when `channels == 3`.
    pub images: Vec<u8>,
    pub size: u32,
    pub channels: u8,
}

/// File extensions [`read_folder`] takes, compared case-insensitively.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Reads every `*.png`, `*.jpg` and `*.jpeg` (any case) directly inside
/// `dir`, sorted by file name, as `size x size` images of 1 (grey) or 3 (RGB)
/// channels. An empty folder or an undecodable file is an error naming it.
pub fn read_folder(dir: &Path, size: u32, channels: u8) -> Result<ImageFolder, DataError> {
    if !matches!(channels, 1 | 3) || size == 0 {
        return Err(DataError::invalid(
            dir,
            format!("cannot make {size}x{size} images of {channels} channels (need size > 0, channels 1 or 3)"),
        ));
    }
    let files = list_images(dir, &IMAGE_EXTENSIONS)?;
    let per = pixels(size, usize::from(channels))
        .ok_or_else(|| DataError::invalid(dir, format!("{size}x{size} images are too large")))?;
    let mut images = vec![0u8; files.len() * per];
    par_fill(&files, &mut images, per, |path, out| {
        let rgb = flatten_on_white(&open_image(path)?);
        if channels == 3 {
            out.copy_from_slice(&shrink(&rgb, size));
        } else {
            out.copy_from_slice(&shrink(&DynamicImage::ImageRgb8(rgb).to_luma8(), size));
        }
        Ok(())
    })?;
    let names = files.iter().map(|p| file_name(p)).collect();
    Ok(ImageFolder {
        names,
        images,
        size,
        channels,
    })
}

/// A seeded split of `0..n`: the indices are shuffled with
/// `Pcg64::seed_from_u64(seed)` and the first `floor(valid_fraction * n)`
/// become validation. Returns `(train, valid)`, each sorted ascending so a
/// subset keeps the order of the data it was drawn from.
///
/// # Panics
/// If `valid_fraction` is not within `0.0..=1.0`: that is a programming error.
pub fn split_indices(n: usize, seed: u64, valid_fraction: f64) -> (Vec<usize>, Vec<usize>) {
    assert!(
        (0.0..=1.0).contains(&valid_fraction),
        "split_indices: valid_fraction {valid_fraction} is not within 0..=1"
    );
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_pcg::Pcg64::seed_from_u64(seed));
    let k = ((valid_fraction * n as f64).floor() as usize).min(n);
    let mut valid = order[..k].to_vec();
    let mut train = order[k..].to_vec();
    valid.sort_unstable();
    train.sort_unstable();
    (train, valid)
}

/// The files directly in `dir` whose extension is one of `exts` (any case),
/// sorted by file name; an error if there are none.
pub(super) fn list_images(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)));
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(DataError::invalid(
            dir,
            format!("folder holds no image (looked for *.{})", exts.join(", *.")),
        ));
    }
    files.sort_by_key(|p| file_name(p));
    Ok(files)
}

/// The last component of `path`, lossily as UTF-8.
pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads and decodes one picture, whatever its extension says.
pub(super) fn open_image(path: &Path) -> Result<DynamicImage, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode(&bytes, None, MAX_DECODED_BYTES)
        .map_err(|e| DataError::invalid(path, format!("cannot decode image: {e}")))
}

/// The most bytes one buffer of a decoded picture may take: the decoder's
/// output, or its RGBA copy. A header can claim up to 2^32 x 2^32 pixels, and
/// the decoder allocates its output before it finds the data missing. 256 MiB
/// lets through photographs up to 67 Mpixels (the `image` crate's own default is
/// 512 MiB per decoding thread).
pub const MAX_DECODED_BYTES: u64 = 256 << 20;

/// The same bound for a font's emoji bitmaps, which are 136x128 pixels.
pub const MAX_BITMAP_BYTES: u64 = 64 << 20;

/// Decodes `bytes` (format from the content unless given), refusing pictures
/// whose buffers would exceed `max_bytes`. The error is one line.
pub(super) fn decode(
    bytes: &[u8],
    format: Option<ImageFormat>,
    max_bytes: u64,
) -> Result<DynamicImage, String> {
    let cursor = std::io::Cursor::new(bytes);
    let mut reader = match format {
        Some(f) => ImageReader::with_format(cursor, f),
        None => ImageReader::new(cursor)
            .with_guessed_format()
            .map_err(|e| one_line(&e.to_string()))?,
    };
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_bytes);
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| one_line(&e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if decoder.total_bytes().max(u64::from(w) * u64::from(h) * 4) > max_bytes {
        return Err(format!(
            "{w}x{h} pixels need more than {} MiB to decode",
            max_bytes >> 20
        ));
    }
    DynamicImage::from_decoder(decoder).map_err(|e| one_line(&e.to_string()))
}

/// `text` fit for a one-line error: trimmed, with control characters and line
/// separators escaped (decoder messages can end in a newline; echoed file
/// content can hold anything).
pub(super) fn one_line(text: &str) -> String {
    escape_controls(text.trim())
}

pub(super) use crate::error::escape_controls;

/// The picture as RGB, with any alpha composited on white.
pub(super) fn flatten_on_white(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = u16::from(a);
        let over = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

/// `img` resized to `size x size` with the Triangle filter (see the module
/// doc), as raw row-major samples.
pub(super) fn shrink<P: Pixel<Subpixel = u8> + 'static>(
    img: &ImageBuffer<P, Vec<u8>>,
    size: u32,
) -> Vec<u8> {
    if img.dimensions() == (size, size) {
        return img.as_raw().clone();
    }
    imageops::resize(img, size, size, FilterType::Triangle).into_raw()
}

/// Bytes of one `size x size` image of `channels` channels, if that fits.
pub(super) fn pixels(size: u32, channels: usize) -> Option<usize> {
    let side = usize::try_from(size).ok()?;
    side.checked_mul(side)?.checked_mul(channels)
}

/// Runs `f(item, out_chunk)` for every item on all cores, where `out` is cut
/// into consecutive `per`-byte chunks, one per item. Decoding thousands of
/// small pictures is CPU-bound and independent, so this divides the wall time
/// by the core count. Returns the first error in item order.
pub(super) fn par_fill<T: Sync>(
    items: &[T],
    out: &mut [u8],
    per: usize,
    f: impl Fn(&T, &mut [u8]) -> Result<(), DataError> + Sync,
) -> Result<(), DataError> {
    if items.is_empty() || per == 0 {
        return Ok(());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads.min(items.len()));
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .zip(out.chunks_mut(chunk * per))
            .map(|(its, outs)| {
                s.spawn(move || {
                    its.iter()
                        .zip(outs.chunks_mut(per))
                        .try_for_each(|(it, o)| f(it, o))
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba, RgbaImage};
    use std::io::Cursor;

    /// Encodes `img` as `format` into `dir/name`.
    fn save(dir: &Path, name: &str, img: &RgbaImage, format: ImageFormat) -> PathBuf {
        let mut bytes = Cursor::new(Vec::new());
        if format == ImageFormat::Jpeg {
            DynamicImage::ImageRgba8(img.clone())
                .to_rgb8()
                .write_to(&mut bytes, format)
                .unwrap();
        } else {
            img.write_to(&mut bytes, format).unwrap();
        }
        let path = dir.join(name);
        std::fs::write(&path, bytes.into_inner()).unwrap();
        path
    }

    fn plain(w: u32, h: u32, c: [u8; 4]) -> RgbaImage {
        RgbaImage::from_pixel(w, h, Rgba(c))
    }

    fn px(f: &ImageFolder, i: usize, x: u32, y: u32) -> &[u8] {
        let (s, c) = (f.size as usize, usize::from(f.channels));
        let at = ((i * s + y as usize) * s + x as usize) * c;
        &f.images[at..at + c]
    }

    /// A folder with a squashable PNG, a JPEG, a transparent PNG and clutter.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        // 40x10: red on the left quarter, white elsewhere. Squashed, red
        // stays at the left; a centre crop would lose it.
        let wide = RgbaImage::from_fn(40, 10, |x, _| {
            Rgba(if x < 10 { [255, 0, 0, 255] } else { [255; 4] })
        });
        save(dir.path(), "b.PNG", &wide, ImageFormat::Png);
        save(
            dir.path(),
            "a.jpg",
            &plain(16, 16, [100, 150, 200, 255]),
            ImageFormat::Jpeg,
        );
        save(
            dir.path(),
            "c.jpeg",
            &plain(5, 7, [0, 0, 0, 0]),
            ImageFormat::Png,
        ); // PNG bytes
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        std::fs::create_dir(dir.path().join("d.png")).unwrap(); // a folder, skipped
        dir
    }

    #[test]
    fn reads_sorted_squashed_rgb() {
        let dir = fixture();
        let f = read_folder(dir.path(), 8, 3).unwrap();
        assert_eq!(f.names, ["a.jpg", "b.PNG", "c.jpeg"]);
        assert_eq!((f.size, f.channels, f.images.len()), (8, 3, 3 * 8 * 8 * 3));
        let jpeg = px(&f, 0, 4, 4);
        assert!(
            jpeg.iter()
                .zip([100, 150, 200])
                .all(|(&a, b)| a.abs_diff(b) <= 4),
            "{jpeg:?}"
        );
        assert_eq!(px(&f, 1, 0, 4), [255, 0, 0], "squashed, not cropped");
        assert_eq!(px(&f, 1, 7, 4), [255, 255, 255]);
        assert!(
            f.images[2 * 192..].iter().all(|&v| v == 255),
            "transparent on white"
        );
    }

    #[test]
    fn reads_grey() {
        let dir = fixture();
        save(
            dir.path(),
            "e.png",
            &plain(6, 6, [255, 0, 0, 255]),
            ImageFormat::Png,
        );
        let f = read_folder(dir.path(), 4, 1).unwrap();
        assert_eq!(f.images.len(), 4 * 4 * 4);
        assert_eq!(px(&f, 2, 3, 3), [255], "transparent on white");
        assert_eq!(px(&f, 3, 1, 2), [54], "BT.709 luma of pure red");
    }

    #[test]
    fn errors_name_the_file_or_folder() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_folder(dir.path(), 8, 3).unwrap_err().to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("no image"),
            "{e}"
        );
        assert!(matches!(
            read_folder(&dir.path().join("absent"), 8, 3),
            Err(DataError::Io { .. })
        ));
        save(
            dir.path(),
            "ok.png",
            &plain(3, 3, [1, 2, 3, 255]),
            ImageFormat::Png,
        );
        for (size, channels) in [(0, 3), (8, 2), (8, 4)] {
            let e = read_folder(dir.path(), size, channels)
                .unwrap_err()
                .to_string();
            assert!(e.contains("channels 1 or 3"), "{e}");
        }
        std::fs::write(dir.path().join("z.jpg"), b"\xff\xd8\xff\xe0 truncated jpeg").unwrap();
        std::fs::write(dir.path().join("y.png"), b"\x89PNG\r\n\x1a\n").unwrap();
        let e = read_folder(dir.path(), 8, 3).unwrap_err().to_string();
        assert!(
            e.contains("y.png") && e.contains("cannot decode image"),
            "first bad file: {e}"
        );
    }

    #[test]
    fn split_indices_is_seeded_disjoint_and_complete() {
        let (train, valid) = split_indices(1000, 3, 0.2);
        assert_eq!((train.len(), valid.len()), (800, 200));
        let mut all = [train.clone(), valid.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert!(valid.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(split_indices(1000, 3, 0.2), (train, valid.clone()));
        assert_ne!(split_indices(1000, 4, 0.2).1, valid);
        assert_eq!(split_indices(9, 1, 0.2).1.len(), 1, "floor(1.8)");
        assert_eq!(split_indices(5, 1, 1.0), (vec![], vec![0, 1, 2, 3, 4]));
        assert_eq!(split_indices(0, 1, 0.5), (vec![], vec![]));
    }

    #[test]
    fn par_fill_keeps_order_over_many_items() {
        let items: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 2 * items.len()];
        par_fill(&items, &mut out, 2, |&i, o| {
            o.copy_from_slice(&[i, i.wrapping_mul(3)]);
            Ok(())
        })
        .unwrap();
        assert!(out
            .chunks(2)
            .enumerate()
            .all(|(i, o)| o == [i as u8, (i as u8).wrapping_mul(3)]));
    }
}
