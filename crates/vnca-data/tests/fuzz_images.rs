//! Property tests ("fuzzing" without a nightly toolchain) of the picture readers:
//! `data::folder::read_folder` (PNG, JPEG and, by content, GIF files under any extension)
//! and the CelebA readers `data::celeba::read_partition` and `read_split`.
//!
//! Inputs: arbitrary bytes; valid pictures made with the `image` crate (grey, grey+alpha,
//! RGB, RGBA at 8 and 16 bits, palette and 1/2/4-bit grey PNGs written by hand, grey and
//! colour JPEGs, GIFs) and mutations of them (bit flips, overwritten bytes and header
//! words, truncation, insertion, deletion, duplication; PNG chunk CRCs optionally fixed
//! afterwards so the damage reaches the decoder); headers claiming huge dimensions;
//! partition files as arbitrary text and as edited and mutated valid files.
//!
//! Properties: no panic; an error names the file (or the folder) and is one line; what is
//! accepted has the requested shape; valid inputs are accepted, and flat-colour pictures
//! stay flat; no single allocation above [`ALLOC_LIMIT`], counted by a global allocator
//! over all threads (the readers decode on several threads), with the reads serialised.
//!
//! Cases per property: [`DEFAULT_CASES`], or `PROPTEST_CASES=N` (see docs/RELIABILITY.md).
use image::{DynamicImage, ImageBuffer, ImageFormat};
use proptest::prelude::*;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use vnca_data::celeba::{read_partition, read_split};
use vnca_data::folder::read_folder;
use vnca_fuzzing::alloc::Scope;
use vnca_fuzzing::check_error;
use vnca_fuzzing::mutate::{mutate, Dialect, Mutation, Weights};

/// Our inputs are at most tens of KB; a header may claim up to 2^32 x 2^32 pixels, and
/// the reader lets the decoder allocate up to its cap before the data turns out missing.
const ALLOC_LIMIT: usize = vnca_data::folder::MAX_DECODED_BYTES as usize;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

// The readers decode on several threads: count them all, one read at a time.
vnca_fuzzing::fuzz_binary!(scope: Scope::AllThreads, cases: DEFAULT_CASES, alloc_limit: ALLOC_LIMIT);

// ---------------------------------------------------------------------------------------
// Mutations: PNG chunk lengths and dimensions (big-endian u32), JPEG segment lengths
// (big-endian u16), PNG colour types and bit depths, JPEG markers.

const PICTURES: Dialect = Dialect {
    weights: Weights {
        flip: 3,
        set: 3,
        set_u16: 2,
        set_u32: 2,
        set_u64: 0,
        truncate: 2,
        insert: 2,
        remove: 2,
        duplicate: 1,
    },
    bytes: &[
        0, 1, 2, 3, 4, 6, 8, 16, 0x7f, 0x80, 0xc0, 0xc2, 0xd8, 0xda, 0xff,
    ],
    u16s: &[0, 1, 2, 0xff, 0x7fff, 0xffff],
    u32s: &[
        0,
        1,
        2,
        0x0000_ffff,
        0x0001_0000,
        0x7fff_ffff,
        0x8000_0000,
        u32::MAX,
    ],
    u64s: &[],
};

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    PICTURES.mutations()
}

// ---------------------------------------------------------------------------------------
// Valid pictures.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Encoded by `image`: L8, La8, Rgb8, Rgba8, L16, La16, Rgb16, Rgba16.
    Png(u8),
    /// Written by hand: colour type 3 at 1, 2, 4 or 8 bits, with or without `tRNS`.
    Palette {
        bits: u8,
        trns: bool,
    },
    /// Written by hand: colour type 0 at 1, 2 or 4 bits.
    LowGrey(u8),
    Jpeg {
        grey: bool,
        quality: u8,
    },
    Gif,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => (0u8..8).prop_map(Kind::Png),
        2 => (prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], any::<bool>())
            .prop_map(|(bits, trns)| Kind::Palette { bits, trns }),
        1 => prop_oneof![Just(1u8), Just(2), Just(4)].prop_map(Kind::LowGrey),
        4 => (any::<bool>(), 1u8..=100).prop_map(|(grey, quality)| Kind::Jpeg { grey, quality }),
        1 => Just(Kind::Gif),
    ]
}

