//! The tables of a colour-bitmap font, read with `ttf-parser` (a maintained sfnt
//! parser, fuzzed upstream): CBLC/CBDT for each glyph's PNG, `cmap` for code points,
//! GSUB ligatures for multi-code-point emoji, `post` for glyph names.
//!
//! `ttf-parser` checks every read against the data and answers `None` where a table
//! is malformed; what it cannot bound is how often offsets send it over the same bytes.
//! That stays ours: each method below caps its work (a few KB of hostile tables could
//! otherwise stand for billions of glyph lookups, code points or ligatures), and the
//! PNG decoding caps memory (`super::super::folder::MAX_BITMAP_BYTES`).

use super::super::DataError;
use std::path::Path;
use ttf_parser::cmap::Format;
use ttf_parser::gsub::SubstitutionSubtable;
use ttf_parser::opentype_layout::Coverage;
use ttf_parser::{Face, GlyphId, RasterImageFormat, Tag};

/// One glyph's PNG, borrowed from the font file.
pub struct Bitmap<'a> {
    pub glyph: u16,
    /// Absolute file offset of the first PNG byte, for error messages.
    pub offset: u64,
    pub png: &'a [u8],
}

/// How many (glyph, CBLC record) pairs the bitmap lookups may visit: each glyph's
/// lookup walks the strike and index-subtable records (at least 8 bytes each), so
/// glyphs x (CBLC bytes / 8) bounds the work. Noto Color Emoji 2.042 needs about
/// 3.2 million; a hostile 64 KiB CBLC over 65535 glyphs would need 537 million.
const MAX_BITMAP_LOOKUPS: usize = 64 << 20;

/// How many Unicode subtables (formats 4 and 12) are read. Each costs one lookup per
/// code point of its range (65536 or 1114112); encoding records may all point to one
/// subtable. Noto Color Emoji 2.042 has 2.
const MAX_CMAP_SUBTABLES: usize = 8;

/// How many subtables, coverage glyphs, ligatures and component glyphs one GSUB may
/// make us read. Offsets may point many records at one, so a few KB could otherwise
/// stand for billions of ligatures. Noto Color Emoji 2.042 has 6 subtables and 3985
/// ligatures.
const MAX_LIGATURE_WORK: usize = 1 << 20;

/// A parsed font over the bytes of the file at `path`.
pub struct Font<'a> {
    path: &'a Path,
    data: &'a [u8],
    face: Face<'a>,
}

impl<'a> Font<'a> {
    /// Parses the table directory and the tables every font has (`head`, `hhea`,
    /// `maxp`). A collection (`.ttc`) is read as its first font.
    pub fn parse(path: &'a Path, data: &'a [u8]) -> Result<Self, DataError> {
        let face = Face::parse(data, 0)
            .map_err(|e| DataError::format(path, 0, format!("not a usable sfnt font: {e}")))?;
        Ok(Font { path, data, face })
    }

    pub fn num_glyphs(&self) -> u16 {
        self.face.number_of_glyphs()
    }

