//! Emoji pictures from the Noto Color Emoji font, or from a folder of PNGs.
//!
//! VNCA's emoji experiments grow colour emoji; a font is the easiest place to
//! get a consistent set. Debian/Ubuntu's `fonts-noto-color-emoji` installs
//! `/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf` (2.042: 3926 colour
//! bitmaps, each a 136x128 PNG: 128x128 art with 4 transparent columns each
//! side). The font's tables are read with `ttf-parser` (`font`): CBLC/CBDT
//! for the PNGs, and `post`/`cmap`/`GSUB` for names (see [`names`] for how
//! names are derived).
//!
//! Every picture is cropped to its centred square (for Noto: the 128x128
//! art), composited on white and shrunk with the Triangle filter, exactly as
//! [`super::folder`] documents; the result is `size x size` RGB bytes.
//!
//! Counts for Noto Color Emoji 2.042: 3926 in all; 3575 without flags (351
//! dropped: 250 regional-indicator pairs, 100 subdivision flags, the unknown
//! flag); 2036 without skin-tone variants (1890 dropped); 1685 without either.
//! Every name that is not a flag equals a noto-emoji source file name.

mod font;
pub mod names;

use super::folder::{
    decode, file_name, flatten_on_white, list_images, one_line, open_image, par_fill, pixels,
    shrink, MAX_BITMAP_BYTES,
};
use super::DataError;
use image::{DynamicImage, ImageFormat};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What to read and at which size.
#[derive(Clone, Debug, PartialEq)]
pub struct EmojiOptions {
    /// Side of the output images in pixels, e.g. 64.
    pub size: u32,
    /// Leave out country and region flags (see [`is_flag`]).
    pub drop_flags: bool,
    /// Leave out skin-tone variants (see [`has_skin_tone`]).
    pub drop_skin_tones: bool,
}

impl Default for EmojiOptions {
    fn default() -> Self {
        EmojiOptions {
            size: 64,
            drop_flags: false,
            drop_skin_tones: false,
        }
    }
}

/// One emoji picture.
#[derive(Clone, Debug, PartialEq)]
pub struct Emoji {
    /// Code-point name such as `u1F600` (see [`names`]).
    pub name: String,
    /// `size * size * 3` bytes, row-major RGB.
    pub rgb: Vec<u8>,
}

/// All colour bitmaps of the font at `path`, sorted by name: decoded, cropped
/// to the centred square (136x128 -> 128x128), composited on white, resized
/// to `size x size` (Triangle filter) as RGB. A malformed font or PNG is an
/// error naming the file and the byte offset.
pub fn read_font(path: &Path, opts: &EmojiOptions) -> Result<Vec<Emoji>, DataError> {
    let per = out_pixels(path, opts)?;
    let data = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let font = font::Font::parse(path, &data)?;
    let bitmaps = font.color_bitmaps()?;
    if bitmaps.is_empty() {
        return Err(DataError::invalid(path, "font has no colour bitmap"));
    }
    let glyphs: Vec<u16> = bitmaps.iter().map(|b| b.glyph).collect();
    let mut jobs: Vec<_> = names::glyph_names(&font, &glyphs)?
        .into_iter()
        .zip(&bitmaps)
        .filter(|(name, _)| keep(name, opts))
        .collect();
    jobs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rgb = vec![0u8; jobs.len() * per];
    par_fill(&jobs, &mut rgb, per, |(name, bitmap), out| {
        let img = decode(bitmap.png, Some(ImageFormat::Png), MAX_BITMAP_BYTES).map_err(|e| {
            DataError::format(
                path,
                bitmap.offset,
                format!(
                    "glyph {} ({}): corrupt PNG: {e}",
                    bitmap.glyph,
                    one_line(name)
                ),
            )
        })?;
        out.copy_from_slice(&render(&img, opts.size));
        Ok(())
    })?;
    Ok(collect(jobs.into_iter().map(|(name, _)| name), &rgb, per))
}