/// A picture to encode: `flat` ones have every pixel equal to the first.
#[derive(Clone, Debug)]
struct Picture {
    kind: Kind,
    w: u32,
    h: u32,
    flat: bool,
    noise: Vec<u8>,
}

fn picture() -> impl Strategy<Value = Picture> {
    (
        kind(),
        1u32..24,
        1u32..24,
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 64..128),
    )
        .prop_map(|(kind, w, h, flat, noise)| Picture {
            kind,
            w,
            h,
            flat,
            noise,
        })
}

impl Picture {
    /// `n` sample bytes: the noise repeated (so images have structure), or one sample.
    fn samples(&self, n: usize, per_pixel: usize) -> Vec<u8> {
        (0..n)
            .map(|i| {
                let i = if self.flat { i % per_pixel } else { i };
                self.noise[i % self.noise.len()] ^ (i / self.noise.len()) as u8
            })
            .collect()
    }

    fn encode(&self) -> Vec<u8> {
        let (w, h) = (self.w, self.h);
        let px = (w * h) as usize;
        let mut out = Cursor::new(Vec::new());
        match self.kind {
            Kind::Png(t) => {
                let ch = [1, 2, 3, 4][usize::from(t % 4)];
                let img = if t < 4 {
                    let s = self.samples(px * ch, ch);
                    match ch {
                        1 => DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, s).unwrap()),
                        2 => DynamicImage::ImageLumaA8(ImageBuffer::from_raw(w, h, s).unwrap()),
                        3 => DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, s).unwrap()),
                        _ => DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, s).unwrap()),
                    }
                } else {
                    let s = self.samples(px * ch * 2, ch * 2);
                    let s: Vec<u16> = s
                        .chunks(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    match ch {
                        1 => DynamicImage::ImageLuma16(ImageBuffer::from_raw(w, h, s).unwrap()),
                        2 => DynamicImage::ImageLumaA16(ImageBuffer::from_raw(w, h, s).unwrap()),
                        3 => DynamicImage::ImageRgb16(ImageBuffer::from_raw(w, h, s).unwrap()),
                        _ => DynamicImage::ImageRgba16(ImageBuffer::from_raw(w, h, s).unwrap()),
                    }
                };
                img.write_to(&mut out, ImageFormat::Png).unwrap();
            }
            Kind::Palette { bits, trns } => {
                let n = 1usize << bits;
                let palette = self.samples(3 * n, 3 * n);
                let alpha = trns.then(|| self.samples(n, n));
                let idx: Vec<u8> = self
                    .samples(px, 1)
                    .iter()
                    .map(|&v| (usize::from(v) % n) as u8)
                    .collect();
                return raw_png(
                    w,
                    h,
                    bits,
                    3,
                    &[(b"PLTE", palette), (b"tRNS", alpha.unwrap_or_default())],
                    &zlib(&scanlines(w, h, bits, &idx)),
                );
            }
            Kind::LowGrey(bits) => {
                let max = (1u16 << bits) - 1;
                let v: Vec<u8> = self
                    .samples(px, 1)
                    .iter()
                    .map(|&v| (u16::from(v) % (max + 1)) as u8)
                    .collect();
                return raw_png(w, h, bits, 0, &[], &zlib(&scanlines(w, h, bits, &v)));
            }
            Kind::Jpeg { grey, quality } => {
                let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
                if grey {
                    let img: image::GrayImage =
                        ImageBuffer::from_raw(w, h, self.samples(px, 1)).unwrap();
                    enc.encode_image(&img).unwrap();
                } else {
                    let img: image::RgbImage =
                        ImageBuffer::from_raw(w, h, self.samples(px * 3, 3)).unwrap();
                    enc.encode_image(&img).unwrap();
                }
            }
            Kind::Gif => {
                let img: image::RgbaImage =
                    ImageBuffer::from_raw(w, h, self.samples(px * 4, 4)).unwrap();
                img.write_to(&mut out, ImageFormat::Gif).unwrap();
            }
        }
        out.into_inner()
    }

    /// The RGB colour a flat picture shows once composited on white, when it is exact
    /// enough to check (PNG, opaque JPEG), with the tolerance.
    fn flat_colour(&self) -> Option<([u8; 3], u8)> {
        if !self.flat {
            return None;
        }
        let one = Picture {
            w: 1,
            h: 1,
            ..self.clone()
        };
        let tolerance = match self.kind {
            Kind::Png(_) | Kind::Palette { .. } | Kind::LowGrey(_) => 1,
            Kind::Jpeg { quality, .. } if quality >= 50 => 12,
            _ => return None,
        };
        let img = image::load_from_memory(&one.encode()).unwrap();
        let [r, g, b, a] = img.to_rgba8().get_pixel(0, 0).0;
        let a = u16::from(a);
        let over = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        Some(([over(r), over(g), over(b)], tolerance))
    }
}

