//! What the property-test binaries (`tests/fuzz_*.rs`) share.
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};

/// `default_cases` cases per property, or `PROPTEST_CASES` when set; failing inputs are
/// saved beside the test file (`tests/<name>.proptest-regressions`) and replayed first.
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