/// Every `*.png` (any case) directly in `dir`, treated like the font's
/// bitmaps (RGB or RGBA, any size; cropped to the centred square). Names come
/// from the file names: code-point spellings such as noto-emoji's
/// `emoji_u1f600.png` or Twemoji's `1f600.png` become `u1F600`, so the names
/// (and the split) match the font's; other names are kept as the file stem.
pub fn read_png_folder(dir: &Path, opts: &EmojiOptions) -> Result<Vec<Emoji>, DataError> {
    let per = out_pixels(dir, opts)?;
    let mut by_name: HashMap<String, PathBuf> = HashMap::new();
    for path in list_images(dir, &["png"])? {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let stem = stem.unwrap_or_default();
        let name = names::parse_seq_name(&stem).map_or(stem, |cps| names::seq_name(&cps));
        if let Some(other) = by_name.get(&name) {
            return Err(DataError::invalid(
                dir,
                format!(
                    "`{}` and `{}` both name emoji {name}",
                    file_name(other),
                    file_name(&path)
                ),
            ));
        }
        by_name.insert(name, path);
    }
    let mut jobs: Vec<(String, PathBuf)> =
        by_name.into_iter().filter(|(n, _)| keep(n, opts)).collect();
    jobs.sort();
    let mut rgb = vec![0u8; jobs.len() * per];
    par_fill(&jobs, &mut rgb, per, |(_, path), out| {
        out.copy_from_slice(&render(&open_image(path)?, opts.size));
        Ok(())
    })?;
    Ok(collect(jobs.into_iter().map(|(name, _)| name), &rgb, per))
}

/// Seeded split over the name-sorted `items`: indices are shuffled with
/// `Pcg64::seed_from_u64(seed)` and the first `floor(valid_fraction * N)`
/// are validation (see [`super::folder::split_indices`]). Returns
/// `(train, valid)`, each sorted by name.
///
/// # Panics
/// If `valid_fraction` is not within `0.0..=1.0`.
pub fn split(mut items: Vec<Emoji>, seed: u64, valid_fraction: f64) -> (Vec<Emoji>, Vec<Emoji>) {
    items.sort_by(|a, b| a.name.cmp(&b.name));
    let (_, valid) = super::folder::split_indices(items.len(), seed, valid_fraction);
    let mut is_valid = vec![false; items.len()];
    valid.iter().for_each(|&i| is_valid[i] = true);
    let (valid, train): (Vec<_>, Vec<_>) = items.into_iter().zip(is_valid).partition(|(_, v)| *v);
    let strip = |v: Vec<(Emoji, bool)>| v.into_iter().map(|(e, _)| e).collect();
    (strip(train), strip(valid))
}

/// True for country and region flags: names with two regional indicators
/// (U+1F1E6..U+1F1FF, e.g. `u1F1FA_1F1F8`) or with tag characters
/// (U+E0020..U+E007F: England, Scotland, Texas, ..., Noto's unknown flag).
/// The 26 lone regional-indicator letter tiles are not flags, and the other
/// flag emoji (chequered, white, pirate, rainbow) are pictures, not national
/// symbols: both are kept.
pub fn is_flag(name: &str) -> bool {
    names::parse_seq_name(name).is_some_and(|cps| {
        cps.iter()
            .filter(|c| (0x1F1E6..=0x1F1FF).contains(*c))
            .count()
            >= 2
            || cps.iter().any(|c| (0xE0020..=0xE007F).contains(c))
    })
}

/// True for skin-tone variants: sequences holding a Fitzpatrick modifier
/// U+1F3FB..U+1F3FF. The five lone modifier swatches are not variants and
/// are kept.
pub fn has_skin_tone(name: &str) -> bool {
    names::parse_seq_name(name)
        .is_some_and(|cps| cps.len() > 1 && cps.iter().any(|c| (0x1F3FB..=0x1F3FF).contains(c)))
}

