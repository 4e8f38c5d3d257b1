//! Larochelle & Murray's binarized MNIST `.amat` text files.
//!
//! This is the fixed binarization most VAE papers (and VNCA) report
//! likelihoods on, so we read it exactly: one image per line, 784
//! space-separated tokens, each `0` or `1`, row-major 28x28, no labels. We
//! tolerate trailing whitespace, `\r\n` line ends and a last line without a
//! newline, and nothing else: a blank line or a `0.0` is an error that names
//! the line (1-based) and, for a bad token, the column (1-based token index).

use super::{DataError, ImageSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

/// Image side of the Larochelle files.
pub const SIDE: usize = 28;
/// Tokens per line.
pub const PIXELS: usize = SIDE * SIDE;
/// A real line is 1568 bytes; anything far longer is not an `.amat` file, and
/// capping the line buffer keeps a newline-free multi-GB file from exhausting
/// memory.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// Reads a `.amat` file into a 28x28 [`ImageSet`] without labels.
pub fn read_amat(path: &Path) -> Result<ImageSet, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    parse_amat(BufReader::with_capacity(1 << 16, file), path)
}

/// Parses `.amat` text from `reader`; `path` is only used in errors.
pub fn parse_amat(mut reader: impl BufRead, path: &Path) -> Result<ImageSet, DataError> {
    let mut images = Vec::new();
    let mut buf = Vec::with_capacity(2 * PIXELS + 2);
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let got = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(path, e))?;
        if got == 0 {
            break;
        }
        line_no += 1;
        if got as u64 > MAX_LINE_BYTES {
            return Err(DataError::line(
                path,
                line_no,
                format!("line is longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        parse_line(&buf, path, line_no, &mut images)?;
    }
    if line_no == 0 {
        return Err(DataError::invalid(path, "empty file: no images"));
    }
    Ok(ImageSet {
        images,
        labels: None,
        rows: SIDE,
        cols: SIDE,
    })
}

/// Appends the 784 pixels of one line to `out`, or explains what is wrong.
fn parse_line(
    line: &[u8],
    path: &Path,
    line_no: usize,
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    let start = out.len();
    let mut count = 0usize;
    for token in line
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        count += 1;
        let bit = match token {
            b"0" => 0,
            b"1" => 1,
            _ => {
                out.truncate(start);
                return Err(DataError::line(
                    path,
                    line_no,
                    format!("column {count}: value `{}` is not 0 or 1", shown(token)),
                ));
            }
        };
        if count <= PIXELS {
            out.push(bit);
        }
    }
    if count != PIXELS {
        out.truncate(start);
        return Err(DataError::line(
            path,
            line_no,
            format!("has {count} values, expected {PIXELS}"),
        ));
    }
    Ok(())
}

/// A token as text for a one-line error message: control characters and line
/// separators escaped (a token is anything between ASCII spaces), shortened if huge.
fn shown(token: &[u8]) -> String {
    let s = super::folder::escape_controls(&String::from_utf8_lossy(token));
    match s.char_indices().nth(20) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Writes `set` as `.amat` text, byte-identical in layout to the Larochelle
/// files (single spaces, `\n` line ends). Refuses anything `read_amat` could
/// not read back: a shape other than 28x28 or a pixel other than 0/1.
pub fn write_amat(path: &Path, set: &ImageSet) -> Result<(), DataError> {
    if (set.rows, set.cols) != (SIDE, SIDE) || !set.is_whole() {
        return Err(DataError::invalid(
            path,
            format!(
                "can only write 28x28 images, got {}x{} with {} pixels",
                set.rows,
                set.cols,
                set.images.len()
            ),
        ));
    }
    if let Some(i) = set.images.iter().position(|&p| p > 1) {
        return Err(DataError::invalid(
            path,
            format!(
                "pixel {} of image {} is {}, expected 0 or 1",
                i % PIXELS,
                i / PIXELS,
                set.images[i]
            ),
        ));
    }
    let file = File::create(path).map_err(|e| DataError::io(path, e))?;
    let mut w = BufWriter::new(file);
    let mut line = vec![b' '; 2 * PIXELS];
    for image in set.images.chunks_exact(PIXELS) {
        for (i, &p) in image.iter().enumerate() {
            line[2 * i] = b'0' + p;
        }
        line[2 * PIXELS - 1] = b'\n';
        w.write_all(&line).map_err(|e| DataError::io(path, e))?;
    }
    w.flush().map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::super::tests::binary_set;
    use super::*;

    fn line(bits: impl IntoIterator<Item = u8>) -> String {
        bits.into_iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn parse(text: &str) -> Result<ImageSet, DataError> {
        parse_amat(text.as_bytes(), Path::new("t.amat"))
    }

    #[test]
    fn tolerates_crlf_trailing_space_and_no_final_newline() {
        let a = line((0..PIXELS).map(|i| (i % 3 == 0) as u8));
        let b = line((0..PIXELS).map(|i| (i % 5 == 0) as u8));
        let s = parse(&format!("{a} \t\r\n{b}")).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s.rows, s.cols, s.labels.clone()), (28, 28, None));
        assert_eq!(s.image(0)[..4], [1, 0, 0, 1]);
        assert_eq!(s.image(1)[..6], [1, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn wrong_token_count_names_line() {
        let ok = line([0; PIXELS]);
        let short = line([1; 783]);
        let e = parse(&format!("{ok}\n{short}\n")).unwrap_err().to_string();
        assert_eq!(e, "`t.amat`: line 2: has 783 values, expected 784");
        let long = line([1; 790]);
        let e = parse(&format!("{long}\n")).unwrap_err().to_string();
        assert!(e.ends_with("line 1: has 790 values, expected 784"), "{e}");
        let e = parse(&format!("{ok}\n\n{ok}\n")).unwrap_err().to_string();
        assert!(e.ends_with("line 2: has 0 values, expected 784"), "{e}");
    }

    #[test]
    fn bad_token_names_line_column_and_token() {
        let mut toks = vec!["0"; PIXELS];
        toks[9] = "0.5";
        let e = parse(&toks.join(" ")).unwrap_err().to_string();
        assert_eq!(e, "`t.amat`: line 1: column 10: value `0.5` is not 0 or 1");
        let huge = "7".repeat(100);
        let e = parse(&huge).unwrap_err().to_string();
        assert!(e.contains("`77777777777777777777...`"), "{e}");
    }

    #[test]
    fn empty_and_overlong_inputs_fail() {
        let e = parse("").unwrap_err().to_string();
        assert_eq!(e, "`t.amat`: empty file: no images");
        let blob = "0".repeat(MAX_LINE_BYTES as usize + 10);
        let e = parse(&blob).unwrap_err().to_string();
        assert!(e.contains("line 1: line is longer than"), "{e}");
    }

    #[test]
    fn write_then_read_round_trips_with_larochelle_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.amat");
        let set = binary_set(3, 5, false);
        write_amat(&p, &set).unwrap();
        // Same size per line as the originals: 78,400,000 bytes / 50,000 lines.
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 3 * 1568);
        assert_eq!(read_amat(&p).unwrap(), set);
    }

    #[test]
    fn write_refuses_unreadable_sets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.amat");
        let mut grey = binary_set(2, 0, false);
        grey.images[784 + 3] = 200;
        let e = write_amat(&p, &grey).unwrap_err().to_string();
        assert!(
            e.ends_with("pixel 3 of image 1 is 200, expected 0 or 1"),
            "{e}"
        );
        let odd = ImageSet {
            images: vec![0; 4],
            labels: None,
            rows: 2,
            cols: 2,
        };
        assert!(write_amat(&p, &odd).is_err());
    }

    /// Found by the shared error check of the fuzz tests: a token holding a control
    /// character or a line separator was echoed raw into the error.
    #[test]
    fn echoed_tokens_are_escaped() {
        let e = parse("0 0\u{e}0 1\u{2028}").unwrap_err().to_string();
        assert!(
            e.ends_with("column 2: value `0\\u{e}0` is not 0 or 1"),
            "{e}"
        );
        assert!(!e.chars().any(char::is_control), "{e:?}");
        let e = parse("\u{2028}").unwrap_err().to_string();
        assert!(e.ends_with("value `\\u{2028}` is not 0 or 1"), "{e}");
    }
}
