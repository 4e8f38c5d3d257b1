//! Character map: which code point each glyph draws (`cmap` formats 4 and 12).
//!
//! Only the Unicode subtables are read (platform 0, or Windows encodings 1
//! and 10); format 14 (variation selectors) adds no glyphs we need. A glyph
//! reached from several code points keeps one: a standard code point beats a
//! private-use one (Noto maps legacy Android PUA code points onto its keycap
//! and flag glyphs), then the smallest wins. Segments must be sorted and
//! disjoint, as the spec requires; that also bounds the work on a hostile file.

use super::super::DataError;
use super::sfnt::{Font, Table};

/// How many code points all subtables together may map. Encoding records may
/// all point to one subtable, so a small table could otherwise make us walk
/// all of Unicode thousands of times. Four times all of Unicode is plenty.
const MAX_CODE_POINTS: usize = 4 << 20;

/// For each glyph id below `num_glyphs`, the code point that names it, if any.
pub fn code_points(font: &Font, num_glyphs: u16) -> Result<Vec<Option<u32>>, DataError> {
    let mut best = vec![None; usize::from(num_glyphs)];
    let Some(cmap) = font.table("cmap") else {
        return Ok(best);
    };
    let mapped = std::cell::Cell::new(0usize);
    let mut add = |cp: u32, glyph: u32| {
        mapped.set(mapped.get() + 1);
        if let Some(slot) = best.get_mut(glyph as usize) {
            if glyph != 0 && slot.is_none_or(|old| (is_pua(cp), cp) < (is_pua(old), old)) {
                *slot = Some(cp);
            }
        }
    };
    for i in 0..usize::from(cmap.u16(2)?) {
        let rec = 4 + 8 * i;
        let (platform, encoding) = (cmap.u16(rec)?, cmap.u16(rec + 2)?);
        if !(platform == 0 || (platform == 3 && matches!(encoding, 1 | 10))) {
            continue;
        }
        let off = cmap.u32(rec + 4)? as usize;
        let sub = cmap.sub(off).map_err(|_| {
            cmap.error(
                rec + 4,
                format_args!("subtable offset {off} is past the table end"),
            )
        })?;
        match sub.u16(0)? {
            4 => format4(&sub, &mut add)?,
            12 => format12(&sub, &mut add)?,
            _ => continue,
        }
        if mapped.get() > MAX_CODE_POINTS {
            return Err(cmap.error(
                rec + 4,
                format_args!(
                    "subtables map more than {MAX_CODE_POINTS} code points; offsets repeat"
                ),
            ));
        }
    }
    Ok(best)
}

/// True for the Private Use Areas, whose code points mean nothing portable.
pub fn is_pua(cp: u32) -> bool {
    (0xE000..=0xF8FF).contains(&cp) || cp >= 0xF_0000
}

/// Segmented 16-bit mapping.
fn format4(sub: &Table, add: &mut impl FnMut(u32, u32)) -> Result<(), DataError> {
    let segs = usize::from(sub.u16(6)? / 2);
    let (ends, starts, deltas, ranges) = (14, 16 + 2 * segs, 16 + 4 * segs, 16 + 6 * segs);
    let mut prev_end: Option<u16> = None;
    for i in 0..segs {
        let (start, end) = (sub.u16(starts + 2 * i)?, sub.u16(ends + 2 * i)?);
        if end < start || prev_end.is_some_and(|p| start <= p) {
            return Err(sub.error(
                starts + 2 * i,
                format_args!("format 4 segment {i} ({start:#x}..={end:#x}) is reversed or overlaps the previous one"),
            ));
        }
        prev_end = Some(end);
        let delta = sub.u16(deltas + 2 * i)?;
        let range_at = ranges + 2 * i;
        let range = usize::from(sub.u16(range_at)?);
        for c in start..=end {
            let glyph = if range == 0 {
                c.wrapping_add(delta)
            } else {
                match sub.u16(range_at + range + 2 * usize::from(c - start))? {
                    0 => 0,
                    g => g.wrapping_add(delta),
                }
            };
            if c != 0xFFFF {
                add(u32::from(c), u32::from(glyph));
            }
        }
    }
    Ok(())
}

/// Segmented 32-bit coverage: groups of consecutive code points and glyphs.
fn format12(sub: &Table, add: &mut impl FnMut(u32, u32)) -> Result<(), DataError> {
    let groups = sub.u32(12)? as usize;
    let mut prev_end: Option<u32> = None;
    for i in 0..groups {
        let at = 16 + 12 * i;
        let (start, end, glyph) = (sub.u32(at)?, sub.u32(at + 4)?, sub.u32(at + 8)?);
        if end < start || end > 0x10_FFFF || prev_end.is_some_and(|p| start <= p) {
            return Err(sub.error(
                at,
                format_args!("format 12 group {i} ({start:#x}..={end:#x}) is invalid, reversed or overlaps the previous one"),
            ));
        }
        prev_end = Some(end);
        for c in start..=end {
            match glyph.checked_add(c - start) {
                Some(g) if g <= u32::from(u16::MAX) => add(c, g),
                _ => break,
            }
        }
    }
    Ok(())
}