fn keep(name: &str, opts: &EmojiOptions) -> bool {
    let drop = (opts.drop_flags && is_flag(name)) || (opts.drop_skin_tones && has_skin_tone(name));
    !drop
}

/// Bytes per output image, or an error about `path` if `opts.size` is unusable.
fn out_pixels(path: &Path, opts: &EmojiOptions) -> Result<usize, DataError> {
    pixels(opts.size, 3).filter(|&n| n > 0).ok_or_else(|| {
        DataError::invalid(path, format!("cannot make {0}x{0} emoji images", opts.size))
    })
}

/// Centred square crop, alpha on white, Triangle resize: `size*size*3` bytes.
fn render(img: &DynamicImage, size: u32) -> Vec<u8> {
    let (w, h) = (img.width(), img.height());
    let side = w.min(h);
    let square = img.crop_imm((w - side) / 2, (h - side) / 2, side, side);
    shrink(&flatten_on_white(&square), size)
}

fn collect(names: impl Iterator<Item = String>, rgb: &[u8], per: usize) -> Vec<Emoji> {
    names
        .zip(rgb.chunks(per))
        .map(|(name, px)| Emoji {
            name,
            rgb: px.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod testfont;

#[cfg(test)]
mod tests {
    use super::testfont::{build, png, table, Spec};
    use super::*;
    use std::time::Instant;

    /// The real font: `VNCA_EMOJI_FONT`, else the project's shared copy. The
    /// tests need it (CI has it): a missing font fails, naming where we looked.
    fn real_font() -> PathBuf {
        let path = std::env::var_os("VNCA_EMOJI_FONT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../../shared/data/noto-emoji/NotoColorEmoji.ttf")
            });
        assert!(
            path.is_file(),
            "Noto Color Emoji font not found at `{}` (set VNCA_EMOJI_FONT; Debian/Ubuntu \
             install it at /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf)",
            path.display()
        );
        path
    }

    fn opts(size: u32) -> EmojiOptions {
        EmojiOptions {
            size,
            ..EmojiOptions::default()
        }
    }

    /// Names of a font's bitmaps, without decoding them.
    fn font_names(path: &Path) -> Vec<String> {
        let data = std::fs::read(path).unwrap();
        let font = font::Font::parse(path, &data).unwrap();
        let glyphs: Vec<u16> = font
            .color_bitmaps()
            .unwrap()
            .iter()
            .map(|b| b.glyph)
            .collect();
        names::glyph_names(&font, &glyphs).unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn pixel(e: &Emoji, size: u32, x: u32, y: u32) -> [u8; 3] {
        let i = 3 * (y * size + x) as usize;
        [e.rgb[i], e.rgb[i + 1], e.rgb[i + 2]]
    }

    #[test]
    fn real_font_decodes_every_bitmap() {
        let path = real_font();
        let t = Instant::now();
        let all = read_font(&path, &opts(64)).unwrap();
        eprintln!(
            "decoded and resized {} emoji in {:.2?}",
            all.len(),
            t.elapsed()
        );
        assert_eq!(all.len(), 3926);
        assert!(
            all.windows(2).all(|w| w[0].name < w[1].name),
            "sorted, unique names"
        );
        assert!(all.iter().all(|e| e.rgb.len() == 64 * 64 * 3));
        let grin = all
            .iter()
            .find(|e| e.name == "u1F600")
            .expect("U+1F600 present");
        let centre = (16..48)
            .flat_map(|y| (16..48).map(move |x| (x, y)))
            .filter(|&(x, y)| pixel(grin, 64, x, y) != [255, 255, 255])
            .count();
        assert!(
            centre > 32 * 32 * 9 / 10,
            "{centre} of 1024 centre pixels coloured"
        );
        for (x, y) in [(0, 0), (63, 0), (0, 63), (63, 63)] {
            assert_eq!(pixel(grin, 64, x, y), [255, 255, 255], "corner {x},{y}");
        }
    }

    #[test]
    fn real_font_names_and_filters() {
        let t = Instant::now();
        let names = font_names(&real_font());
        eprintln!(
            "parsed the font and named {} bitmaps in {:.2?}",
            names.len(),
            t.elapsed()
        );
        assert_eq!(names.len(), 3926);
        for want in [
            "u1F600",
            "u0023_20E3",
            "u00A9",
            "u1F1FA_1F1F8",
            "u1F1EB_1F1F7",
            "u26F9_1F3FB_200D_2640",
            "u1F469_200D_2764_200D_1F48B_200D_1F468",
            "u1F3F4_E0067_E0062_E0065_E006E_E0067_E007F",
            "u1F3F4_E007F",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing");
        }
        // Aliases and mirrored spellings never win over a glyph's own sequence.
        for alias in ["u1F1E8_1F1F5", "u2640_200D_26F9_1F3FB", "uFE82C"] {
            assert!(!names.iter().any(|n| n == alias), "{alias} present");
        }
        let flags = names.iter().filter(|n| is_flag(n)).count();
        let tones = names.iter().filter(|n| has_skin_tone(n)).count();
        let both = names
            .iter()
            .filter(|n| is_flag(n) || has_skin_tone(n))
            .count();
        eprintln!("flags {flags}, skin-tone variants {tones}, either {both}");
        assert_eq!(
            (3926 - flags, 3926 - tones, 3926 - both),
            (3575, 2036, 1685)
        );
    }

    /// SHA-256 of `bytes`, hex.
    fn digest(bytes: &[u8]) -> String {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(bytes))
    }

    /// The whole emoji set of the real font, pinned: counts under each filter, every
    /// name (a digest of the sorted list), a few names and pixels, and a digest of all
    /// pixels at 16x16. Written before the sfnt parsing moved to `ttf-parser`, so that
    /// the switch is held to reading exactly what the hand-written parser read. (An
    /// `image` upgrade that changes its PNG decoding or Triangle filter would change
    /// the pixel digest alone.)
    #[test]
    fn real_font_pinned_set_names_and_pixels() {
        let path = real_font();
        let all = read_font(&path, &opts(16)).unwrap();
        let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), 3926);
        assert_eq!(&names[..4], ["u0023", "u0023_20E3", "u002A", "u002A_20E3"]);
        assert_eq!(names[names.len() - 1], "u3299");
        assert_eq!(
            digest(names.join("\n").as_bytes()),
            "35270c6c5444e8cffbbd94ae38706592560dd13746d36f7e8db044a6d7cc7d6d"
        );
        let rgb: Vec<u8> = all.iter().flat_map(|e| e.rgb.iter().copied()).collect();
        assert_eq!(
            digest(&rgb),
            "6237bc8fe996a2d2cceaf5686139b90a7fa70c9ac822baaf05b41c75a775cefd"
        );
        let find = |n: &str| all.iter().find(|e| e.name == n).unwrap();
        assert_eq!(pixel(find("u1F600"), 16, 8, 8), [252, 219, 45]);
        assert_eq!(pixel(find("u1F1FA_1F1F8"), 16, 8, 8), [216, 144, 153]);
        assert_eq!(pixel(find("u1F44D_1F3FF"), 16, 8, 6), [108, 79, 70]);
        for (drop_flags, drop_skin_tones, n) in
            [(true, false, 3575), (false, true, 2036), (true, true, 1685)]
        {
            let o = EmojiOptions {
                size: 1,
                drop_flags,
                drop_skin_tones,
            };
            assert_eq!(read_font(&path, &o).unwrap().len(), n, "{o:?}");
        }
    }

    #[test]
    fn real_font_filters_apply() {
        let o = EmojiOptions {
            size: 8,
            drop_flags: true,
            drop_skin_tones: true,
        };
        let kept = read_font(&real_font(), &o).unwrap();
        assert_eq!(kept.len(), 1685);
        assert!(kept
            .iter()
            .all(|e| !is_flag(&e.name) && !has_skin_tone(&e.name)));
    }

    #[test]
    fn flag_and_skin_tone_rules() {
        assert!(is_flag("u1F1FA_1F1F8"));
        assert!(is_flag("u1F3F4_E0067_E0062_E0073_E0063_E0074_E007F"));
        assert!(!is_flag("u1F3F4_200D_2620") && !is_flag("u1F3C1") && !is_flag("flag"));
        assert!(
            !is_flag("u1F1E6"),
            "a lone regional indicator is a letter tile"
        );
        assert!(has_skin_tone("u1F44D_1F3FD"));
        assert!(has_skin_tone("u1F9D1_1F3FB_200D_1F91D_200D_1F9D1_1F3FF"));
        assert!(!has_skin_tone("u1F3FB") && !has_skin_tone("u1F44D"));
    }

    fn items(n: usize) -> Vec<Emoji> {
        (0..n)
            .map(|i| Emoji {
                name: format!("u{:04X}", 0x1F300 + i),
                rgb: vec![i as u8; 3],
            })
            .collect()
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (train, valid) = split(items(101), 7, 0.2);
        assert_eq!((train.len(), valid.len()), (81, 20));
        let mut all: Vec<String> = train.iter().chain(&valid).map(|e| e.name.clone()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 101, "disjoint and complete");
        let mut shuffled = items(101);
        shuffled.reverse();
        assert_eq!(
            split(shuffled, 7, 0.2),
            (train.clone(), valid.clone()),
            "input order is irrelevant"
        );
        assert_ne!(split(items(101), 8, 0.2).1, valid, "the seed matters");
        assert!(valid.windows(2).all(|w| w[0].name < w[1].name));
        assert_eq!(split(items(3), 1, 0.0).1.len(), 0);
        assert_eq!(split(vec![], 1, 0.2), (vec![], vec![]));
    }

    #[test]
    #[should_panic(expected = "valid_fraction")]
    fn split_rejects_bad_fraction() {
        split(items(3), 1, 1.5);
    }

    fn pngs() -> Vec<Vec<u8>> {
        vec![
            png(34, 30, 2, [255, 0, 0, 255]),
            png(30, 30, 0, [0, 0, 255, 128]),
            png(20, 40, 0, [0, 255, 0, 255]),
        ]
    }

    fn read_bytes(font: &[u8], o: &EmojiOptions) -> Result<Vec<Emoji>, DataError> {
        let dir = tempfile::tempdir().unwrap();
        read_font(&write(dir.path(), "t.ttf", font), o)
    }

    #[test]
    fn every_index_and_image_format() {
        for index_format in 1..=5 {
            for image_format in 17..=19 {
                let mut spec = Spec::simple(pngs());
                (spec.index_format, spec.image_format) = (index_format, image_format);
                let got = read_bytes(&build(&spec), &opts(4)).unwrap();
                let names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
                assert_eq!(
                    names,
                    ["u1F600", "u1F601", "u1F602"],
                    "{index_format}/{image_format}"
                );
                // Red with its transparent side columns cropped away; blue at
                // half alpha on white; green cropped to its middle square.
                assert_eq!(pixel(&got[0], 4, 0, 0), [255, 0, 0]);
                assert_eq!(pixel(&got[1], 4, 3, 3), [127, 127, 255]);
                assert_eq!(pixel(&got[2], 4, 2, 2), [0, 255, 0]);
            }
        }
    }

    #[test]
    fn glyphs_without_bitmap_are_skipped() {
        let mut spec = Spec::simple(pngs());
        spec.bitmaps[1] = None;
        spec.index_format = 3;
        let got = read_bytes(&build(&spec), &opts(4)).unwrap();
        assert_eq!(
            got.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["u1F600", "u1F602"]
        );
    }

    #[test]
    fn names_from_post_cmap4_and_ligatures() {
        // Glyphs 1..=7 have bitmaps: U+2600, U+2601, a ligature with a
        // mirrored spelling that only its own spelling keeps in glyph order,
        // a ligature, a ligature also mapped from a private-use code point,
        // a private-use glyph, and an unnamed one. Glyph 8 is U+2602.
        let p = || png(8, 8, 0, [9, 9, 9, 255]);
        let mut spec = Spec::simple((0..7).map(|_| p()).collect());
        spec.num_glyphs = 9;
        spec.cmap4 = true;
        spec.cmap = vec![
            (0x2600, 1),
            (0x2601, 2),
            (0x2602, 8),
            (0xE000, 5),
            (0xE001, 6),
        ];
        spec.ligatures = vec![
            (3, vec![1, 8, 2]),
            (3, vec![2, 8, 1]),
            (4, vec![1, 8, 8]),
            (5, vec![1, 1]),
        ];
        spec.extension = true;
        let read = |spec: &Spec| -> Vec<String> {
            read_bytes(&build(spec), &opts(2))
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect()
        };
        assert_eq!(
            read(&spec),
            [
                "glyph7",
                "u2600",
                "u2600_2600",
                "u2600_2602_2601",
                "u2600_2602_2602",
                "u2601",
                "uE001"
            ]
        );
        // `post` names win and are normalised; standard names fall through.
        let name = |s: &str| Some(s.to_string());
        spec.post = Some(vec![
            None,
            name("uni2600"),
            name("sun"),
            None,
            name("u1F1FA_1F1F8"),
            name("sun"),
            None,
            None,
            None,
        ]);
        assert_eq!(
            read(&spec),
            [
                "glyph7",
                "sun",
                "sun.5",
                "u1F1FA_1F1F8",
                "u2600",
                "u2600_2602_2601",
                "uE001"
            ]
        );
    }

    /// Reads `font` from a file and returns the error text, which must name the file.
    fn error_of(font: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "bad.ttf", font);
        let e = match read_font(&path, &opts(4)) {
            Ok(all) => panic!("read {} emoji from a bad font", all.len()),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(&path.display().to_string()), "{e}");
        e
    }

    fn put32(font: &mut [u8], at: usize, v: u32) {
        font[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    #[test]
    fn malformed_fonts_are_errors_with_offsets() {
        let good = build(&Spec::simple(pngs()));
        assert!(error_of(&good[..3]).contains("byte 0: not a usable sfnt font: unknown magic"));
        // `hhea` and `maxp`, the last tables, cut short.
        let e = error_of(&good[..good.len() - 10]);
        assert!(e.contains("the hhea table is missing or malformed"), "{e}");
        assert!(error_of(b"<html>not a font</html>").contains("not a usable sfnt font"));

        let (cblc, _) = table(&good, b"CBLC");
        let mut bad = good.clone();
        put32(&mut bad, 12 + 16 + 8, 0xFFFF_FF00); // CBLC's directory offset
        assert!(error_of(&bad).contains("font has no colour bitmaps (CBLC/CBDT tables)"));

        let mut bad = good.clone();
        put32(&mut bad, cblc + 64 + 4, 1 << 20); // imageDataOffset of the index subtable
        assert!(error_of(&bad).contains("font has no colour bitmap"));

        let (cbdt, _) = table(&good, b"CBDT");
        let mut bad = good.clone();
        let png_at = cbdt + 4 + 9;
        bad[png_at + 20..png_at + 40].fill(0x55); // inside IHDR
        let e = error_of(&bad);
        assert!(
            e.contains(&format!("byte {png_at}: glyph 1 (u1F600): corrupt PNG")),
            "{e}"
        );

        let mut bad = good.clone();
        bad[cbdt + 4 + 9..cbdt + 4 + 13].fill(0); // glyph 1's PNG signature
        let e = error_of(&bad);
        assert!(
            e.contains(&format!("byte {png_at}: glyph 1 (u1F600): corrupt PNG")),
            "{e}"
        );
    }

    /// A glyph record that claims more bytes than CBDT holds, or lies outside it,
    /// has no bitmap (as `ttf-parser` reads it); the other glyphs still read.
    #[test]
    fn glyphs_with_unreadable_records_are_left_out() {
        let good = build(&Spec::simple(pngs()));
        let (cbdt, _) = table(&good, b"CBDT");
        let mut bad = good.clone();
        put32(&mut bad, cbdt + 4 + 5, 1 << 30); // PNG length of glyph 1
        let names: Vec<String> = read_bytes(&bad, &opts(4))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["u1F601", "u1F602"]);
    }

    #[test]
    fn no_truncation_or_byte_flip_panics() {
        let good = build(&Spec::simple(vec![png(6, 4, 1, [1, 2, 3, 255])]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.ttf");
        let (maxp, len) = table(&good, b"maxp"); // the last table
        for cut in 0..maxp + len {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(read_font(&path, &opts(2)).is_err(), "cut at {cut}");
        }
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0xA5;
            std::fs::write(&path, &bad).unwrap();
            let _ = read_font(&path, &opts(2)); // Ok or Err, never a panic
        }
    }

    #[test]
    fn real_font_truncated_is_an_error() {
        let data = std::fs::read(real_font()).unwrap();
        let (cbdt, len) = table(&data, b"CBDT");
        for cut in [0, 100, 300, data.len() / 2, cbdt + len - 1] {
            assert!(!error_of(&data[..cut]).is_empty());
        }
    }

    #[test]
    fn missing_font_and_bad_size() {
        let dir = tempfile::tempdir().unwrap();
        let nowhere = dir.path().join("none.ttf");
        assert!(matches!(
            read_font(&nowhere, &opts(4)),
            Err(DataError::Io { .. })
        ));
        let e = read_font(&nowhere, &opts(0)).unwrap_err().to_string();
        assert!(e.contains("0x0"), "{e}");
    }

    #[test]
    fn png_folder_names_crops_and_composites() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "emoji_u1f600.png",
            &png(12, 8, 2, [255, 0, 0, 255]),
        );
        write(
            dir.path(),
            "1f1fa-1f1f8.PNG",
            &png(8, 8, 0, [0, 0, 255, 255]),
        );
        write(dir.path(), "smile.png", &png(8, 8, 0, [0, 0, 0, 0]));
        write(
            dir.path(),
            "u2764_fe0f.png",
            &png(8, 12, 0, [0, 255, 0, 255]),
        );
        write(dir.path(), "notes.txt", b"ignored");
        let got = read_png_folder(dir.path(), &opts(4)).unwrap();
        let names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["smile", "u1F1FA_1F1F8", "u1F600", "u2764"]);
        assert_eq!(
            pixel(&got[0], 4, 1, 1),
            [255, 255, 255],
            "transparent becomes white"
        );
        assert_eq!(
            pixel(&got[2], 4, 0, 0),
            [255, 0, 0],
            "transparent side columns cropped"
        );
        assert_eq!(pixel(&got[3], 4, 0, 3), [0, 255, 0]);
        let o = EmojiOptions {
            drop_flags: true,
            ..opts(4)
        };
        assert_eq!(read_png_folder(dir.path(), &o).unwrap().len(), 3);
    }

    #[test]
    fn png_folder_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_png_folder(dir.path(), &opts(4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no image"), "{e}");
        write(dir.path(), "u1F600.png", &png(4, 4, 0, [1, 1, 1, 255]));
        write(
            dir.path(),
            "emoji_u1f600.png",
            &png(4, 4, 0, [1, 1, 1, 255]),
        );
        let e = read_png_folder(dir.path(), &opts(4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("both name emoji u1F600"), "{e}");
        std::fs::remove_file(dir.path().join("u1F600.png")).unwrap();
        let bad = write(dir.path(), "u1F601.png", b"\x89PNG\r\n\x1a\nbroken");
        let e = read_png_folder(dir.path(), &opts(4))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&bad.display().to_string()) && e.contains("cannot decode"),
            "{e}"
        );
    }
}
