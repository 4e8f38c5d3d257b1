//! Property tests ("fuzzing" without a nightly toolchain) of the emoji readers:
//! `data::emoji::read_font` (sfnt with CBDT/CBLC colour bitmaps, cmap 4/12, GSUB
//! ligatures, `post` names) and `data::emoji::read_png_folder`.
//!
//! The fonts come from the library's own synthetic font builder, `src/emoji/testfont.rs`,
//! compiled into this test binary with `#[path]` (it is a `#[cfg(test)]` module of the
//! library, invisible to integration tests otherwise). This
//! is an integration test rather than a unit test so that it can own the process's
//! global allocator, which checks the allocation bound across the reader's decoding
//! threads.
//!
//! Inputs: fonts with every index format (1-5) and PNG glyph format (17-19), cmap 4 or
//! 12, GSUB ligatures with and without extension lookups, with and without `post`
//! names, with glyphs lacking a bitmap; mutated (bit flips, overwritten bytes and u16/u32
//! words, truncation, insertion, deletion, duplication) with half the positions in the
//! table directory or the first bytes of CBLC, CBDT, cmap, GSUB and post. Folders of
//! emoji PNGs with code-point and plain names, mutated.
//!
//! Properties: no panic; an error names the file (or folder) and is one line; accepted
//! emoji are `size x size` RGB with sorted unique names, and dropping flags or skin tones
//! drops exactly those; valid fonts read completely; no single allocation above
//! [`ALLOC_LIMIT`] on any thread (reads are serialised for that).
//!
//! Cases per property: [`DEFAULT_CASES`], or `PROPTEST_CASES=N` (see docs/RELIABILITY.md).
#[allow(dead_code)]
#[path = "../src/emoji/testfont.rs"]
mod testfont;

use proptest::prelude::*;
use std::path::PathBuf;
use testfont::{build, png, table, Spec};
use vnca_data::emoji::{has_skin_tone, is_flag, read_font, read_png_folder, Emoji, EmojiOptions};
use vnca_fuzzing::alloc::Scope;
use vnca_fuzzing::check_error;
use vnca_fuzzing::mutate::{mutate, Dialect, Mutation, Weights};

/// Our fonts are a few KB; their offsets and counts may claim up to 2^32.
const ALLOC_LIMIT: usize = 64 << 20;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

// The readers decode on several threads: count them all, one read at a time.
vnca_fuzzing::fuzz_binary!(scope: Scope::AllThreads, cases: DEFAULT_CASES, alloc_limit: ALLOC_LIMIT);

// ---------------------------------------------------------------------------------------
// Mutations: sfnt fields are big-endian u16 and u32 words (counts, offsets, format
// numbers), so words outweigh bytes; hot regions are the table directory and the first
// bytes of each table ([`hot_regions`]).

const FONTS: Dialect = Dialect {
    weights: Weights {
        flip: 3,
        set: 2,
        set_u16: 3,
        set_u32: 3,
        set_u64: 0,
        truncate: 1,
        insert: 1,
        remove: 1,
        duplicate: 1,
    },
    bytes: &[0, 1, 2, 4, 0x7f, 0x80, 0xff],
    u16s: &[0, 1, 2, 3, 4, 5, 7, 12, 17, 19, 0x7fff, 0xfffe, 0xffff],
    u32s: &[
        0,
        1,
        2,
        4,
        8,
        12,
        0x0000_ffff,
        0x0001_0000,
        0x0002_0000,
        0x7fff_ffff,
        u32::MAX,
    ],
    u64s: &[],
};

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    FONTS.mutations()
}

// ---------------------------------------------------------------------------------------
// Fonts.

/// A `testfont::png`: width, height, transparent border, colour.
type Pic = (u32, u32, u32, [u8; 4]);

/// What goes into a synthetic font; [`FontSpec::spec`] turns it into a `testfont::Spec`.
#[derive(Clone, Debug)]
struct FontSpec {
    index_format: u16,
    image_format: u16,
    cmap4: bool,
    extension: bool,
    /// Per glyph 1..=n: a picture, or no bitmap.
    bitmaps: Vec<Option<Pic>>,
    /// Glyphs after the bitmap glyphs, only used as ligature components.
    extra_glyphs: u16,
    /// Per glyph: an index into the code-point pool, if mapped.
    cmap: Vec<Option<usize>>,
    /// (ligature glyph index, component glyph indices), indices taken modulo the counts.
    ligatures: Vec<(usize, Vec<usize>)>,
    /// Per glyph: an index into the `post` name pool, if named.
    post: Option<Vec<Option<usize>>>,
}

