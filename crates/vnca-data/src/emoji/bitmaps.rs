//! Where each glyph's colour PNG is: the CBLC (location) and CBDT (data) tables.
//!
//! CBLC lists bitmap "strikes" (one per pixel size); each strike has index
//! subtables mapping a glyph range to byte ranges of CBDT. We read the strike
//! with the largest ppem (Noto ships one, 109 ppem, 136x128 pixels), all five
//! index formats (Noto uses format 1), and the three PNG glyph formats
//! (17: small metrics, 18: big metrics, 19: metrics in CBLC). Metrics are
//! skipped: we only need the PNG, whose header gives the true size. A byte
//! range outside CBDT is reported at the CBLC entry that points to it.

use super::super::DataError;
use super::sfnt::{Font, Table};

/// One glyph's PNG, borrowed from the font file.
pub struct Bitmap<'a> {
    pub glyph: u16,
    /// Absolute file offset of the first PNG byte, for error messages.
    pub offset: u64,
    pub png: &'a [u8],
}

/// How many glyph locations the index subtables together may list. Index
/// array records may all point to one subtable, so a small CBLC could
/// otherwise list billions. A font has at most 65536 glyphs per strike.
const MAX_LOCATIONS: usize = 1 << 20;

/// Every colour bitmap of the largest strike, sorted by glyph id (the first
/// index subtable wins if two cover the same glyph).
pub fn color_bitmaps<'a>(font: &Font<'a>) -> Result<Vec<Bitmap<'a>>, DataError> {
    let why = "colour bitmaps; COLR- or SVG-only fonts such as Noto-COLRv1 are not supported";
    let cblc = font.require("CBLC", why)?;
    let cbdt = font.require("CBDT", why)?;
    let strike = largest_strike(&cblc)?;
    let array_off = cblc.u32(strike)? as usize;
    let array = cblc.sub(array_off).map_err(|_| {
        cblc.error(
            strike,
            format_args!("index array offset {array_off} is past the table end"),
        )
    })?;
    let count = cblc.u32(strike + 8)?;
    let mut out = Vec::new();
    let mut budget = MAX_LOCATIONS;
    for k in 0..count as usize {
        let first = array.u16(8 * k)?;
        let last = array.u16(8 * k + 2)?;
        if last < first {
            return Err(array.error(
                8 * k,
                format_args!("glyph range {first}..={last} is reversed"),
            ));
        }
        let sub_off = array.u32(8 * k + 4)? as usize;
        let sub = array.sub(sub_off).map_err(|_| {
            array.error(
                8 * k + 4,
                format_args!("index subtable offset {sub_off} is past the table end"),
            )
        })?;
        read_subtable(&sub, &cbdt, first, last, &mut out, &mut budget)?;
    }
    out.sort_by_key(|b| b.glyph);
    out.dedup_by_key(|b| b.glyph);
    Ok(out)
}

/// Offset in CBLC of the BitmapSize record with the largest vertical ppem.
fn largest_strike(cblc: &Table) -> Result<usize, DataError> {
    let major = cblc.u16(0)?;
    if major != 2 && major != 3 {
        return Err(cblc.error(0, format_args!("unsupported version {major} (expected 3)")));
    }
    let mut best: Option<(usize, u8)> = None;
    for i in 0..cblc.u32(4)? as usize {
        let rec = 8 + 48 * i;
        let ppem = cblc.u8(rec + 45)?;
        if best.is_none_or(|(_, p)| ppem > p) {
            best = Some((rec, ppem));
        }
    }
    best.map(|(rec, _)| rec)
        .ok_or_else(|| cblc.error(4, "lists no bitmap strike"))
}

/// Appends the bitmaps one index subtable locates.
fn read_subtable<'a>(
    sub: &Table<'a>,
    cbdt: &Table<'a>,
    first: u16,
    last: u16,
    out: &mut Vec<Bitmap<'a>>,
    budget: &mut usize,
) -> Result<(), DataError> {
    let index_format = sub.u16(0)?;
    let image_format = sub.u16(2)?;
    if !matches!(image_format, 17..=19) {
        return Err(sub.error(
            2,
            format_args!("image format {image_format} is not a PNG format (17, 18 or 19)"),
        ));
    }
    let data = sub.u32(4)? as usize;
    // (glyph, start, end relative to `data`, offset in `sub` of the entry)
    let mut locs: Vec<(u16, usize, usize, usize)> = Vec::new();
    match index_format {
        1 | 3 => {
            let w = if index_format == 1 { 4 } else { 2 };
            let read = |at: usize| -> Result<usize, DataError> {
                Ok(if w == 4 {
                    sub.u32(at)? as usize
                } else {
                    usize::from(sub.u16(at)?)
                })
            };
            for (i, g) in (first..=last).enumerate() {
                let at = 8 + w * i;
                locs.push((g, read(at)?, read(at + w)?, at));
            }
        }
        2 => {
            let size = sub.u32(8)? as usize;
            for (i, g) in (first..=last).enumerate() {
                locs.push((g, i * size, (i + 1) * size, 8));
            }
        }
        4 => {
            let n = sub.u32(8)? as usize;
            for j in 0..n {
                let at = 12 + 4 * j;
                let start = usize::from(sub.u16(at + 2)?);
                locs.push((sub.u16(at)?, start, usize::from(sub.u16(at + 6)?), at));
            }
        }
        5 => {
            let size = sub.u32(8)? as usize;
            for j in 0..sub.u32(20)? as usize {
                let at = 24 + 2 * j;
                locs.push((sub.u16(at)?, j * size, (j + 1) * size, at));
            }
        }
        f => return Err(sub.error(0, format_args!("unknown index subtable format {f}"))),
    }
    *budget = budget.checked_sub(locs.len()).ok_or_else(|| {
        sub.error(
            0,
            format_args!("index subtables list more than {MAX_LOCATIONS} glyphs; offsets repeat"),
        )
    })?;
    for (glyph, start, end, at) in locs {
        if end == start {
            continue; // the glyph has no bitmap in this strike
        }
        let (s, e) = (data + start, data + end);
        if end < start || e > cbdt.len() {
            return Err(sub.error(
                at,
                format_args!(
                    "glyph {glyph}: bitmap bytes CBDT+{s}..CBDT+{e} lie outside the CBDT table ({} bytes)",
                    cbdt.len()
                ),
            ));
        }
        out.push(png_of(cbdt, glyph, s, e, image_format)?);
    }
    Ok(())
}

/// The PNG inside glyph record `cbdt[start..end]` of the given image format.
fn png_of<'a>(
    cbdt: &Table<'a>,
    glyph: u16,
    start: usize,
    end: usize,
    format: u16,
) -> Result<Bitmap<'a>, DataError> {
    // Length field position after the metrics: small (5 bytes), big (8), none.
    let len_at = start + [5, 8, 0][usize::from(format - 17)];
    let len = cbdt.u32(len_at)? as usize;
    let png_at = len_at + 4;
    if png_at + len > end {
        return Err(cbdt.error(
            len_at,
            format_args!(
                "glyph {glyph}: declares {len} PNG bytes but its record holds {}",
                end.saturating_sub(png_at)
            ),
        ));
    }
    Ok(Bitmap {
        glyph,
        offset: cbdt.abs(png_at),
        png: cbdt.bytes(png_at, len)?,
    })
}
