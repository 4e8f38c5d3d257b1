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
use super::font::{is_pua, Font};
use std::collections::{HashMap, HashSet};

/// The name of each glyph in `glyphs` (same order).
pub(super) fn glyph_names(font: &Font, glyphs: &[u16]) -> Result<Vec<String>, DataError> {
    let post: Vec<Option<String>> = font
        .post_names()
        .into_iter()
        .map(|n| n.map(|n| parse_seq_name(&n).map_or(n, |s| seq_name(&s))))
        .collect();
    let cps = font.code_points()?;
    let cp = |g: u16| cps.get(usize::from(g)).copied().flatten();
    let mut spellings: Vec<(u16, Vec<u32>)> = font
        .ligatures()?
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
                .or_else(|| cp(g).filter(|&c| !is_pua(c)).map(|c| seq_name(&[c])))
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