/// Code points for cmap 12: flags, skin tones, tags, ZWJ, private use.
const CPS_12: [u32; 14] = [
    0x1F600, 0x1F601, 0x1F1FA, 0x1F1F8, 0x1F44D, 0x1F3FB, 0x1F3FF, 0x1F3F4, 0xE0067, 0xE007F,
    0x200D, 0x2764, 0xFE82C, 0xE000,
];
/// Code points for cmap 4 (BMP only).
const CPS_4: [u32; 8] = [
    0x2600, 0x2601, 0x200D, 0x2764, 0xE000, 0x00A9, 0x0023, 0x20E3,
];
const POST_NAMES: [&str; 7] = [
    "uni2600",
    "u1F1FA_1F1F8",
    "sun",
    "u1F44D_1F3FB",
    "emoji_u1f600",
    "",
    "\u{1b}[2J",
];

fn bitmap() -> impl Strategy<Value = Pic> {
    (1u32..20, 1u32..20, any::<[u8; 4]>())
        .prop_flat_map(|(w, h, c)| (Just(w), Just(h), 0..=w / 2, Just(c)))
}

fn font_spec() -> impl Strategy<Value = FontSpec> {
    (
        1u16..=5,
        17u16..=19,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(prop::option::weighted(0.85, bitmap()), 1..6),
        0u16..4,
        prop::collection::vec(prop::option::weighted(0.7, 0usize..14), 10),
        prop::collection::vec(
            (any::<usize>(), prop::collection::vec(any::<usize>(), 1..4)),
            0..4,
        ),
        prop::option::of(prop::collection::vec(prop::option::of(0usize..7), 10)),
    )
        .prop_map(
            |(
                index_format,
                image_format,
                cmap4,
                extension,
                mut bitmaps,
                extra_glyphs,
                cmap,
                ligatures,
                post,
            )| {
                if matches!(index_format, 2 | 4 | 5) {
                    // Only formats 1 and 3 can express a glyph without a bitmap.
                    for (i, b) in bitmaps.iter_mut().enumerate() {
                        b.get_or_insert((3 + i as u32, 4, 1, [1, 2, 3, 255]));
                    }
                }
                FontSpec {
                    index_format,
                    image_format,
                    cmap4,
                    extension,
                    bitmaps,
                    extra_glyphs,
                    cmap,
                    ligatures,
                    post,
                }
            },
        )
}

impl FontSpec {
    fn num_glyphs(&self) -> u16 {
        1 + self.bitmaps.len() as u16 + self.extra_glyphs
    }

    fn spec(&self) -> Spec {
        let n = self.num_glyphs();
        let pool: &[u32] = if self.cmap4 { &CPS_4 } else { &CPS_12 };
        let mut cmap: Vec<(u32, u16)> = Vec::new();
        for g in 1..n {
            if let Some(Some(k)) = self.cmap.get(usize::from(g) - 1) {
                let cp = pool[k % pool.len()];
                if !cmap.iter().any(|&(c, _)| c == cp) {
                    cmap.push((cp, g));
                }
            }
        }
        cmap.sort_unstable();
        let glyph = |i: usize| 1 + (i % usize::from(n - 1)) as u16;
        Spec {
            num_glyphs: n,
            cmap,
            cmap4: self.cmap4,
            ligatures: self
                .ligatures
                .iter()
                .map(|(g, comps)| {
                    (
                        1 + (g % self.bitmaps.len()) as u16,
                        comps.iter().map(|&c| glyph(c)).collect(),
                    )
                })
                .collect(),
            extension: self.extension,
            first: 1,
            bitmaps: self
                .bitmaps
                .iter()
                .map(|b| b.map(|(w, h, border, colour)| png(w, h, border, colour)))
                .collect(),
            index_format: self.index_format,
            image_format: self.image_format,
            post: self.post.as_ref().map(|names| {
                (0..usize::from(n))
                    .map(|g| {
                        let k = names.get(g).copied().flatten()?;
                        Some(POST_NAMES[k].to_string())
                    })
                    .collect()
            }),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        build(&self.spec())
    }
}

/// The table directory and the first bytes of the tables whose offsets and counts
/// matter most.
fn hot_regions(font: &[u8]) -> Vec<(usize, usize)> {
    let n = usize::from(u16::from_be_bytes([font[4], font[5]]));
    let mut r = vec![(0, 12 + 16 * n)];
    for (tag, len) in [
        (b"CBLC", 96),
        (b"CBDT", 24),
        (b"cmap", 48),
        (b"GSUB", 48),
        (b"post", 40),
    ] {
        let has = (0..n).any(|i| &font[12 + 16 * i..16 + 16 * i] == tag);
        if has {
            let (at, tlen) = table(font, tag);
            r.push((at, len.min(tlen)));
        }
    }
    r
}

fn options() -> impl Strategy<Value = EmojiOptions> {
    (
        prop_oneof![3 => Just(64u32), 1 => Just(8), 1 => Just(1), 1 => 1u32..40],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(size, drop_flags, drop_skin_tones)| EmojiOptions {
            size,
            drop_flags,
            drop_skin_tones,
        })
}

/// Invariants of accepted emoji.
fn check_emoji(all: &[Emoji], o: &EmojiOptions) -> Result<(), TestCaseError> {
    let per = (o.size * o.size * 3) as usize;
    for e in all {
        prop_assert_eq!(
            e.rgb.len(),
            per,
            "{} is not {}x{} RGB",
            &e.name,
            o.size,
            o.size
        );
        prop_assert!(!(o.drop_flags && is_flag(&e.name)), "flag {} kept", &e.name);
        prop_assert!(
            !(o.drop_skin_tones && has_skin_tone(&e.name)),
            "skin tone {} kept",
            &e.name
        );
    }
    prop_assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "names are not sorted and unique"
    );
    Ok(())
}