/// PNG scanlines (filter byte 0) of `w x h` samples of `bits` bits, one per pixel.
fn scanlines(w: u32, h: u32, bits: u8, samples: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in samples.chunks(w as usize).take(h as usize) {
        out.push(0);
        let mut acc = 0u16;
        let mut n = 0;
        for &s in row {
            acc = (acc << bits) | u16::from(s);
            n += bits;
            if n == 8 {
                out.push(acc as u8);
                (acc, n) = (0, 0);
            }
        }
        if n > 0 {
            out.push((acc << (8 - n)) as u8);
        }
    }
    out
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A PNG with the given header fields, extra chunks before IDAT (empty ones left out),
/// and IDAT content, every CRC correct.
fn raw_png(
    w: u32,
    h: u32,
    bits: u8,
    colour: u8,
    extra: &[(&[u8; 4], Vec<u8>)],
    idat: &[u8],
) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[bits, colour, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        if !data.is_empty() {
            chunk(&mut out, kind, data);
        }
    }
    chunk(&mut out, b"IDAT", idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Recomputes the CRC of every whole chunk of a (mutated) PNG, so that the decoder goes
/// past its checksum test and meets the damage itself.
fn fix_png_crcs(d: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= d.len() {
        let len = u32::from_be_bytes(d[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= d.len()) else {
            break;
        };
        let mut crc = flate2::Crc::new();
        crc.update(&d[at + 4..end]);
        d[end..end + 4].copy_from_slice(&crc.sum().to_be_bytes());
        at = end + 4;
    }
}

/// Where the format's header ends (the bytes worth mutating most).
fn header_len(bytes: &[u8]) -> usize {
    if bytes.starts_with(&[0xff, 0xd8]) {
        // Up to and including the start-of-scan header.
        let sos = bytes.windows(2).position(|w| w == [0xff, 0xda]);
        return sos.map_or(bytes.len(), |p| p + 16);
    }
    64
}

// ---------------------------------------------------------------------------------------
// Folders of pictures.

/// File-name endings: the three `read_folder` takes in assorted case, none, and one it
/// ignores.
fn extension() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just(".png"),
        Just(".jpg"),
        Just(".jpeg"),
        Just(".PNG"),
        Just(".JpEg"),
        Just(""),
        Just(".txt"),
    ]
}

fn listed(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| {
            ["png", "jpg", "jpeg"]
                .iter()
                .any(|x| x.eq_ignore_ascii_case(e))
        })
}

fn size() -> impl Strategy<Value = u32> {
    prop_oneof![Just(8u32), Just(28), Just(32), Just(1), 1u32..40]
}

fn channels() -> impl Strategy<Value = u8> {
    prop_oneof![Just(1u8), Just(3)]
}

/// Writes `files` into a fresh folder, reads it, and checks the properties. Returns the
/// folder read, if it was accepted.
fn check_folder(
    files: &[(String, Vec<u8>)],
    size: u32,
    channels: u8,
) -> Result<Option<vnca_data::folder::ImageFolder>, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let mut names: Vec<String> = files
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| listed(n))
        .collect();
    names.sort();
    names.dedup();
    let (res, peak) = largest_allocation(|| read_folder(dir.path(), size, channels));
    check_alloc(peak)?;
    match res {
        Ok(f) => {
            prop_assert_eq!(&f.names, &names);
            prop_assert_eq!((f.size, f.channels), (size, channels));
            let per = (size * size) as usize * usize::from(channels);
            prop_assert_eq!(f.images.len(), names.len() * per);
            Ok(Some(f))
        }
        Err(e) => {
            let expected: Vec<PathBuf> = if names.is_empty() {
                vec![dir.path().to_path_buf()]
            } else {
                names.iter().map(|n| dir.path().join(n)).collect()
            };
            check_error(&e, &expected)?;
            Ok(None)
        }
    }
}

