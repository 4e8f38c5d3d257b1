//! Whole-file byte access shared by the binary readers (IDX and packed).
//!
//! Both formats are small enough (tens of MB) to hold in memory, which lets us
//! check every length against the bytes actually present *before* allocating
//! anything sized by a header field. Gzip is recognised by its magic bytes
//! rather than by file extension, because renamed or re-compressed downloads
//! are common. [`Cursor`] walks the (decompressed) bytes and turns every
//! shortfall into an error that carries the byte offset.

use super::DataError;
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

/// The two bytes every gzip member starts with (RFC 1952).
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Refuse to inflate past this, so a corrupt or hostile file cannot make us
/// allocate without bound. Real inputs are below 50 MB.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Reads the whole file at `path`.
pub fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// True when `raw` starts like a gzip stream.
pub fn is_gzip(raw: &[u8]) -> bool {
    raw.starts_with(&GZIP_MAGIC)
}

/// Inflates a gzip stream (all members) held in memory. Any failure here is
/// corruption of the file, not an I/O problem, so it is reported as such.
pub fn gunzip(path: &Path, raw: &[u8]) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    MultiGzDecoder::new(raw)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| DataError::invalid(path, format!("corrupt gzip data: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(DataError::invalid(
            path,
            format!("decompresses to more than {MAX_DECOMPRESSED} bytes; refusing"),
        ));
    }
    Ok(out)
}

/// Reads `path` and inflates it if (and only if) its content is gzip.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read_file(path)?;
    if is_gzip(&raw) {
        gunzip(path, &raw)
    } else {
        Ok(raw)
    }
}

/// A read position in an in-memory file that reports errors with offsets.
pub struct Cursor<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(path: &'a Path, data: &'a [u8]) -> Self {
        Cursor { path, data, pos: 0 }
    }

    /// Byte offset of the next unread byte.
    pub fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// An error located at the current offset.
    pub fn error(&self, msg: impl Into<String>) -> DataError {
        DataError::format(self.path, self.offset(), msg)
    }

    /// An error located at an explicit offset.
    pub fn error_at(&self, offset: u64, msg: impl Into<String>) -> DataError {
        DataError::format(self.path, offset, msg)
    }

    /// Takes the next `n` bytes, or says where the data ran out and how much
    /// `what` needed.
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DataError> {
        if n > self.remaining() {
            return Err(self.error_at(
                self.data.len() as u64,
                format!(
                    "unexpected end of data: {what} needs {n} bytes from byte {}, \
                     but only {} remain",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes a big-endian `u32`.
    pub fn u32_be(&mut self, what: &str) -> Result<u32, DataError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Takes one byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, DataError> {
        Ok(self.take(1, what)?[0])
    }

    /// Fails if anything is left after the last expected byte.
    pub fn finish(&self) -> Result<(), DataError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error(format!("{n} unexpected trailing bytes"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_detected_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.gz");
        std::fs::write(&plain, b"plain bytes").unwrap();
        assert_eq!(read_maybe_gzip(&plain).unwrap(), b"plain bytes");
        let packed = dir.path().join("b.raw");
        std::fs::write(&packed, gz(b"inflated")).unwrap();
        assert_eq!(read_maybe_gzip(&packed).unwrap(), b"inflated");
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let p = Path::new("f.gz");
        let mut z = gz(&[7u8; 1000]);
        let cut = z.len() / 2;
        z.truncate(cut);
        let e = gunzip(p, &z).unwrap_err().to_string();
        assert!(e.contains("corrupt gzip"), "{e}");
        let mut z = gz(b"abc");
        z.extend_from_slice(b"garbage after the member");
        let e = gunzip(p, &z).unwrap_err().to_string();
        assert!(e.contains("corrupt gzip"), "{e}");
    }

    #[test]
    fn cursor_reports_offsets() {
        let p = Path::new("c.bin");
        let data = [0, 0, 0, 5, 9, 1, 2];
        let mut c = Cursor::new(p, &data);
        assert_eq!(c.u32_be("n").unwrap(), 5);
        assert_eq!(c.u8("b").unwrap(), 9);
        let e = c.take(4, "payload").unwrap_err().to_string();
        assert_eq!(
            e,
            "`c.bin`: byte 7: unexpected end of data: payload needs 4 bytes from byte 5, \
             but only 2 remain"
        );
        assert_eq!(
            c.finish().unwrap_err().to_string(),
            "`c.bin`: byte 5: 2 unexpected trailing bytes"
        );
        c.take(2, "rest").unwrap();
        c.finish().unwrap();
    }
}
