//! Shared helpers of the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Hands out pre-recorded noise tensors in order (the PyTorch fixture's eps).
#[allow(unused_imports)]
pub use vnca::noise::FixedNoise;

/// max |a - b| / max |b|: relative error with a floor for values near 0.
#[allow(unused_imports)]
pub use vnca::check::rel_err;
pub mod launch;
