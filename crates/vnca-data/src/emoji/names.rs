//! Stable names for emoji glyphs: `u1F600`, `u1F1FA_1F1F8`, `u1F469_200D_1F52C`.
//!
//! A name is the code-point sequence the glyph draws, upper-case hex (at
//! least four digits) joined by `_` after a `u`: the spelling of Noto's own
//! glyph names and, in lower case, of the noto-emoji PNG sources, so a font
//! and a folder of those PNGs give the same names and the same split.
//!
//! Where they come from, first match wins:
//! 1. `post` format 2 glyph names (normalised, e.g. `uni2049` -> `u2049`).
//!    Debian's Noto Color Emoji 2.042 has `post` format 3: no names.
//! 2. A standard (non private-use) code point mapped by `cmap`.
//! 3. The glyph's GSUB ligature sequence, components named by `cmap`.
//!    Noto's build (add_glyphs.py) gives each ZWJ or tag sequence a second,
//!    mirrored right-to-left spelling and adds aliases (e.g. flag CP -> FR)
//!    that reuse a glyph; but it orders ligature glyphs by their own
//!    sequence. So among a glyph's spellings we take the one that keeps
//!    sequences increasing with glyph id: the longest increasing chain over
//!    (glyph id, sequence) pairs picks exactly one per glyph. A glyph off
//!    that chain takes its smallest spelling (in Noto only the unknown-flag
//!    glyph, `u1F3F4_E007F`). On 2.042 this reproduces the noto-emoji source
//!    file name of every glyph that has one.
//! 4. A private-use code point (`uFE82C`), else `glyph<id>`.
//!
//! Should two glyphs still end up with one name, later ones get `.<id>`.

use super::super::DataError;
use super::sfnt::Font;
use super::{cmap, gsub};
use std::collections::{HashMap, HashSet};

/// The name of each glyph in `glyphs` (same order).
pub(super) fn glyph_names(font: &Font, glyphs: &[u16]) -> Result<Vec<String>, DataError> {
    let num_glyphs = font.num_glyphs()?;
    let post = post_names(font, num_glyphs)?;
    let cps = cmap::code_points(font, num_glyphs)?;
    let cp = |g: u16| cps.get(usize::from(g)).copied().flatten();
    let mut spellings: Vec<(u16, Vec<u32>)> = gsub::ligatures(font)?
        .into_iter()
        .filter_map(|(g, seq)| Some((g, seq.into_iter().map(cp).collect::<Option<Vec<u32>>>()?)))
        .collect();
    let chain = increasing_chain(&mut spellings);
    let mut seen = HashSet::new();
    Ok(glyphs
        .iter()
        .map(|&g| {
            let name = post
                .get(usize::from(g))
                .cloned()
                .flatten()
                .or_else(|| cp(g).filter(|&c| !cmap::is_pua(c)).map(|c| seq_name(&[c])))
                .or_else(|| chain.get(&g).map(|s| seq_name(s)))
                .or_else(|| cp(g).map(|c| seq_name(&[c])))
                .unwrap_or_else(|| format!("glyph{g}"));
            if seen.insert(name.clone()) {
                name
            } else {
                format!("{name}.{g}")
            }
        })
        .collect())
}

/// One spelling per ligature glyph: those on the longest chain strictly
/// increasing in both glyph id and sequence, else the glyph's smallest.
fn increasing_chain(pairs: &mut [(u16, Vec<u32>)]) -> HashMap<u16, Vec<u32>> {
    // Descending sequences within a glyph so two spellings of one glyph can
    // never both join a strictly increasing chain.
    pairs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
    let mut tails: Vec<usize> = Vec::new();
    let mut parent: Vec<Option<usize>> = vec![None; pairs.len()];
    for i in 0..pairs.len() {
        let j = tails.partition_point(|&t| pairs[t].1 < pairs[i].1);
        parent[i] = j.checked_sub(1).map(|j| tails[j]);
        match tails.get_mut(j) {
            Some(t) => *t = i,
            None => tails.push(i),
        }
    }
    let mut chosen: HashMap<u16, Vec<u32>> = HashMap::new();
    let mut at = tails.last().copied();
    while let Some(i) = at {
        chosen.insert(pairs[i].0, pairs[i].1.clone());
        at = parent[i];
    }
    let on_chain: HashSet<u16> = chosen.keys().copied().collect();
    for (g, seq) in pairs.iter().filter(|(g, _)| !on_chain.contains(g)) {
        chosen.insert(*g, seq.clone()); // descending per glyph: the smallest lands last
    }
    chosen
}

/// Custom glyph names of a `post` format 2 table, normalised by
/// [`seq_name`] when they spell code points; standard Macintosh names
/// (indices below 258: `.notdef`, `space`, ...) are left out.
fn post_names(font: &Font, num_glyphs: u16) -> Result<Vec<Option<String>>, DataError> {
    let Some(post) = font.table("post") else {
        return Ok(Vec::new());
    };
    if post.u32(0)? != 0x0002_0000 {
        return Ok(Vec::new());
    }
    let count = usize::from(post.u16(32)?.min(num_glyphs));
    let mut strings = Vec::new();
    let mut at = 34 + 2 * usize::from(post.u16(32)?);
    while at < post.len() {
        let len = usize::from(post.u8(at)?);
        strings.push(String::from_utf8_lossy(post.bytes(at + 1, len)?).into_owned());
        at += 1 + len;
    }
    (0..count)
        .map(|g| {
            let index = usize::from(post.u16(34 + 2 * g)?);
            if index < 258 {
                return Ok(None);
            }
            let name = strings.get(index - 258).ok_or_else(|| {
                post.error(
                    34 + 2 * g,
                    format_args!(
                        "glyph {g} uses name {index}, but the table has {} names",
                        strings.len()
                    ),
                )
            })?;
            Ok(Some(
                parse_seq_name(name).map_or_else(|| name.clone(), |s| seq_name(&s)),
            ))
        })
        .collect()
}

/// `u` + upper-case hex code points (at least 4 digits) joined by `_`.
pub fn seq_name(cps: &[u32]) -> String {
    let hex: Vec<String> = cps.iter().map(|c| format!("{c:04X}")).collect();
    format!("u{}", hex.join("_"))
}

/// The code points a name spells, in any of the usual file/glyph spellings:
/// `u1F600`, `uni2049`, `emoji_u1f1fa_1f1f8` (noto-emoji), `1f1fa-1f1f8`
/// (Twemoji). U+FE0F is dropped, as Noto's build drops it. `None` if the
/// name is not such a spelling.
pub fn parse_seq_name(name: &str) -> Option<Vec<u32>> {
    let s = name.strip_prefix("emoji_").unwrap_or(name);
    let bare = s.strip_prefix("uni").or_else(|| s.strip_prefix('u'));
    // Without a `u` prefix insist on a digit, so words like `face` stay words.
    if bare.is_none() && !s.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    let cps = bare
        .unwrap_or(s)
        .split(['_', '-'])
        .map(|h| match h.len() {
            4..=6 if h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                u32::from_str_radix(h, 16).ok().filter(|&c| c <= 0x10_FFFF)
            }
            _ => None,
        })
        .collect::<Option<Vec<u32>>>()?;
    Some(cps.into_iter().filter(|&c| c != 0xFE0F).collect())
}
