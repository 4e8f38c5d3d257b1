//! Fetching Larochelle & Murray's binarized MNIST, verified by SHA-256.
//!
//! The files are served over plain HTTP from a university home page, so
//! nothing vouches for their content except a checksum we pin here. Each file
//! is streamed to `NAME.part`, its size and SHA-256 are checked, and only then
//! is it renamed to `NAME`: a file named `NAME` is therefore always complete
//! and genuine, and an interrupted run simply starts that file again.

use super::DataError;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file we know how to download and verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// File name to store it under.
    pub name: &'static str,
    pub url: &'static str,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: &'static str,
    /// Size in bytes.
    pub size: u64,
}

/// The three Larochelle & Murray (2011) binarized MNIST splits.
///
/// Sizes and SHA-256 sums come from TensorFlow Datasets,
/// `tensorflow_datasets/datasets/binarized_mnist/checksums.tsv` (identical in
/// the older `tensorflow_datasets/url_checksums/binarized_mnist.txt`),
/// github.com/tensorflow/datasets. The sizes agree with the format: 1568
/// bytes per line (784 tokens and their separators) times 50,000 or 10,000
/// lines.
pub const LAROCHELLE_FILES: [RemoteFile; 3] = [
    RemoteFile {
        name: "binarized_mnist_train.amat",
        url: "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_train.amat",
        sha256: "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        size: 78_400_000,
    },
    RemoteFile {
        name: "binarized_mnist_valid.amat",
        url: "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_valid.amat",
        sha256: "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        size: 15_680_000,
    },
    RemoteFile {
        name: "binarized_mnist_test.amat",
        url: "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_test.amat",
        sha256: "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
        size: 15_680_000,
    },
];

/// Chunk size for streaming reads and downloads.
const CHUNK: usize = 1 << 16;

/// Lowercase hex SHA-256 of the file at `path`, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DataError::io(path, e)),
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// Fails with [`DataError::Checksum`] unless `path` has SHA-256
/// `expected_sha256` (hex, either case).
pub fn verify_file(path: &Path, expected_sha256: &str) -> Result<(), DataError> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected_sha256) {
        Ok(())
    } else {
        Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: expected_sha256.to_string(),
            actual,
        })
    }
}

/// Downloads the three Larochelle files into `dir` (created if needed),
/// skipping those already present with the right checksum. `progress` gets
/// `(file name, bytes so far, total bytes if known)` as data arrives.
/// Honours `HTTP_PROXY`-style environment variables.
pub fn fetch_larochelle(
    dir: &Path,
    progress: &mut dyn FnMut(&str, u64, Option<u64>),
) -> Result<(), DataError> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .try_proxy_from_env(true)
        .build();
    for file in &LAROCHELLE_FILES {
        fetch_file(&agent, dir, file, progress)?;
    }
    Ok(())
}

/// Makes `dir/NAME` a verified copy of `file`, downloading only if needed.
fn fetch_file(
    agent: &ureq::Agent,
    dir: &Path,
    file: &RemoteFile,
    progress: &mut dyn FnMut(&str, u64, Option<u64>),
) -> Result<PathBuf, DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let dest = dir.join(file.name);
    if dest.is_file() && verify_file(&dest, file.sha256).is_ok() {
        progress(file.name, file.size, Some(file.size));
        return Ok(dest);
    }
    let part = dir.join(format!("{}.part", file.name));
    let result = download_to(agent, file, &part, progress)
        .and_then(|()| verify_file(&part, file.sha256))
        .and_then(|()| std::fs::rename(&part, &dest).map_err(|e| DataError::io(&dest, e)));
    if result.is_err() {
        // Best effort: the download error is the one worth reporting.
        let _ = std::fs::remove_file(&part);
    }
    result.map(|()| dest)
}

