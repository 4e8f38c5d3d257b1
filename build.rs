//! 1. Makes the built binaries find libtorch at run time without the user exporting
//!    `LD_LIBRARY_PATH`: the libtorch lib directory goes into the binaries' RUNPATH.
//!    `VNCA_NO_RPATH=1` leaves it out (tools/device-build.sh: the binary then runs on
//!    another machine with that machine's torch, through a wrapper that sets
//!    `LD_LIBRARY_PATH`). When the libtorch build has CUDA, `libtorch_cuda.so` is linked
//!    with `--no-as-needed`, because the linker otherwise drops it (nothing references
//!    its symbols directly) and CUDA silently disappears at run time (tch-rs #291, #980).
//! 2. Compiles csrc/ (the libtorch switches tch does not bind: TF32, cuDNN benchmark,
//!    CPU and CUDA autocast to bfloat16; see src/precision.rs) against the headers of
//!    the same libtorch, as torch-sys compiles its own wrappers.
use std::path::PathBuf;

fn main() {
    for var in [
        "LIBTORCH",
        "LIBTORCH_LIB",
        "LIBTORCH_INCLUDE",
        "LIBTORCH_CXX11_ABI",
        "VNCA_NO_RPATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    // tools/device-build.sh builds a copy with tch 0.24 and `--cfg vnca_tch_024`.
    println!("cargo::rustc-check-cfg=cfg(vnca_tch_024)");
    let root = std::env::var("LIBTORCH").ok().map(PathBuf::from);
    let lib_dir = match (std::env::var("LIBTORCH_LIB"), &root) {
        (Ok(lib), _) => PathBuf::from(lib).join("lib"),
        (_, Some(root)) => root.join("lib"),
        // torch-sys itself reports the missing libtorch with its own message.
        _ => return,
    };
    let include_dir = match (std::env::var("LIBTORCH_INCLUDE"), &root) {
        (Ok(inc), _) => PathBuf::from(inc).join("include"),
        (_, Some(root)) => root.join("include"),
        _ => return,
    };
    compile_csrc(&include_dir);

    let lib_dir = lib_dir.canonicalize().unwrap_or(lib_dir);
    if std::env::var("VNCA_NO_RPATH").as_deref() != Ok("1") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    }
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// csrc/*.cpp -> libvnca_csrc.a, with the flags torch-sys uses for its wrappers
/// (C++17, the C++11 ABI of the PyTorch wheels unless `LIBTORCH_CXX11_ABI=0`).
fn compile_csrc(include_dir: &std::path::Path) {
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file("csrc/vnca_torch.cpp")
        .include("csrc")
        .include(include_dir)
        .include(include_dir.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("vnca_csrc");
}
