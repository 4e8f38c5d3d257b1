//! Builds small synthetic colour-bitmap fonts for the reader's tests: every
//! index and glyph format, cmap 4 and 12, `post` names, GSUB ligatures. Tables
//! are written in tag order, as the sfnt directory requires.

use std::io::Cursor;

/// What to put in the font.
pub struct Spec {
    pub num_glyphs: u16,
    /// (code point, glyph), sorted by code point.
    pub cmap: Vec<(u32, u16)>,
    /// Write the cmap as format 4 (BMP only) instead of 12.
    pub cmap4: bool,
    /// (ligature glyph, component glyphs).
    pub ligatures: Vec<(u16, Vec<u16>)>,
    /// Wrap the ligature lookup in an extension lookup (type 7).
    pub extension: bool,
    /// First glyph with a bitmap; then one entry per consecutive glyph
    /// (`None`: no bitmap, only possible with index formats 1 and 3).
    pub first: u16,
    pub bitmaps: Vec<Option<Vec<u8>>>,
    pub index_format: u16,
    pub image_format: u16,
    /// `post` format 2 names per glyph (`None`: standard name `.notdef`).
    pub post: Option<Vec<Option<String>>>,
}

impl Spec {
    /// Glyphs 1..=n with the given PNGs, mapped from U+1F600 onwards.
    pub fn simple(pngs: Vec<Vec<u8>>) -> Spec {
        let n = pngs.len() as u16;
        Spec {
            num_glyphs: n + 1,
            cmap: (0..n).map(|i| (0x1F600 + u32::from(i), i + 1)).collect(),
            cmap4: false,
            ligatures: vec![],
            extension: false,
            first: 1,
            bitmaps: pngs.into_iter().map(Some).collect(),
            index_format: 1,
            image_format: 17,
            post: None,
        }
    }
}

