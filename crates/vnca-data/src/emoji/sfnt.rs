//! Bounds-checked access to the tables of an sfnt (TrueType/OpenType) file.
//!
//! A font is a directory of tables addressed by 32-bit offsets, and tables
//! point into themselves with further offsets. Every read goes through
//! [`Table`], which checks the bytes are there and turns a shortfall into a
//! [`DataError`] carrying the *absolute* file offset, so a user can open the
//! font in a hex editor at the spot that is wrong.

use super::super::DataError;
use std::path::Path;

/// A whole font file in memory, with its table directory parsed.
pub struct Font<'a> {
    pub path: &'a Path,
    data: &'a [u8],
    /// (tag, offset, length) of every table, as the directory lists them.
    dir: Vec<([u8; 4], usize, usize)>,
}

impl<'a> Font<'a> {
    /// Parses the table directory and checks every table lies inside the file.
    pub fn parse(path: &'a Path, data: &'a [u8]) -> Result<Self, DataError> {
        let head = Table::new(path, data, 0, data.len(), "sfnt header");
        let version = head.u32(0)?;
        match version {
            0x0001_0000 | 0x7472_7565 | 0x4F54_544F => {}
            0x7474_6366 => {
                return Err(DataError::format(
                    path,
                    0,
                    "font collections (.ttc) are not supported; pass a single font",
                ))
            }
            v => {
                return Err(DataError::format(
                    path,
                    0,
                    format!("not an sfnt font: version tag {v:#010x}"),
                ))
            }
        }
        let n = usize::from(head.u16(4)?);
        let mut dir = Vec::with_capacity(n);
        for i in 0..n {
            let rec = 12 + 16 * i;
            let tag = head.bytes(rec, 4)?;
            let tag = [tag[0], tag[1], tag[2], tag[3]];
            let offset = head.u32(rec + 8)? as usize;
            let len = head.u32(rec + 12)? as usize;
            if offset.checked_add(len).is_none_or(|end| end > data.len()) {
                return Err(DataError::format(
                    path,
                    rec as u64 + 8,
                    format!(
                        "table `{}` claims bytes {offset}..{} but the file has {} bytes",
                        String::from_utf8_lossy(&tag).escape_default(),
                        offset as u64 + len as u64,
                        data.len()
                    ),
                ));
            }
            dir.push((tag, offset, len));
        }
        Ok(Font { path, data, dir })
    }

    /// The table tagged `tag`, if the font has one.
    pub fn table(&self, tag: &'static str) -> Option<Table<'a>> {
        self.dir
            .iter()
            .find(|(t, _, _)| t == tag.as_bytes())
            .map(|&(_, off, len)| Table::new(self.path, self.data, off, len, tag))
    }

    /// The table tagged `tag`, or an error saying the font lacks it and why we need it.
    pub fn require(&self, tag: &'static str, why: &str) -> Result<Table<'a>, DataError> {
        self.table(tag).ok_or_else(|| {
            DataError::invalid(self.path, format!("font has no `{tag}` table ({why})"))
        })
    }

    /// Number of glyphs, from `maxp`.
    pub fn num_glyphs(&self) -> Result<u16, DataError> {
        self.require("maxp", "glyph count")?.u16(4)
    }
}

/// A window on one table (or a part of it); offsets are relative to its start.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    path: &'a Path,
    data: &'a [u8],
    /// Absolute file offset of the window's first byte.
    base: usize,
    len: usize,
    name: &'static str,
}

impl<'a> Table<'a> {
    fn new(path: &'a Path, data: &'a [u8], base: usize, len: usize, name: &'static str) -> Self {
        Table {
            path,
            data,
            base,
            len,
            name,
        }
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Absolute file offset of relative offset `off`.
    pub fn abs(&self, off: usize) -> u64 {
        self.base as u64 + off as u64
    }

    /// An error at relative offset `off`, prefixed by the table's tag.
    pub fn error(&self, off: usize, msg: impl std::fmt::Display) -> DataError {
        DataError::format(self.path, self.abs(off), format!("`{}`: {msg}", self.name))
    }

    /// The `n` bytes at `off`, or an error saying the table is too short.
    pub fn bytes(&self, off: usize, n: usize) -> Result<&'a [u8], DataError> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => Ok(&self.data[self.base + off..self.base + end]),
            _ => Err(self.error(
                off,
                format_args!(
                    "needs {n} bytes at table offset {off}, but the table has {} bytes",
                    self.len
                ),
            )),
        }
    }

    /// The sub-window starting at `off` and running to the end of this one.
    pub fn sub(&self, off: usize) -> Result<Table<'a>, DataError> {
        self.bytes(off, 0)?;
        Ok(Table {
            base: self.base + off,
            len: self.len - off,
            ..*self
        })
    }

    pub fn u8(&self, off: usize) -> Result<u8, DataError> {
        Ok(self.bytes(off, 1)?[0])
    }

    pub fn u16(&self, off: usize) -> Result<u16, DataError> {
        let b = self.bytes(off, 2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&self, off: usize) -> Result<u32, DataError> {
        let b = self.bytes(off, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `u16` offset at `off`, followed: the window it points to.
    pub fn at16(&self, off: usize) -> Result<Table<'a>, DataError> {
        let to = usize::from(self.u16(off)?);
        self.sub(to).map_err(|_| {
            self.error(
                off,
                format_args!("offset {to} points past the end ({} bytes)", self.len),
            )
        })
    }
}