/// One file: a picture, mutated or not, under some name ending.
#[derive(Clone, Debug)]
struct FileSpec {
    picture: Picture,
    muts: Vec<Mutation>,
    fix_crcs: bool,
    ext: &'static str,
}

fn file_spec() -> impl Strategy<Value = FileSpec> {
    (
        picture(),
        prop::collection::vec(PICTURES.mutation(), 0..5),
        any::<bool>(),
        extension(),
    )
        .prop_map(|(picture, muts, fix_crcs, ext)| FileSpec {
            picture,
            muts,
            fix_crcs,
            ext,
        })
}

impl FileSpec {
    fn bytes(&self) -> Vec<u8> {
        let valid = self.picture.encode();
        let mut d = mutate(&valid, &self.muts, &[(0, header_len(&valid))]);
        if self.fix_crcs {
            fix_png_crcs(&mut d);
        }
        d
    }
}

/// Interesting claimed dimensions.
fn dimension() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(1u32),
        Just(7),
        Just(100),
        Just(2048),
        Just(4096),
        Just(5000),
        Just(8192),
        Just(16384),
        Just(65535),
        Just(100_000),
        Just(1 << 24),
        Just(0x7fff_ffff),
        Just(u32::MAX),
        Just(0),
        1u32..70_000,
    ]
}

/// `valid` with its width and height fields replaced (PNG IHDR with a correct CRC, JPEG
/// SOF, GIF screen and image descriptor), clamped to what the format can hold.
fn claim_dimensions(valid: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut d = valid.to_vec();
    if d.starts_with(b"\x89PNG") && d.len() >= 24 {
        d[16..20].copy_from_slice(&w.to_be_bytes());
        d[20..24].copy_from_slice(&h.to_be_bytes());
        fix_png_crcs(&mut d);
    } else if d.starts_with(&[0xff, 0xd8]) {
        let (w, h) = (w.min(0xffff) as u16, h.min(0xffff) as u16);
        for sof in [0xc0u8, 0xc1, 0xc2] {
            let at = d.windows(2).position(|x| x == [0xff, sof]);
            if let Some(p) = at.filter(|p| p + 9 <= d.len()) {
                d[p + 5..p + 7].copy_from_slice(&h.to_be_bytes());
                d[p + 7..p + 9].copy_from_slice(&w.to_be_bytes());
            }
        }
    } else if d.starts_with(b"GIF") && d.len() >= 10 {
        let (w, h) = (w.min(0xffff) as u16, h.min(0xffff) as u16);
        d[6..8].copy_from_slice(&w.to_le_bytes());
        d[8..10].copy_from_slice(&h.to_le_bytes());
        if let Some(p) = d.iter().skip(13).position(|&b| b == 0x2c) {
            let p = p + 13;
            if p + 9 <= d.len() {
                d[p + 5..p + 7].copy_from_slice(&w.to_le_bytes());
                d[p + 7..p + 9].copy_from_slice(&h.to_le_bytes());
            }
        }
    }
    d
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn folder_survives_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..512),
        magic in prop_oneof![
            Just(&b""[..]),
            Just(&b"\x89PNG\r\n\x1a\n"[..]),
            Just(&b"\xff\xd8\xff"[..]),
            Just(&b"GIF89a"[..]),
        ],
        ext in extension(),
        size in size(),
        channels in channels(),
    ) {
        let files = vec![(format!("a{ext}"), [magic, &body[..]].concat())];
        check_folder(&files, size, channels)?;
    }

    #[test]
    fn folder_survives_mutated_pictures(
        specs in prop::collection::vec(file_spec(), 1..4),
        size in size(),
        channels in channels(),
    ) {
        let files: Vec<(String, Vec<u8>)> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{i}{}", s.ext), s.bytes()))
            .collect();
        check_folder(&files, size, channels)?;
    }

    #[test]
    fn folder_survives_huge_claimed_dimensions(
        picture in picture(),
        w in dimension(),
        h in dimension(),
        cut in any::<bool>(),
        size in size(),
        channels in channels(),
    ) {
        let mut bytes = claim_dimensions(&picture.encode(), w, h);
        if cut {
            bytes.truncate(header_len(&bytes));
        }
        check_folder(&[("big.png".to_string(), bytes)], size, channels)?;
    }

    #[test]
    fn folder_reads_valid_pictures(
        pictures in prop::collection::vec(picture(), 1..4),
        exts in prop::collection::vec(extension(), 3),
        size in size(),
        channels in channels(),
    ) {
        let files: Vec<(String, Vec<u8>)> = pictures
            .iter()
            .zip(&exts)
            .enumerate()
            .map(|(i, (p, e))| (format!("{i}{e}"), p.encode()))
            .collect();
        let any_listed = files.iter().any(|(n, _)| listed(n));
        let folder = check_folder(&files, size, channels)?;
        prop_assert_eq!(folder.is_some(), any_listed, "valid pictures refused");
        let Some(f) = folder else { return Ok(()) };
        let per = (size * size) as usize * usize::from(channels);
        for (k, name) in f.names.iter().enumerate() {
            let i: usize = name[..1].parse().unwrap();
            let Some((rgb, tol)) = pictures[i].flat_colour() else { continue };
            let want: Vec<u8> = if channels == 3 {
                rgb.to_vec()
            } else {
                let one = image::RgbImage::from_pixel(1, 1, image::Rgb(rgb));
                DynamicImage::ImageRgb8(one).to_luma8().into_raw()
            };
            let got = &f.images[k * per..(k + 1) * per];
            for px in got.chunks(usize::from(channels)) {
                prop_assert!(
                    px.iter().zip(&want).all(|(a, b)| a.abs_diff(*b) <= tol),
                    "flat {:?} picture {name}: pixel {px:?}, want {want:?}", pictures[i].kind
                );
            }
        }
    }
}

