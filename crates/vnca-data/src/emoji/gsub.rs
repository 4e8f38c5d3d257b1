//! Ligatures of the glyph substitution table (`GSUB` lookup type 4).
//!
//! Colour emoji fonts draw multi-code-point emoji (flags, skin tones, ZWJ
//! sequences) as ligatures: the glyphs of the sequence are replaced by one
//! glyph. Reading every ligature, from every lookup (directly or through an
//! extension lookup, type 7), gives the glyph sequences each such glyph
//! stands for. Contextual lookups are ignored: they only steer which
//! ligatures apply, they draw nothing new.

use super::super::DataError;
use super::sfnt::{Font, Table};

/// How many subtables, coverage glyphs, ligatures and component glyphs one
/// GSUB may make us read. Offsets may point many records at one, so a few KB
/// could otherwise stand for billions of ligatures. Noto Color Emoji 2.042
/// has 6 subtables and 3985 ligatures of 16419 glyphs.
const MAX_WORK: usize = 1 << 20;

/// Takes `n` from `budget`, or fails at `off` in `t`.
fn spend(budget: &mut usize, n: usize, t: &Table, off: usize) -> Result<(), DataError> {
    *budget = budget.checked_sub(n).ok_or_else(|| {
        t.error(
            off,
            format_args!(
                "more than {MAX_WORK} subtables, ligatures and glyphs to read; offsets repeat"
            ),
        )
    })?;
    Ok(())
}

/// Every (ligature glyph, component glyphs) pair, in table order. A glyph
/// can appear with several sequences (mirrored or aliased spellings).
pub fn ligatures(font: &Font) -> Result<Vec<(u16, Vec<u16>)>, DataError> {
    let mut out = Vec::new();
    let Some(gsub) = font.table("GSUB") else {
        return Ok(out);
    };
    let mut budget = MAX_WORK;
    let list = gsub.at16(8)?;
    for i in 0..usize::from(list.u16(0)?) {
        let lookup = list.at16(2 + 2 * i)?;
        let kind = lookup.u16(0)?;
        for s in 0..usize::from(lookup.u16(4)?) {
            spend(&mut budget, 1, &lookup, 6 + 2 * s)?;
            let mut sub = lookup.at16(6 + 2 * s)?;
            let mut sub_kind = kind;
            if kind == 7 {
                sub_kind = sub.u16(2)?;
                let off = sub.u32(4)? as usize;
                sub = sub.sub(off).map_err(|_| {
                    sub.error(
                        4,
                        format_args!("extension offset {off} is past the table end"),
                    )
                })?;
            }
            if sub_kind == 4 {
                ligature_subst(&sub, &mut out, &mut budget)?;
            }
        }
    }
    Ok(out)
}

/// One LigatureSubstFormat1 subtable.
fn ligature_subst(
    sub: &Table,
    out: &mut Vec<(u16, Vec<u16>)>,
    budget: &mut usize,
) -> Result<(), DataError> {
    let format = sub.u16(0)?;
    if format != 1 {
        return Err(sub.error(0, format_args!("unknown ligature subtable format {format}")));
    }
    let first_glyphs = coverage(&sub.at16(2)?)?;
    spend(budget, first_glyphs.len(), sub, 2)?;
    let sets = usize::from(sub.u16(4)?);
    if sets > first_glyphs.len() {
        return Err(sub.error(
            4,
            format_args!(
                "{sets} ligature sets but the coverage lists {} glyphs",
                first_glyphs.len()
            ),
        ));
    }
    for (k, &first) in first_glyphs.iter().enumerate().take(sets) {
        let set = sub.at16(6 + 2 * k)?;
        for m in 0..usize::from(set.u16(0)?) {
            let lig = set.at16(2 + 2 * m)?;
            let glyph = lig.u16(0)?;
            let count = usize::from(lig.u16(2)?);
            if count == 0 {
                return Err(lig.error(2, "ligature with zero components"));
            }
            spend(budget, 1 + count, &lig, 2)?;
            let mut seq = vec![first];
            for j in 0..count - 1 {
                seq.push(lig.u16(4 + 2 * j)?);
            }
            out.push((glyph, seq));
        }
    }
    Ok(())
}

/// The glyphs of a coverage table, in coverage-index order.
fn coverage(cov: &Table) -> Result<Vec<u16>, DataError> {
    let n = usize::from(cov.u16(2)?);
    match cov.u16(0)? {
        1 => (0..n).map(|i| cov.u16(4 + 2 * i)).collect(),
        2 => {
            let mut glyphs = Vec::new();
            for r in 0..n {
                let at = 4 + 6 * r;
                let (start, end, index) = (cov.u16(at)?, cov.u16(at + 2)?, cov.u16(at + 4)?);
                if end < start || usize::from(index) != glyphs.len() {
                    return Err(cov.error(
                        at,
                        format_args!("coverage range {start}..={end} (index {index}) is reversed or out of order"),
                    ));
                }
                glyphs.extend(start..=end);
            }
            Ok(glyphs)
        }
        f => Err(cov.error(0, format_args!("unknown coverage format {f}"))),
    }
}