/// A `w x h` RGBA PNG: `colour` inside, transparent in a `border`-pixel frame
/// on the left and right (like Noto's 4 spare columns).
pub fn png(w: u32, h: u32, border: u32, colour: [u8; 4]) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, _| {
        if x < border || x >= w - border {
            image::Rgba([0, 0, 0, 0])
        } else {
            image::Rgba(colour)
        }
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn u16s(v: &mut Vec<u8>, xs: &[u16]) {
    xs.iter()
        .for_each(|x| v.extend_from_slice(&x.to_be_bytes()));
}

fn u32s(v: &mut Vec<u8>, xs: &[u32]) {
    xs.iter()
        .for_each(|x| v.extend_from_slice(&x.to_be_bytes()));
}

/// The whole font file.
pub fn build(spec: &Spec) -> Vec<u8> {
    let mut tables: Vec<(&[u8; 4], Vec<u8>)> = Vec::new();
    let (cblc, cbdt) = bitmap_tables(spec);
    tables.push((b"CBDT", cbdt));
    tables.push((b"CBLC", cblc));
    tables.push((b"GSUB", gsub(spec)));
    tables.push((b"cmap", cmap(spec)));
    // `head` and `hhea`, which every font has and `ttf-parser` requires: 2048 units
    // per em, short `loca` offsets; the metrics are not read.
    let mut head = vec![0; 54];
    head[..4].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    head[18..20].copy_from_slice(&2048u16.to_be_bytes());
    tables.push((b"head", head));
    tables.push((b"hhea", vec![0; 36]));
    let mut maxp = Vec::new();
    u32s(&mut maxp, &[0x5000]);
    u16s(&mut maxp, &[spec.num_glyphs]);
    tables.push((b"maxp", maxp));
    if let Some(names) = &spec.post {
        tables.push((b"post", post(names)));
    }
    let mut out = Vec::new();
    u32s(&mut out, &[0x0001_0000]);
    u16s(&mut out, &[tables.len() as u16, 0, 0, 0]);
    let mut at = 12 + 16 * tables.len();
    let mut body = Vec::new();
    for (tag, data) in &tables {
        out.extend_from_slice(*tag);
        u32s(&mut out, &[0, at as u32, data.len() as u32]);
        body.extend_from_slice(data);
        while body.len() % 4 != 0 {
            body.push(0);
        }
        at = 12 + 16 * tables.len() + body.len();
    }
    out.extend_from_slice(&body);
    out
}

/// Offset and length of table `tag` in a built font.
pub fn table(font: &[u8], tag: &[u8; 4]) -> (usize, usize) {
    let n = usize::from(u16::from_be_bytes([font[4], font[5]]));
    let be = |at: usize| u32::from_be_bytes([font[at], font[at + 1], font[at + 2], font[at + 3]]);
    (0..n)
        .map(|i| 12 + 16 * i)
        .find(|&rec| &font[rec..rec + 4] == tag)
        .map(|rec| (be(rec + 8) as usize, be(rec + 12) as usize))
        .unwrap()
}

fn bitmap_tables(spec: &Spec) -> (Vec<u8>, Vec<u8>) {
    let f = spec.image_format;
    let records: Vec<Vec<u8>> = spec
        .bitmaps
        .iter()
        .map(|b| match b {
            None => vec![],
            Some(png) => {
                let mut r = match f {
                    17 => vec![128, 136, 0, 101, 136],
                    18 => vec![128, 136, 0, 101, 136, 0, 0, 128],
                    _ => vec![],
                };
                u32s(&mut r, &[png.len() as u32]);
                r.extend_from_slice(png);
                r
            }
        })
        .collect();
    let slot = records.iter().map(Vec::len).max().unwrap_or(0);
    let fixed = matches!(spec.index_format, 2 | 5);
    let mut cbdt = vec![0, 3, 0, 0];
    let mut offsets = vec![0u32];
    for r in &records {
        cbdt.extend_from_slice(r);
        if fixed {
            cbdt.resize(cbdt.len() + slot - r.len(), 0);
        }
        offsets.push((cbdt.len() - 4) as u32);
    }
    let last = spec.first + spec.bitmaps.len() as u16 - 1;
    let mut sub = Vec::new();
    u16s(&mut sub, &[spec.index_format, f]);
    u32s(&mut sub, &[4]);
    let glyphs: Vec<u16> = (spec.first..=last).collect();
    match spec.index_format {
        1 => u32s(&mut sub, &offsets),
        3 => u16s(
            &mut sub,
            &offsets.iter().map(|&o| o as u16).collect::<Vec<_>>(),
        ),
        2 => {
            u32s(&mut sub, &[slot as u32]);
            sub.extend_from_slice(&[128, 136, 0, 101, 136, 0, 0, 128]);
        }
        4 => {
            u32s(&mut sub, &[glyphs.len() as u32]);
            for (i, &o) in offsets.iter().enumerate() {
                u16s(&mut sub, &[glyphs.get(i).copied().unwrap_or(0), o as u16]);
            }
        }
        5 => {
            u32s(&mut sub, &[slot as u32]);
            sub.extend_from_slice(&[128, 136, 0, 101, 136, 0, 0, 128]);
            u32s(&mut sub, &[glyphs.len() as u32]);
            u16s(&mut sub, &glyphs);
        }
        other => panic!("index format {other}"),
    }
    let mut cblc = Vec::new();
    u16s(&mut cblc, &[3, 0]);
    u32s(&mut cblc, &[1, 56, 8 + sub.len() as u32, 1, 0]);
    cblc.extend_from_slice(&[0; 24]);
    u16s(&mut cblc, &[spec.first, last]);
    cblc.extend_from_slice(&[109, 109, 32, 1]);
    u16s(&mut cblc, &[spec.first, last]);
    u32s(&mut cblc, &[8]);
    cblc.extend_from_slice(&sub);
    (cblc, cbdt)
}

fn cmap(spec: &Spec) -> Vec<u8> {
    let mut t = Vec::new();
    u16s(&mut t, &[0, 1, 3, if spec.cmap4 { 1 } else { 10 }]);
    u32s(&mut t, &[12]);
    if !spec.cmap4 {
        u16s(&mut t, &[12, 0]);
        u32s(
            &mut t,
            &[16 + 12 * spec.cmap.len() as u32, 0, spec.cmap.len() as u32],
        );
        for &(cp, g) in &spec.cmap {
            u32s(&mut t, &[cp, cp, u32::from(g)]);
        }
        return t;
    }
    // One segment per code point, even ones through idRangeOffset, odd ones
    // through idDelta, then the obligatory 0xFFFF segment.
    let segs = spec.cmap.len() + 1;
    let cps: Vec<u16> = spec.cmap.iter().map(|&(c, _)| c as u16).collect();
    u16s(&mut t, &[4, 0, 0, 2 * segs as u16, 0, 0, 0]);
    u16s(&mut t, &cps);
    u16s(&mut t, &[0xFFFF, 0]);
    u16s(&mut t, &cps);
    u16s(&mut t, &[0xFFFF]);
    for (i, &(c, g)) in spec.cmap.iter().enumerate() {
        u16s(
            &mut t,
            &[if i % 2 == 1 {
                g.wrapping_sub(c as u16)
            } else {
                0
            }],
        );
    }
    u16s(&mut t, &[1]);
    for i in 0..segs - 1 {
        // From this idRangeOffset word to glyphIdArray[i].
        let ro = if i % 2 == 0 {
            2 * (segs - i) + 2 * i
        } else {
            0
        };
        u16s(&mut t, &[ro as u16]);
    }
    u16s(&mut t, &[0]);
    u16s(
        &mut t,
        &spec.cmap.iter().map(|&(_, g)| g).collect::<Vec<_>>(),
    );
    t
}

fn gsub(spec: &Spec) -> Vec<u8> {
    let mut firsts: Vec<u16> = spec.ligatures.iter().map(|(_, s)| s[0]).collect();
    firsts.sort_unstable();
    firsts.dedup();
    // LigatureSubst: header, set offsets, coverage, sets, ligatures.
    let mut sets: Vec<Vec<u8>> = Vec::new();
    for &f in &firsts {
        let ligs: Vec<&(u16, Vec<u16>)> =
            spec.ligatures.iter().filter(|(_, s)| s[0] == f).collect();
        let mut set = Vec::new();
        u16s(&mut set, &[ligs.len() as u16]);
        let mut body = Vec::new();
        for (out, seq) in ligs {
            u16s(
                &mut set,
                &[(2 + 2 * spec.ligatures.len() + body.len()) as u16],
            );
            u16s(&mut body, &[*out, seq.len() as u16]);
            u16s(&mut body, &seq[1..]);
        }
        // Offsets above assumed a header of 2 + 2 * all ligatures; pad to it.
        set.resize(2 + 2 * spec.ligatures.len(), 0);
        set.extend_from_slice(&body);
        sets.push(set);
    }
    let mut coverage = Vec::new();
    u16s(&mut coverage, &[1, firsts.len() as u16]);
    u16s(&mut coverage, &firsts);
    let head = 6 + 2 * firsts.len();
    let mut st = Vec::new();
    u16s(&mut st, &[1, head as u16, firsts.len() as u16]);
    let mut at = head + coverage.len();
    for s in &sets {
        u16s(&mut st, &[at as u16]);
        at += s.len();
    }
    st.extend_from_slice(&coverage);
    sets.iter().for_each(|s| st.extend_from_slice(s));
    let mut t = Vec::new();
    u16s(&mut t, &[1, 0, 10, 12, 14, 0, 0, 1, 4]);
    if spec.extension {
        u16s(&mut t, &[7, 0, 1, 8]);
        u16s(&mut t, &[1, 4]);
        u32s(&mut t, &[8]);
    } else {
        u16s(&mut t, &[4, 0, 1, 8]);
    }
    t.extend_from_slice(&st);
    t
}

fn post(names: &[Option<String>]) -> Vec<u8> {
    let mut t = Vec::new();
    u32s(&mut t, &[0x0002_0000, 0, 0, 0, 0, 0, 0, 0]);
    u16s(&mut t, &[names.len() as u16]);
    let mut strings = Vec::new();
    for n in names {
        match n {
            None => u16s(&mut t, &[0]),
            Some(s) => {
                u16s(&mut t, &[258 + strings.len() as u16]);
                strings.push(s.clone());
            }
        }
    }
    for s in strings {
        t.push(s.len() as u8);
        t.extend_from_slice(s.as_bytes());
    }
    t
}