#[test]
fn huge_png_header_is_an_error() {
    // RGBA with a correct IHDR CRC and a few bytes of IDAT. 100000 x 100000 was refused
    // by the image crate's own 512 MiB limit; 5000 x 5000 (95 MiB) and 4096 x 4096 x 16
    // bits (128 MiB) were allocated, then found truncated.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.png");
    for (w, h, bits) in [(100_000, 100_000, 8), (5000, 5000, 8), (4096, 4096, 16)] {
        std::fs::write(&path, raw_png(w, h, bits, 6, &[], &zlib(&[0; 64]))).unwrap();
        let (res, peak) = largest_allocation(|| read_folder(dir.path(), 8, 3));
        let e = res.unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(peak <= ALLOC_LIMIT, "{w}x{h}: allocation of {peak} bytes");
    }
}

#[test]
fn decoder_errors_are_one_line() {
    // zune-jpeg's "Not enough bytes" error ends in a newline, which the reader passed on.
    let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 7, 3]));
    let mut jpeg = Cursor::new(Vec::new());
    img.write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.jpg");
    let mut newline_before = false;
    for cut in [3, 4, 20, header_len(&jpeg), jpeg.len() / 2] {
        std::fs::write(&path, &jpeg[..cut]).unwrap();
        let Err(e) = read_folder(dir.path(), 8, 3) else {
            continue;
        };
        let e = e.to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(!e.chars().any(char::is_control), "cut at {cut}: {e:?}");
        newline_before |= e.contains("Not enough bytes");
    }
    assert!(
        newline_before,
        "no cut hit the error that used to end in a newline"
    );
}