/// `read_font` on `bytes`, with all emoji and as `o` says: the properties, and the
/// unfiltered result when accepted.
fn check_font(bytes: &[u8], o: &EmojiOptions) -> Result<Option<Vec<Emoji>>, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.ttf");
    std::fs::write(&path, bytes).unwrap();
    let all_opts = EmojiOptions {
        drop_flags: false,
        drop_skin_tones: false,
        ..o.clone()
    };
    let mut results = Vec::new();
    for opts in [&all_opts, o] {
        let (res, peak) = largest_allocation(|| read_font(&path, opts));
        check_alloc(peak)?;
        match &res {
            Ok(v) => check_emoji(v, opts)?,
            Err(e) => check_error(e, std::slice::from_ref(&path))?,
        }
        results.push(res.ok());
    }
    let filtered = results.pop().unwrap();
    let all = results.pop().unwrap();
    if let (Some(all), Some(filtered)) = (&all, &filtered) {
        // Filtering drops exactly the flags and skin tones asked for, nothing else.
        let want: Vec<&Emoji> = all
            .iter()
            .filter(|e| {
                let dropped = (o.drop_flags && is_flag(&e.name))
                    || (o.drop_skin_tones && has_skin_tone(&e.name));
                !dropped
            })
            .collect();
        prop_assert_eq!(filtered.iter().collect::<Vec<_>>(), want);
    }
    Ok(all)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn font_survives_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..512),
        magic in prop_oneof![Just(&b""[..]), Just(&b"\x00\x01\x00\x00"[..]), Just(&b"true"[..]), Just(&b"ttcf"[..])],
        o in options(),
    ) {
        check_font(&[magic, &body[..]].concat(), &o)?;
    }

    #[test]
    fn font_survives_mutations(spec in font_spec(), muts in mutations(), o in options()) {
        let valid = spec.bytes();
        check_font(&mutate(&valid, &muts, &hot_regions(&valid)), &o)?;
    }

    #[test]
    fn font_reads_valid_fonts(spec in font_spec(), o in options()) {
        let all = check_font(&spec.bytes(), &o)?;
        let bitmaps = spec.bitmaps.iter().flatten().count();
        match all {
            Some(all) => prop_assert_eq!(all.len(), bitmaps),
            None => prop_assert_eq!(bitmaps, 0, "a valid font was refused"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Folders of emoji PNGs.

const PNG_NAMES: [&str; 10] = [
    "emoji_u1f600.png",
    "u1F600.png",
    "1f1fa-1f1f8.PNG",
    "emoji_u1f44d_1f3fb.png",
    "smile.png",
    "u2764_fe0f.png",
    "face.Png",
    "notes.txt",
    "1f3f4-e0067-e0062-e0065-e006e-e0067-e007f.png",
    "x.jpg",
];

fn check_png_folder(
    files: &[(String, Vec<u8>)],
    o: &EmojiOptions,
) -> Result<Option<Vec<Emoji>>, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let (res, peak) = largest_allocation(|| read_png_folder(dir.path(), o));
    check_alloc(peak)?;
    match res {
        Ok(v) => {
            check_emoji(&v, o)?;
            Ok(Some(v))
        }
        Err(e) => {
            let mut paths = vec![dir.path().to_path_buf()];
            paths.extend(files.iter().map(|(n, _)| dir.path().join(n)));
            check_error(&e, &paths)?;
            Ok(None)
        }
    }
}

fn png_files() -> impl Strategy<Value = Vec<(String, Pic, Vec<Mutation>)>> {
    prop::collection::vec(
        (
            prop::sample::select(&PNG_NAMES[..]).prop_map(str::to_string),
            bitmap(),
            prop::collection::vec(FONTS.mutation(), 0..3),
        ),
        1..4,
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn png_folder_survives_mutations(files in png_files(), o in options()) {
        let files: Vec<(String, Vec<u8>)> = files
            .into_iter()
            .map(|(name, (w, h, border, colour), muts)| {
                let valid = png(w, h, border, colour);
                (name, mutate(&valid, &muts, &[(0, 64)]))
            })
            .collect();
        check_png_folder(&files, &o)?;
    }

    #[test]
    fn png_folder_survives_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..256),
        magic in prop_oneof![Just(&b""[..]), Just(&b"\x89PNG\r\n\x1a\n"[..]), Just(&b"\xff\xd8\xff"[..])],
        o in options(),
    ) {
        check_png_folder(&[("u1F600.png".into(), [magic, &body[..]].concat())], &o)?;
    }
}

/// A font whose table `tag` is replaced by `data`, appended at the end of the file.
fn with_table(font: &[u8], tag: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = font.to_vec();
    let n = usize::from(u16::from_be_bytes([font[4], font[5]]));
    let rec = (0..n)
        .map(|i| 12 + 16 * i)
        .find(|&r| &font[r..r + 4] == tag)
        .unwrap();
    let at = out.len() as u32;
    out[rec + 8..rec + 12].copy_from_slice(&at.to_be_bytes());
    out[rec + 12..rec + 16].copy_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn be16(v: &mut Vec<u8>, xs: &[u16]) {
    xs.iter()
        .for_each(|x| v.extend_from_slice(&x.to_be_bytes()));
}

fn read_path(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.ttf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn small_font() -> Vec<u8> {
    build(&Spec::simple(vec![png(4, 4, 0, [1, 2, 3, 255])]))
}

/// A GSUB of a few KB whose ligature sets and ligatures all point to one shared record:
/// `sets * ligs` ligatures of `comps` components each.
fn shared_gsub(sets: u16, ligs: u16, comps: u16) -> Vec<u8> {
    let mut t = Vec::new();
    be16(&mut t, &[1, 0, 0, 0, 10]); // version, script and feature lists, lookup list
    be16(&mut t, &[1, 4]); // one lookup, at 4 from the list
    be16(&mut t, &[4, 0, 1, 8]); // type 4, one subtable at 8 from the lookup
    let coverage = 6 + 2 * sets;
    let set = coverage + 4 + 2 * sets;
    be16(&mut t, &[1, coverage, sets]);
    be16(&mut t, &vec![set; usize::from(sets)]);
    be16(&mut t, &[1, sets]);
    be16(&mut t, &(1..=sets).collect::<Vec<_>>());
    be16(&mut t, &[ligs]);
    be16(&mut t, &vec![2 + 2 * ligs; usize::from(ligs)]);
    be16(&mut t, &[1, comps]);
    be16(&mut t, &vec![1; usize::from(comps - 1)]);
    t
}

#[test]
fn gsub_with_shared_ligatures_is_bounded() {
    // 2000 x 2000 = 4 million ligatures from 12 KB: without a bound the reader built a
    // list of them all (a 128 MiB vector, then the names of each).
    let font = with_table(&small_font(), b"GSUB", &shared_gsub(2000, 2000, 1));
    let (_dir, path) = read_path(&font);
    let (res, peak) = largest_allocation(|| read_font(&path, &EmojiOptions::default()));
    assert!(peak <= ALLOC_LIMIT, "allocation of {peak} bytes");
    let e = res.unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("GSUB"),
        "{e}"
    );
}

#[test]
fn cmap_with_shared_subtables_is_bounded() {
    // 8000 encoding records, all pointing to one format 12 subtable that maps 65535 code
    // points: half a billion mappings from 64 KB, seconds of work without a bound.
    let mut t = Vec::new();
    let records = 8000u16;
    be16(&mut t, &[0, records]);
    let sub = 4 + 8 * u32::from(records);
    for _ in 0..records {
        be16(&mut t, &[3, 10]);
        t.extend_from_slice(&sub.to_be_bytes());
    }
    be16(&mut t, &[12, 0]);
    for v in [28u32, 0, 1, 0x1_0000, 0x1_FFFE, 1] {
        t.extend_from_slice(&v.to_be_bytes());
    }
    let font = with_table(&small_font(), b"cmap", &t);
    let (_dir, path) = read_path(&font);
    let start = std::time::Instant::now();
    let e = read_font(&path, &EmojiOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("cmap"),
        "{e}"
    );
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
}

#[test]
fn cblc_with_shared_subtables_is_bounded() {
    // The CBLC index array lists one format 2 subtable 8000 times, each time for glyphs
    // 0..=65535 of 0 bytes, and `maxp` claims 65535 glyphs: each glyph's lookup walks
    // the records, half a billion record reads from 64 KB.
    let good = small_font();
    let (cblc, _) = table(&good, b"CBLC");
    let mut t = good[cblc..cblc + 56].to_vec();
    let count = 8000u32;
    t[8..12].copy_from_slice(&56u32.to_be_bytes()); // index array offset
    t[12..16].copy_from_slice(&(8 * count + 16).to_be_bytes()); // index tables size
    t[16..20].copy_from_slice(&count.to_be_bytes());
    t[48..52].copy_from_slice(&[0, 0, 0xff, 0xff]); // the strike's glyph range
    for _ in 0..count {
        be16(&mut t, &[0, 0xffff]);
        t.extend_from_slice(&(8 * count).to_be_bytes());
    }
    be16(&mut t, &[2, 17]);
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // image size 0: no bitmap
    t.extend_from_slice(&[0; 8]);
    let mut font = with_table(&good, b"CBLC", &t);
    let (maxp, _) = table(&font, b"maxp");
    font[maxp + 4..maxp + 6].copy_from_slice(&u16::MAX.to_be_bytes());
    let (_dir, path) = read_path(&font);
    let start = std::time::Instant::now();
    let (res, peak) = largest_allocation(|| read_font(&path, &EmojiOptions::default()));
    assert!(peak <= ALLOC_LIMIT, "allocation of {peak} bytes");
    let e = res.unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("CBLC"),
        "{e}"
    );
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
}

#[test]
fn odd_table_tags_make_one_line_errors() {
    // Found by `font_survives_mutations` when the sfnt parsing was ours: a table tag of
    // NUL bytes went into the error. `ttf-parser` does not echo tags; keep the check.
    let mut font = small_font();
    font[12..16].copy_from_slice(b"C\0\0\0");
    font[20..24].copy_from_slice(&0x4200_0000u32.to_be_bytes());
    let (_dir, path) = read_path(&font);
    let e = read_font(&path, &EmojiOptions::default()).unwrap_err();
    check_error(&e, &[&path]).unwrap();
}

#[test]
fn glyph_names_are_escaped_in_errors() {
    // A `post` glyph name is font data; one with an escape sequence went into the error.
    let mut spec = Spec::simple(vec![png(4, 4, 0, [1, 2, 3, 255])]);
    spec.post = Some(vec![None, Some("\u{1b}[2J\n".to_string())]);
    let mut font = build(&spec);
    let (cbdt, _) = table(&font, b"CBDT");
    font[cbdt + 4 + 9 + 20..cbdt + 4 + 9 + 28].fill(0x55); // inside the PNG's IHDR
    let (_dir, path) = read_path(&font);
    let e = read_font(&path, &EmojiOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("glyph 1 (\\u{1b}[2J): corrupt PNG"), "{e}");
    assert!(!e.chars().any(char::is_control), "{e:?}");
}

#[test]
fn testfont_regions_are_inside_the_font() {
    let spec = Spec::simple(vec![png(4, 4, 0, [1, 2, 3, 255])]);
    let font = build(&spec);
    for (at, len) in hot_regions(&font) {
        assert!(at + len <= font.len());
    }
}
