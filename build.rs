//! Makes the built binaries find libtorch at run time without the user exporting
//! `LD_LIBRARY_PATH`: the libtorch lib directory goes into the binaries' RUNPATH.
//! When the libtorch build has CUDA, `libtorch_cuda.so` is linked with
//! `--no-as-needed`, because the linker otherwise drops it (nothing references its
//! symbols directly) and CUDA silently disappears at run time (tch-rs #291, #980).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    let lib_dir = match (std::env::var("LIBTORCH_LIB"), std::env::var("LIBTORCH")) {
        (Ok(lib), _) => PathBuf::from(lib).join("lib"),
        (_, Ok(root)) => PathBuf::from(root).join("lib"),
        // torch-sys itself reports the missing libtorch with its own message.
        _ => return,
    };
    let lib_dir = lib_dir.canonicalize().unwrap_or(lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