#[test]
fn huge_jpeg_header_is_an_error() {
    let img = image::RgbImage::from_pixel(16, 16, image::Rgb([10, 20, 30]));
    let mut jpeg = Cursor::new(Vec::new());
    img.write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.jpg");
    for (w, h) in [(65535, 65535), (8000, 8000), (65535, 1)] {
        std::fs::write(&path, claim_dimensions(jpeg.get_ref(), w, h)).unwrap();
        let (res, peak) = largest_allocation(|| read_folder(dir.path(), 8, 3));
        assert!(peak <= ALLOC_LIMIT, "{w}x{h}: allocation of {peak} bytes");
        if u64::from(w) * u64::from(h) * 4 > vnca_data::folder::MAX_DECODED_BYTES {
            let e = res.unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// CelebA partition file.

/// A valid partition: entries, line ending, and per-line padding.
#[derive(Clone, Debug)]
struct Partition {
    entries: Vec<(String, u8)>,
    crlf: bool,
    /// Per line: (leading, between, trailing) whitespace, and a blank line after it.
    pads: Vec<(&'static str, &'static str, &'static str, bool)>,
    final_newline: bool,
}

fn space() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => Just(""),
        1 => Just(" "),
        1 => Just("\t"),
        1 => Just("  "),
        1 => Just("\u{a0}"),
        1 => Just("\u{3000}"),
    ]
}

fn partition() -> impl Strategy<Value = Partition> {
    (
        prop::collection::vec((1u32..300_000, 0u8..3), 1..12),
        any::<bool>(),
        prop::collection::vec((space(), space(), space(), prop::bool::weighted(0.1)), 12),
        any::<bool>(),
    )
        .prop_map(|(entries, crlf, pads, final_newline)| Partition {
            entries: entries
                .into_iter()
                .map(|(i, s)| (format!("{i:06}.jpg"), s))
                .collect(),
            crlf,
            pads,
            final_newline,
        })
}

impl Partition {
    fn text(&self) -> String {
        let nl = if self.crlf { "\r\n" } else { "\n" };
        let mut lines = Vec::new();
        for ((name, split), (lead, mid, trail, blank)) in self.entries.iter().zip(&self.pads) {
            let mid = if mid.is_empty() { " " } else { mid };
            lines.push(format!("{lead}{name}{mid}{split}{trail}"));
            if *blank {
                lines.push(String::new());
            }
        }
        let mut t = lines.join(nl);
        if self.final_newline {
            t += nl;
        }
        t
    }
}

#[derive(Clone, Debug)]
enum LineEdit {
    /// Replace the split field of a line.
    Split(usize, String),
    /// Replace the name field of a line.
    Name(usize, String),
    Delete(usize),
    Duplicate(usize),
    Insert(usize, String),
    /// Join a line with the next one.
    Join(usize),
}

fn odd_split() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("3".to_string()),
        Just("00".to_string()),
        Just("-0".to_string()),
        Just("+1".to_string()),
        Just("1.0".to_string()),
        Just("0x1".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("\u{660}".to_string()),
        Just("２".to_string()),
        Just("".to_string()),
        Just("0 0".to_string()),
        Just("1\r2".to_string()),
        "\\PC{0,6}",
    ]
}

fn odd_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("../000001.jpg".to_string()),
        Just("a/b.jpg".to_string()),
        Just("/etc/passwd".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("x\u{1b}[2J.jpg".to_string()),
        Just("a\rb".to_string()),
        Just("\u{2028}".to_string()),
        Just("é.jpg".to_string()),
        "\\PC{0,12}",
    ]
}

fn partition_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        3 => (any::<usize>(), odd_split()).prop_map(|(i, s)| LineEdit::Split(i, s)),
        3 => (any::<usize>(), odd_name()).prop_map(|(i, s)| LineEdit::Name(i, s)),
        1 => any::<usize>().prop_map(LineEdit::Delete),
        1 => any::<usize>().prop_map(LineEdit::Duplicate),
        2 => (any::<usize>(), prop_oneof![
            Just("".to_string()),
            Just("   ".to_string()),
            Just("\r".to_string()),
            Just("000001.jpg".to_string()),
            Just("000001.jpg 0 extra".to_string()),
            Just("\u{feff}000001.jpg 0".to_string()),
            "\\PC{0,30}",
        ]).prop_map(|(i, l)| LineEdit::Insert(i, l)),
        1 => any::<usize>().prop_map(LineEdit::Join),
    ]
}

