//! The one place where the code differs between the two tch versions it is built with:
//! tch 0.26 / libtorch 2.13 (the main build) and tch 0.24 / libtorch 2.11 (the GPU
//! machine's PyTorch; tools/device-build.sh builds with `--cfg vnca_tch_024`). Every
//! tch API this crate calls is the same in both, so only the version names live here;
//! a future difference belongs here too, not spread through the code.

/// The tch crate this binary was built with.
#[cfg(not(vnca_tch_024))]
pub const TCH_VERSION: &str = "0.26.0";
#[cfg(vnca_tch_024)]
pub const TCH_VERSION: &str = "0.24.0";