/// Streams `file.url` into `part` and checks the byte count.
fn download_to(
    agent: &ureq::Agent,
    file: &RemoteFile,
    part: &Path,
    progress: &mut dyn FnMut(&str, u64, Option<u64>),
) -> Result<(), DataError> {
    let fail = |msg: String| DataError::Download {
        url: file.url.to_string(),
        msg,
    };
    let response = agent.get(file.url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => fail(format!("HTTP {code} {}", r.status_text())),
        ureq::Error::Transport(t) => fail(t.to_string()),
    })?;
    let total = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(Some(file.size));
    let mut body = response.into_reader();
    let mut out = File::create(part).map_err(|e| DataError::io(part, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    progress(file.name, 0, total);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(format!("after {got} bytes: {e}"))),
        };
        out.write_all(&buf[..n])
            .map_err(|e| DataError::io(part, e))?;
        got += n as u64;
        progress(file.name, got, total);
    }
    out.sync_all().map_err(|e| DataError::io(part, e))?;
    if got != file.size {
        return Err(fail(format!(
            "received {got} bytes, expected {}",
            file.size
        )));
    }
    Ok(())
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    const ABC_SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn sha256_of_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), ABC_SHA);
        verify_file(&p, ABC_SHA).unwrap();
        verify_file(&p, &ABC_SHA.to_uppercase()).unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; 3 * CHUNK + 5]).unwrap();
        assert_eq!(
            sha256_file(&big).unwrap(),
            hex(&Sha256::digest(vec![0u8; 3 * CHUNK + 5]))
        );
    }

    #[test]
    fn mismatch_names_path_expected_and_actual() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abd").unwrap();
        let e = verify_file(&p, ABC_SHA).unwrap_err();
        assert!(matches!(e, DataError::Checksum { .. }));
        let text = e.to_string();
        assert!(text.contains(&p.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("expected {ABC_SHA}, got ")),
            "{text}"
        );
        assert!(text.contains(&sha256_file(&p).unwrap()), "{text}");
        assert!(verify_file(&dir.path().join("none"), ABC_SHA).is_err());
    }

    #[test]
    fn pinned_sums_look_like_sha256() {
        for f in LAROCHELLE_FILES {
            assert_eq!(f.sha256.len(), 64);
            assert!(f
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(f.url.ends_with(f.name));
            assert_eq!(f.size % 1568, 0);
        }
    }

    /// Serves `body` with `status` to one HTTP request on loopback.
    fn serve_once(status: &'static str, body: &'static [u8]) -> &'static str {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/f.amat", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
        });
        Box::leak(url.into_boxed_str())
    }

    fn remote(url: &'static str, sha256: &'static str) -> RemoteFile {
        RemoteFile {
            name: "f.amat",
            url,
            sha256,
            size: 3,
        }
    }

    #[test]
    fn downloads_verifies_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let agent = ureq::Agent::new();
        let file = remote(serve_once("200 OK", b"abc"), ABC_SHA);
        let mut seen = Vec::new();
        let p = fetch_file(&agent, dir.path(), &file, &mut |n, g, t| {
            seen.push((n.to_string(), g, t))
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
        assert!(!dir.path().join("f.amat.part").exists());
        assert_eq!(seen.last(), Some(&("f.amat".to_string(), 3, Some(3))));
        // Present and correct: no request is made (the server is gone).
        fetch_file(&agent, dir.path(), &file, &mut |_, _, _| {}).unwrap();
    }

    #[test]
    fn bad_sum_deletes_part_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let agent = ureq::Agent::new();
        let file = remote(serve_once("200 OK", b"abd"), ABC_SHA);
        let e = fetch_file(&agent, dir.path(), &file, &mut |_, _, _| {}).unwrap_err();
        assert!(matches!(e, DataError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("f.amat.part"), "{e}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn http_errors_and_short_bodies_fail() {
        let dir = tempfile::tempdir().unwrap();
        let agent = ureq::Agent::new();
        let file = remote(serve_once("404 Not Found", b"no"), ABC_SHA);
        let e = fetch_file(&agent, dir.path(), &file, &mut |_, _, _| {}).unwrap_err();
        assert!(e.to_string().ends_with("failed: HTTP 404 Not Found"), "{e}");
        let file = remote(serve_once("200 OK", b"ab"), ABC_SHA);
        let e = fetch_file(&agent, dir.path(), &file, &mut |_, _, _| {}).unwrap_err();
        assert!(
            e.to_string().ends_with("received 2 bytes, expected 3"),
            "{e}"
        );
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
