//! The one error type of the data module.
//!
//! Every variant names the file (or URL) it is about, and where it makes sense
//! the line or byte offset, because a data error is only actionable when the
//! user can open the file and look at the spot. Byte offsets of gzipped files
//! count bytes of the *decompressed* stream, since that is where the format
//! lives.

use std::path::{Path, PathBuf};

/// Why reading, writing, verifying or downloading a data file failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused an operation on `path`.
    #[error("`{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A binary file is malformed at byte `offset`.
    #[error("`{}`: byte {offset}: {msg}", path.display())]
    Format {
        path: PathBuf,
        offset: u64,
        msg: String,
    },
    /// A text file is malformed on (1-based) line `line`.
    #[error("`{}`: line {line}: {msg}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A file (or directory) is unusable as a whole: it is empty, missing a
    /// member, inconsistent with a sibling file, or holds data we refuse to write.
    #[error("`{}`: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    /// A file's SHA-256 is not the one we expect.
    #[error("`{}`: sha256 mismatch: expected {expected}, got {actual}", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// Fetching `url` failed before or while receiving its body.
    #[error("download of {url} failed: {msg}")]
    Download { url: String, msg: String },
}

impl DataError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A malformed binary file at `offset`.
    pub fn format(path: &Path, offset: u64, msg: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            offset,
            msg: msg.into(),
        }
    }

    /// A malformed text file on 1-based `line`.
    pub fn line(path: &Path, line: usize, msg: impl Into<String>) -> Self {
        DataError::Line {
            path: path.to_path_buf(),
            line,
            msg: msg.into(),
        }
    }

    /// A file unusable as a whole.
    pub fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// `text` with control characters and line separators escaped (`\u{e}`), so that an error
/// quoting the input (a token, a file or tensor name) stays one printable line.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_path_and_position() {
        let p = Path::new("/x/y.idx");
        assert_eq!(
            DataError::format(p, 16, "truncated").to_string(),
            "`/x/y.idx`: byte 16: truncated"
        );
        assert_eq!(
            DataError::line(p, 3, "bad").to_string(),
            "`/x/y.idx`: line 3: bad"
        );
        assert_eq!(
            DataError::invalid(p, "empty").to_string(),
            "`/x/y.idx`: empty"
        );
        let e = DataError::io(p, std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "`/x/y.idx`: boom");
        assert!(std::error::Error::source(&e).is_some());
        let c = DataError::Checksum {
            path: p.to_path_buf(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        assert_eq!(
            c.to_string(),
            "`/x/y.idx`: sha256 mismatch: expected aa, got bb"
        );
        let d = DataError::Download {
            url: "http://h/f".into(),
            msg: "404".into(),
        };
        assert_eq!(d.to_string(), "download of http://h/f failed: 404");
    }
}