    fn raw_table(&self, tag: &[u8; 4]) -> Option<&'a [u8]> {
        self.face.raw_face().table(Tag::from_bytes(tag))
    }

    /// File offset of `bytes`, a slice of the font's data.
    fn offset_of(&self, bytes: &[u8]) -> u64 {
        (bytes.as_ptr() as usize).wrapping_sub(self.data.as_ptr() as usize) as u64
    }

    /// Every colour bitmap of the largest strike, sorted by glyph id. Glyphs without
    /// a bitmap in CBLC are left out; a bitmap that is not a PNG is an error.
    pub fn color_bitmaps(&self) -> Result<Vec<Bitmap<'a>>, DataError> {
        let cbdt = self.face.tables().cbdt.ok_or_else(|| {
            DataError::invalid(
                self.path,
                "font has no colour bitmaps (CBLC/CBDT tables); COLR- or SVG-only fonts \
                 such as Noto-COLRv1 are not supported",
            )
        })?;
        let cblc_len = self.raw_table(b"CBLC").map_or(0, <[u8]>::len);
        let n = self.num_glyphs();
        let lookups = usize::from(n) * (cblc_len / 8 + 1);
        if lookups > MAX_BITMAP_LOOKUPS {
            return Err(DataError::invalid(
                self.path,
                format!(
                    "{n} glyphs over a {cblc_len}-byte CBLC table: more than \
                     {MAX_BITMAP_LOOKUPS} bitmap lookups"
                ),
            ));
        }
        let mut out: Vec<Bitmap<'a>> = Vec::new();
        for glyph in 0..n {
            // u16::MAX pixels per em: the largest strike that covers the glyph.
            let Some(img) = cbdt.get(GlyphId(glyph), u16::MAX) else {
                continue;
            };
            let bitmap = Bitmap {
                glyph,
                offset: self.offset_of(img.data),
                png: img.data,
            };
            if img.format != RasterImageFormat::PNG {
                return Err(DataError::format(
                    self.path,
                    bitmap.offset,
                    format!(
                        "glyph {glyph}: {:?} bitmap, not one of the PNG formats (17, 18, 19)",
                        img.format
                    ),
                ));
            }
            // `ttf-parser` reads a glyph's record from its start offset alone, so a
            // glyph whose record is empty (index formats 1 and 3: no bitmap in this
            // strike) gets the next glyph's bytes. The record belongs to the last
            // glyph pointing at it.
            match out.last_mut() {
                Some(last) if std::ptr::eq(last.png, bitmap.png) => *last = bitmap,
                _ => out.push(bitmap),
            }
        }
        Ok(out)
    }

    /// For each glyph, the code point that names it, if any: from the Unicode `cmap`
    /// subtables of formats 4 and 12 (format 14, variation selectors, adds no glyph we
    /// need). A glyph reached from several code points keeps one: a standard code
    /// point beats a private-use one (Noto maps legacy Android PUA code points onto
    /// its keycap and flag glyphs), then the smallest wins.
    pub fn code_points(&self) -> Result<Vec<Option<u32>>, DataError> {
        let mut best: Vec<Option<u32>> = vec![None; usize::from(self.num_glyphs())];
        let Some(cmap) = self.face.tables().cmap else {
            return Ok(best);
        };
        let mut read = 0;
        for i in 0..cmap.subtables.len() {
            let Some(sub) = cmap.subtables.get(i) else {
                continue;
            };
            let last = match sub.format {
                Format::SegmentMappingToDeltaValues(_) => 0xFFFE, // U+FFFF ends the table
                Format::SegmentedCoverage(_) => 0x10_FFFF,
                _ => continue,
            };
            if !sub.is_unicode() {
                continue;
            }
            read += 1;
            if read > MAX_CMAP_SUBTABLES {
                return Err(DataError::invalid(
                    self.path,
                    format!("`cmap` has more than {MAX_CMAP_SUBTABLES} Unicode subtables"),
                ));
            }
            // One lookup per code point: bounded whatever ranges the subtable claims.
            for cp in 0..=last {
                let Some(GlyphId(g)) = sub.glyph_index(cp) else {
                    continue;
                };
                if let Some(slot) = best.get_mut(usize::from(g)) {
                    if g != 0 && slot.is_none_or(|old| (is_pua(cp), cp) < (is_pua(old), old)) {
                        *slot = Some(cp);
                    }
                }
            }
        }
        Ok(best)
    }

    /// Every (ligature glyph, component glyphs) pair of the GSUB ligature
    /// substitutions (lookup type 4, directly or through an extension lookup), in
    /// table order. A glyph can appear with several sequences (mirrored or aliased
    /// spellings). Contextual lookups are ignored: they only steer which ligatures
    /// apply, they draw nothing new.
    pub fn ligatures(&self) -> Result<Vec<(u16, Vec<u16>)>, DataError> {
        let mut out = Vec::new();
        let Some(gsub) = self.face.tables().gsub else {
            return Ok(out);
        };
        let mut budget = MAX_LIGATURE_WORK;
        let mut spend = |n: usize| {
            budget = budget.checked_sub(n).ok_or_else(|| {
                DataError::invalid(
                    self.path,
                    format!(
                        "GSUB: more than {MAX_LIGATURE_WORK} subtables, ligatures and glyphs \
                         to read; offsets repeat"
                    ),
                )
            })?;
            Ok::<(), DataError>(())
        };
        let lookups = gsub.lookups;
        for l in 0..lookups.len() {
            let Some(lookup) = lookups.get(l) else {
                continue;
            };
            for s in 0..lookup.subtables.len() {
                spend(1)?;
                let Some(SubstitutionSubtable::Ligature(subst)) =
                    lookup.subtables.get::<SubstitutionSubtable>(s)
                else {
                    continue;
                };
                let sets = subst.ligature_sets;
                for (k, first) in (0..sets.len()).zip(coverage_glyphs(subst.coverage)) {
                    spend(1)?;
                    let Some(set) = sets.get(k) else {
                        continue;
                    };
                    for m in 0..set.len() {
                        let Some(lig) = set.get(m) else {
                            continue;
                        };
                        spend(1 + usize::from(lig.components.len()))?;
                        let mut seq = vec![first];
                        seq.extend(lig.components.into_iter().map(|g| g.0));
                        out.push((lig.glyph.0, seq));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Custom glyph names of a `post` format 2 table, per glyph; standard Macintosh
    /// names (indices below 258: `.notdef`, `space`, ...) are left out. `ttf-parser`
    /// reads the names but keeps the per-glyph index array private (its `glyph_name`
    /// walks the name list on every call, quadratic over a font), so that array of
    /// u16 is read here. A name that is empty or not UTF-8 ends the list, as in
    /// `ttf-parser`; glyphs indexing past it have no `post` name.
    pub fn post_names(&self) -> Vec<Option<String>> {
        let (Some(post), Some(raw)) = (self.face.tables().post, self.raw_table(b"post")) else {
            return Vec::new();
        };
        let be16 = |at: usize| {
            raw.get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
        };
        if raw.get(..4) != Some(&[0, 2, 0, 0]) {
            return Vec::new();
        }
        let names: Vec<&str> = post.names().collect();
        let count = be16(32).unwrap_or(0).min(self.num_glyphs());
        (0..usize::from(count))
            .map(|g| {
                let index = usize::from(be16(34 + 2 * g)?);
                names.get(index.checked_sub(258)?).map(|s| s.to_string())
            })
            .collect()
    }
}

/// True for the Private Use Areas, whose code points mean nothing portable.
pub fn is_pua(cp: u32) -> bool {
    (0xE000..=0xF8FF).contains(&cp) || cp >= 0xF_0000
}

/// The glyphs of a coverage table in coverage-index order, lazily (a format 2 table
/// may claim 65536 glyphs per record).
fn coverage_glyphs(c: Coverage<'_>) -> Box<dyn Iterator<Item = u16> + '_> {
    match c {
        Coverage::Format1 { glyphs } => Box::new(glyphs.into_iter().map(|g| g.0)),
        Coverage::Format2 { records } => {
            Box::new(records.into_iter().flat_map(|r| r.start.0..=r.end.0))
        }
    }
}
