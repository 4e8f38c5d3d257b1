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
//! 3. `compile_dist_shim` (its own block below) builds the data-parallel shim
//!    csrc/dist.cpp (c10d: TCPStore, Gloo, NCCL where its headers exist).
use std::path::{Path, PathBuf};

fn main() {
    compile_dist_shim();
    write_preset_list();
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

// ---- data-parallel shim (csrc/dist.cpp, used by src/dist.rs) -------------------------

/// csrc/dist.cpp -> libvnca_dist.a: c10d's TCPStore and ProcessGroupGloo (and
/// ProcessGroupNCCL where its headers are found) from the libtorch we link, compiled
/// with the flags torch-sys uses for its own wrappers (C++17, the wheel's C++11 ABI).
/// The wheel lacks the Gloo headers that ProcessGroupGloo.hpp includes; they are
/// vendored, parse-only, under csrc/third_party/gloo (see its README).
fn compile_dist_shim() {
    for f in ["csrc/dist.cpp", "csrc/dist.h", "csrc/third_party/gloo"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for var in [
        "LIBTORCH_INCLUDE",
        "LIBTORCH_CXX11_ABI",
        "CUDA_HOME",
        "NCCL_INCLUDE_DIR",
        "VNCA_DIST_NCCL",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // torch-sys reports a missing LIBTORCH itself.
    let Ok(root) = std::env::var("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    let root = root.canonicalize().unwrap_or(root);
    let include = std::env::var("LIBTORCH_INCLUDE")
        .map(|inc| PathBuf::from(inc).join("include"))
        .unwrap_or_else(|_| root.join("include"));
    let lib = std::env::var("LIBTORCH_LIB")
        .map(|l| PathBuf::from(l).join("lib"))
        .unwrap_or_else(|_| root.join("lib"));
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/dist.cpp")
        .include("csrc")
        .include("csrc/third_party/gloo")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .define("USE_C10D_GLOO", None)
        .warnings(false);
    let nccl = nccl_dirs(&root, &include, &lib);
    if let Some((cuda_inc, nccl_inc)) = &nccl {
        build
            .define("USE_C10D_NCCL", None)
            .define("VNCA_DIST_NCCL", None)
            .include(cuda_inc)
            .include(nccl_inc);
    }
    build.compile("vnca_dist");
    if nccl.is_some() {
        // ProcessGroupNCCL lives in libtorch_cuda; named after the static library so the
        // linker resolves it.
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
}

/// The CUDA and NCCL include directories when the NCCL process group can be compiled:
/// libtorch has CUDA, and a complete CUDA include directory (runtime, `crt/`, and CCCL's
/// `nv/target`, which the pip wheels alone do not carry) and `nccl.h` are found.
/// `VNCA_DIST_NCCL=0` turns it off. Without it, asking for NCCL fails at run time with
/// a message that says so, and Gloo still serves CUDA tensors.
fn nccl_dirs(root: &Path, include: &Path, lib: &Path) -> Option<(PathBuf, PathBuf)> {
    if std::env::var("VNCA_DIST_NCCL").as_deref() == Ok("0")
        || !lib.join("libtorch_cuda.so").exists()
        || !include
            .join("torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp")
            .exists()
    {
        return None;
    }
    // The wheel keeps NVIDIA's pip packages beside torch/ in site-packages.
    let site = root.parent().map(|p| p.join("nvidia"));
    let mut cuda = vec![];
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(d) = std::env::var(var) {
            cuda.push(PathBuf::from(d).join("include"));
        }
    }
    cuda.push(PathBuf::from("/usr/local/cuda/include"));
    if let Some(site) = &site {
        cuda.push(site.join("cu13/include"));
        cuda.push(site.join("cuda_runtime/include"));
    }
    cuda.push(PathBuf::from("/usr/include"));
    let cuda_inc = cuda.into_iter().find(|d| {
        ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"]
            .iter()
            .all(|f| d.join(f).exists())
    })?;
    let mut nccl = vec![];
    if let Ok(d) = std::env::var("NCCL_INCLUDE_DIR") {
        nccl.push(PathBuf::from(d));
    }
    if let Some(site) = &site {
        nccl.push(site.join("nccl/include"));
    }
    nccl.push(cuda_inc.clone());
    nccl.push(PathBuf::from("/usr/include"));
    let nccl_inc = nccl.into_iter().find(|d| d.join("nccl.h").exists())?;
    Some((cuda_inc, nccl_inc))
}
// ---- end of the data-parallel shim block -----------------------------------------------

/// `configs/*.toml` as the compiled-in preset list (`config::PRESETS`, in name order), so
/// adding a preset is adding a file.
fn write_preset_list() {
    println!("cargo:rerun-if-changed=configs");
    let mut names: Vec<String> = std::fs::read_dir("configs")
        .expect("the configs/ directory")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".toml").map(str::to_owned)
        })
        .collect();
    names.sort();
    let mut code = String::from("pub const PRESETS: &[(&str, &str)] = &[\n");
    for n in &names {
        code.push_str(&format!(
            "    ({n:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/configs/{n}.toml\"))),\n"
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("presets.rs");
    std::fs::write(out, code).expect("write the preset list");
}