fn edit_partition(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    for e in edits {
        let n = lines.len().max(1);
        let fields =
            |l: &str| -> Vec<String> { l.split_whitespace().map(str::to_string).collect() };
        match e {
            LineEdit::Split(i, s) => {
                if let Some(l) = lines.get_mut(i % n) {
                    if let Some(name) = fields(l).first() {
                        *l = format!("{name} {s}");
                    }
                }
            }
            LineEdit::Name(i, s) => {
                if let Some(l) = lines.get_mut(i % n) {
                    if let Some(split) = fields(l).get(1) {
                        *l = format!("{s} {split}");
                    }
                }
            }
            LineEdit::Delete(i) => {
                if !lines.is_empty() {
                    lines.remove(i % n);
                }
            }
            LineEdit::Duplicate(i) => {
                if let Some(l) = lines.get(i % n).cloned() {
                    lines.insert(i % n, l);
                }
            }
            LineEdit::Insert(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
            LineEdit::Join(i) => {
                if lines.len() >= 2 {
                    let i = i % (lines.len() - 1);
                    let next = lines.remove(i + 1);
                    lines[i] = format!("{} {next}", lines[i]);
                }
            }
        }
    }
    lines.join("\n")
}

/// `read_partition` on `bytes`: the properties, and the result when accepted.
fn check_partition(bytes: &[u8]) -> Result<Option<Vec<(String, u8)>>, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("list_eval_partition.txt");
    std::fs::write(&path, bytes).unwrap();
    let (res, peak) = largest_allocation(|| read_partition(&path));
    check_alloc(peak)?;
    match res {
        Ok(v) => {
            prop_assert!(!v.is_empty());
            let text = std::str::from_utf8(bytes).expect("accepted text is UTF-8");
            let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
            prop_assert_eq!(v.len(), lines, "one entry per non-blank line");
            for (name, split) in &v {
                prop_assert!(*split <= 2);
                prop_assert!(!name.is_empty() && !name.contains(char::is_whitespace));
                prop_assert!(!name.contains('/') && !name.contains(".."), "{name}");
                prop_assert!(!name.contains(char::is_control), "{name:?}");
            }
            Ok(Some(v))
        }
        Err(e) => {
            check_error(&e, &[path])?;
            Ok(None)
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn partition_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_partition(&bytes)?;
    }

    #[test]
    fn partition_survives_arbitrary_text(text in "\\PC{0,200}") {
        check_partition(text.as_bytes())?;
    }

    #[test]
    fn partition_reads_valid_files(p in partition()) {
        prop_assert_eq!(check_partition(p.text().as_bytes())?, Some(p.entries.clone()));
    }

    #[test]
    fn partition_survives_line_edits(p in partition(), edits in prop::collection::vec(partition_edit(), 1..4)) {
        check_partition(edit_partition(&p.text(), &edits).as_bytes())?;
    }

    #[test]
    fn partition_survives_byte_mutations(p in partition(), muts in mutations()) {
        let text = p.text();
        check_partition(&mutate(text.as_bytes(), &muts, &[(0, text.len())]))?;
    }
}

#[test]
fn partition_refuses_control_characters_in_names() {
    // Found by `celeba_split_survives_damage`: a listed name with an escape sequence was
    // accepted, and the missing-file error then carried it in the path.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("img_align_celeba")).unwrap();
    let part = root.path().join("list_eval_partition.txt");
    std::fs::write(&part, "x\u{1b}[2J.jpg 0\n").unwrap();
    let e = read_split(root.path(), "train", 8, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("`{}`: line 1", part.display())), "{e}");
    assert!(e.contains("not a plain file name"), "{e}");
    assert!(!e.chars().any(char::is_control), "{e:?}");
}

