//! What the property-test binaries of the workspace (`tests/fuzz_*.rs`,
//! `crates/vnca-data/tests/fuzz_*.rs`) share, written once:
//!
//! * [`config`]: cases per property (`PROPTEST_CASES` overrides) and where failing
//!   inputs are kept;
//! * [`mutate`]: the byte-mutation engine (bit flips, overwritten bytes and words,
//!   truncation, insertion, deletion, duplication), whose per-format choices (weights,
//!   interesting values, hot regions) are a [`mutate::Dialect`];
//! * [`alloc`]: the counting global allocator behind the memory bounds;
//! * [`input`], [`check_error`], [`check_alloc`]: an input file on disk, and the checks
//!   every reader's result goes through.
//!
//! A dev-dependency only: nothing here is compiled into `vnca` or `vnca-data`.

pub mod alloc;
pub mod mutate;

/// For [`fuzz_binary!`]'s expansion.
pub use proptest;

/// The preamble of a fuzz test binary: installs [`alloc::PeakAlloc`] as its global
/// allocator and defines `largest_allocation(f)` (the largest single allocation `f`
/// makes, counted over `scope`, an [`alloc::Scope`]), `config()` (`cases` per property
/// unless `PROPTEST_CASES` says otherwise) and, given `alloc_limit`, `check_alloc(peak)`.
#[macro_export]
macro_rules! fuzz_binary {
    (scope: $scope:expr, cases: $cases:expr, alloc_limit: $limit:expr) => {
        $crate::fuzz_binary!(scope: $scope, cases: $cases);

        fn check_alloc(
            peak: usize,
        ) -> ::std::result::Result<(), $crate::proptest::test_runner::TestCaseError> {
            $crate::check_alloc(peak, $limit)
        }
    };
    (scope: $scope:expr, cases: $cases:expr) => {
        #[global_allocator]
        static GLOBAL: $crate::alloc::PeakAlloc = $crate::alloc::PeakAlloc;

        fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
            $crate::alloc::largest_allocation($scope, f)
        }

        fn config() -> $crate::proptest::test_runner::Config {
            $crate::config($cases)
        }
    };
}

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use std::path::{Path, PathBuf};

/// `default_cases` cases per property, or `PROPTEST_CASES` when set; failing inputs are
/// saved beside the test file (`<name>.proptest-regressions`) and replayed first.
pub fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// A temporary directory holding one input file, named so that errors can be checked
/// for it. The directory goes when this does.
pub struct Input {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Writes `bytes` to a fresh temporary file called `name`.
pub fn input(name: &str, bytes: &[u8]) -> Input {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write the input file");
    Input { _dir: dir, path }
}

/// The error names one of `paths` (in backticks, as every error of the workspace
/// does) and is one line without control characters: an echoed `\r` or escape sequence
/// would garble a terminal.
pub fn check_error(
    e: &dyn std::fmt::Display,
    paths: &[impl AsRef<Path>],
) -> Result<(), TestCaseError> {
    check_error_where(e, paths, |c| {
        c.is_control() || c == '\u{2028}' || c == '\u{2029}'
    })
}

fn check_error_where(
    e: &dyn std::fmt::Display,
    paths: &[impl AsRef<Path>],
    refused: impl Fn(char) -> bool,
) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    let shown: Vec<_> = paths.iter().map(|p| p.as_ref().display()).collect();
    prop_assert!(
        shown.iter().any(|p| msg.contains(&format!("`{p}`"))),
        "error names none of {shown:?}: {msg}"
    );
    prop_assert!(
        !msg.chars().any(refused),
        "error spans several lines or holds control characters: {msg:?}"
    );
    Ok(())
}

/// The largest single allocation while reading, `peak`, stayed within `limit`.
pub fn check_alloc(peak: usize, limit: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        peak <= limit,
        "a single allocation of {peak} bytes (limit {limit}) while reading a small input"
    );
    Ok(())
}