#[test]
fn partition_errors_escape_what_they_echo() {
    for text in [
        "a\rb\rc 0\n",
        "x\u{1b}[2J 0 1\n",
        "a 0\nb \u{1b}[31m\n",
        "a\u{2028}b c\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list_eval_partition.txt");
        std::fs::write(&path, text).unwrap();
        let e = read_partition(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(
            !e.chars()
                .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
            "{e:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// CelebA tree.

/// A miniature CelebA under `root`: small JPEGs (178x218 is slow and changes nothing
/// here) and the partition file. Returns the image paths.
fn celeba_tree(root: &Path, p: &Partition) -> Vec<PathBuf> {
    let dir = root.join("img_align_celeba");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(root.join("list_eval_partition.txt"), p.text()).unwrap();
    p.entries
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let img = image::RgbImage::from_fn(17, 21, |x, y| {
                image::Rgb([i as u8 * 40, (x * 13) as u8, (y * 11) as u8])
            });
            let path = dir.join(name);
            img.save(&path).unwrap();
            path
        })
        .collect()
}

#[derive(Clone, Debug)]
enum TreeDamage {
    /// Mutate the image at this index.
    Image(usize, Vec<Mutation>),
    /// Edit the partition file's lines.
    Partition(Vec<LineEdit>),
    /// Remove the image at this index.
    Missing(usize),
    /// Replace the image at this index with a huge-claiming header.
    Huge(usize, u32, u32),
}

fn tree_damage() -> impl Strategy<Value = TreeDamage> {
    prop_oneof![
        4 => (any::<usize>(), mutations()).prop_map(|(i, m)| TreeDamage::Image(i, m)),
        2 => prop::collection::vec(partition_edit(), 1..3).prop_map(TreeDamage::Partition),
        1 => any::<usize>().prop_map(TreeDamage::Missing),
        1 => (any::<usize>(), dimension(), dimension()).prop_map(|(i, w, h)| TreeDamage::Huge(i, w, h)),
    ]
}

fn split_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        3 => Just("train"),
        2 => Just("valid"),
        2 => Just("test"),
        1 => Just("Train"),
        1 => Just(""),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn celeba_split_survives_damage(
        p in partition(),
        damage in prop::collection::vec(tree_damage(), 0..3),
        split in split_name(),
        size in prop_oneof![Just(8u32), Just(32), Just(64), 1u32..20],
        limit in prop_oneof![Just(None), Just(Some(0usize)), Just(Some(1)), Just(Some(3))],
    ) {
        let root = tempfile::tempdir().unwrap();
        // Duplicate names would make one file stand for two entries; keep the first.
        let mut p = p;
        let mut seen = std::collections::HashSet::new();
        p.entries.retain(|(n, _)| seen.insert(n.clone()));
        let images = celeba_tree(root.path(), &p);
        let part = root.path().join("list_eval_partition.txt");
        for d in &damage {
            match d {
                TreeDamage::Image(i, muts) => {
                    let f = &images[i % images.len()];
                    if let Ok(valid) = std::fs::read(f) {
                        std::fs::write(f, mutate(&valid, muts, &[(0, header_len(&valid))])).unwrap();
                    }
                }
                TreeDamage::Partition(edits) => {
                    let t = std::fs::read_to_string(&part).unwrap();
                    std::fs::write(&part, edit_partition(&t, edits)).unwrap();
                }
                TreeDamage::Missing(i) => {
                    let _ = std::fs::remove_file(&images[i % images.len()]);
                }
                TreeDamage::Huge(i, w, h) => {
                    let f = &images[i % images.len()];
                    if let Ok(valid) = std::fs::read(f) {
                        std::fs::write(f, claim_dimensions(&valid, *w, *h)).unwrap();
                    }
                }
            }
        }
        let listed = read_partition(&part).ok();
        let (res, peak) = largest_allocation(|| read_split(root.path(), split, size, limit));
        check_alloc(peak)?;
        match res {
            Ok(f) => {
                let index = ["train", "valid", "test"].iter().position(|s| *s == split);
                prop_assert!(index.is_some(), "split `{split}` accepted");
                let mut want: Vec<String> = listed
                    .expect("accepted with an unreadable partition file")
                    .into_iter()
                    .filter(|(_, s)| Some(usize::from(*s)) == index)
                    .map(|(n, _)| n)
                    .collect();
                if let Some(l) = limit {
                    want.truncate(l);
                }
                prop_assert_eq!(&f.names, &want);
                prop_assert_eq!((f.size, f.channels), (size, 3));
                prop_assert_eq!(f.images.len(), want.len() * (size * size * 3) as usize);
            }
            Err(e) => {
                let dir = root.path().join("img_align_celeba");
                let mut paths = vec![root.path().to_path_buf(), part.clone()];
                if let Some(l) = &listed {
                    paths.extend(l.iter().map(|(n, _)| dir.join(n)));
                }
                check_error(&e, &paths)?;
            }
        }
    }
}
