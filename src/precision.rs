//! `--precision fp32|tf32|bf16` (config key `train.precision`): the arithmetic of the
//! convolutions and matrix products, set the way PyTorch users set it.
//!
//! - `fp32` (default): IEEE float32 everywhere; TF32 is turned off for cuBLAS *and*
//!   cuDNN (PyTorch's default allows it in cuDNN convolutions) and cuDNN's autotuner stays
//!   off, so CUDA results do not depend on which algorithm a timing run picked. On the
//!   CPU this changes nothing: runs stay bit-identical and resume bit-exactly.
//! - `tf32`: float32 tensors, but cuBLAS and cuDNN may use TF32 tensor cores (10-bit
//!   mantissa products, float32 accumulation) on GPUs that have them (Ampere and later);
//!   cuDNN benchmark mode on. No effect on the CPU.
//! - `bf16`: autocast to bfloat16 around the forward pass (CUDA, and CPU so that CI can
//!   test it), cuDNN benchmark mode on. Autocast runs the convolutions and linear layers
//!   of the encoder and the update network in bf16; everything else stays float32
//!   because the model keeps it so: the encoder's outputs are cast back to float32 before
//!   the KL and the reparameterisation, and the NCA state is float32 (`state +
//!   update` promotes the bf16 update), so the residual accumulation over 40 steps, the
//!   likelihood and the KL are computed in float32. No loss scaling: bf16 has float32's
//!   exponent range, so gradients do not underflow the way float16's do
//!   (docs/EXPERIMENTS.md).
//!
//! tch binds CUDA autocast but not CPU autocast nor the TF32 switches, so these go
//! through csrc/vnca_torch.cpp (compiled by build.rs against libtorch's headers).
use serde::{Deserialize, Serialize};
use tch::Device;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Tf32,
    Bf16,
}

mod ffi {
    extern "C" {
        pub fn vnca_set_tf32(matmul: bool, cudnn: bool);
        pub fn vnca_set_cudnn_benchmark(enabled: bool);
        pub fn vnca_autocast_enter_bf16(device_type: i32) -> bool;
        pub fn vnca_autocast_exit(device_type: i32, was_enabled: bool);
        pub fn vnca_autocast_enabled(device_type: i32) -> bool;
        pub fn vnca_torch_version() -> *const std::os::raw::c_char;
        pub fn vnca_set_flush_denormal(on: bool) -> bool;
    }
}

/// c10::DeviceType of a tch device (csrc/vnca_torch.h).
fn device_type(device: Device) -> i32 {
    match device {
        Device::Cuda(_) => 1,
        _ => 0,
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// Sets the process-wide switches for this precision: TF32 on only for `tf32`,
    /// cuDNN benchmark on for `tf32` and `bf16`. Global state of libtorch: call it once
    /// when a command starts (it is harmless without a GPU).
    pub fn configure(self) {
        let fast = self != Precision::Fp32;
        let tf32 = self == Precision::Tf32;
        // SAFETY: plain setters on libtorch's global context; no pointers cross.
        unsafe {
            ffi::vnca_set_tf32(tf32, tf32);
            ffi::vnca_set_cudnn_benchmark(fast);
        }
    }

    /// Runs `f` (a forward pass) under bf16 autocast on `device` for `bf16`, plainly
    /// otherwise. Call backward outside: gradients flow back through autocast's casts
    /// into the float32 parameters, as with `torch.autocast`.
    pub fn autocast<T>(self, device: Device, f: impl FnOnce() -> T) -> T {
        if self != Precision::Bf16 {
            return f();
        }
        let _guard = AutocastGuard::enter(device);
        f()
    }
}

/// Whether this CPU has bfloat16 arithmetic of its own: AVX512-BF16, which every x86 CPU
/// with AMX-BF16 has too. Without it oneDNN emulates bf16 with float32 instructions plus
/// conversions, and `bf16` runs slower than `fp32`, not faster (docs/BENCHMARKS.md, lever
/// 8, measured on an AVX2-only AMD EPYC). Other architectures answer false: bf16 was not
/// measured on them.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Precision {
    /// One warning line when this precision will be slow on `device`: bf16 on a CPU that
    /// emulates it. A user who sets `train.precision = "bf16"` to go faster on a laptop
    /// would otherwise get a run many times slower and no hint why.
    pub fn slowness_warning(self, device: Device) -> Option<&'static str> {
        (self == Precision::Bf16 && device == Device::Cpu && !cpu_has_native_bf16()).then_some(
            "warning: bf16 on a CPU without bfloat16 arithmetic (no avx512_bf16 in `lscpu`): \
             it is emulated and slower than fp32 (a training step took 10x as long on an \
             AVX2 AMD EPYC: docs/BENCHMARKS.md, lever 8); --precision fp32 is faster here",
        )
    }
}

/// Leaves the autocast region when dropped, also when `f` panics.
struct AutocastGuard {
    device_type: i32,
    was_enabled: bool,
}

impl AutocastGuard {
    fn enter(device: Device) -> Self {
        let device_type = device_type(device);
        // SAFETY: thread-local autocast state of libtorch; restored by Drop.
        let was_enabled = unsafe { ffi::vnca_autocast_enter_bf16(device_type) };
        AutocastGuard {
            device_type,
            was_enabled,
        }
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: pairs with vnca_autocast_enter_bf16 on the same thread.
        unsafe { ffi::vnca_autocast_exit(self.device_type, self.was_enabled) }
    }
}

/// Whether autocast is on for `device` on this thread (tests).
pub fn autocast_enabled(device: Device) -> bool {
    // SAFETY: reads thread-local state.
    unsafe { ffi::vnca_autocast_enabled(device_type(device)) }
}

/// Flushes denormal floats (below 1.2e-38 in magnitude) to zero on the CPU, or stops
/// flushing them; returns whether the CPU supports it (x86 with SSE3). A denormal operand
/// costs an x86 core a microcode assist: a trained non-doubling model's ELUs saturate
/// (exp(x) of a pre-activation below about -87 is denormal), and its training update took
/// about four times as long as with flushing (docs/BENCHMARKS.md, lever 6). Values that
/// small are far below anything the model's output depends on.
/// Call it before libtorch starts its threads: a thread inherits the setting when it is
/// created (`vnca` does, first thing).
pub fn flush_denormals(on: bool) -> bool {
    // SAFETY: sets the calling thread's MXCSR flags through libtorch; no pointers cross.
    unsafe { ffi::vnca_set_flush_denormal(on) }
}

/// The libtorch version the binary was compiled against, e.g. "2.13.0".
pub fn torch_version() -> &'static str {
    // SAFETY: TORCH_VERSION is a static NUL-terminated string literal in csrc.
    unsafe { std::ffi::CStr::from_ptr(ffi::vnca_torch_version()) }
        .to_str()
        .unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// 1e-30 x 1e-10 = 1e-40 is a denormal float: kept by default, zero when flushed.
    /// (MXCSR is per thread, so this test's setting does not reach the others.)
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn flushing_denormals_turns_them_into_zero_and_back() {
        let tiny = || {
            let x = Tensor::from_slice(&[1e-30f32]) * 1e-10;
            f32::try_from(x).unwrap()
        };
        assert!(flush_denormals(true), "x86 with SSE3 can flush denormals");
        assert_eq!(tiny(), 0.0);
        assert!(flush_denormals(false));
        let kept = tiny();
        assert!(kept > 0.0 && kept < f32::MIN_POSITIVE, "{kept}");
    }

    #[test]
    fn bf16_autocast_runs_convolutions_in_bf16_and_nests() {
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let conv = |x: &Tensor| x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert_eq!(conv(&x).kind(), Kind::Float);
        assert!(!autocast_enabled(Device::Cpu));
        let kind = Precision::Bf16.autocast(Device::Cpu, || {
            assert!(autocast_enabled(Device::Cpu));
            // Nested regions leave the outer one on.
            Precision::Bf16.autocast(Device::Cpu, || ());
            assert!(autocast_enabled(Device::Cpu));
            // Elementwise ops on float32 stay float32 (the NCA state, the likelihood).
            assert_eq!((&x + 1.0).exp().kind(), Kind::Float);
            conv(&x).kind()
        });
        assert_eq!(kind, Kind::BFloat16);
        assert!(!autocast_enabled(Device::Cpu));
        assert_eq!(
            Precision::Fp32.autocast(Device::Cpu, || conv(&x).kind()),
            Kind::Float
        );
        assert_eq!(
            Precision::Tf32.autocast(Device::Cpu, || conv(&x).kind()),
            Kind::Float
        );
    }

    /// The detection agrees with the kernel's view of the CPU (`lscpu`'s flags), and only
    /// bf16 on the CPU warns.
    #[test]
    fn bf16_warns_only_on_a_cpu_without_bf16_arithmetic() {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
            let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap();
            let listed = flags.split_whitespace().any(|f| f == "avx512_bf16");
            assert_eq!(cpu_has_native_bf16(), listed, "{flags}");
        }
        let cpu = Precision::Bf16.slowness_warning(Device::Cpu);
        assert_eq!(cpu.is_some(), !cpu_has_native_bf16());
        if let Some(w) = cpu {
            assert!(w.starts_with("warning: bf16") && w.contains("fp32"), "{w}");
        }
        assert_eq!(Precision::Bf16.slowness_warning(Device::Cuda(0)), None);
        assert_eq!(Precision::Fp32.slowness_warning(Device::Cpu), None);
        assert_eq!(Precision::Tf32.slowness_warning(Device::Cpu), None);
    }

    #[test]
    fn names_and_version() {
        assert_eq!(Precision::default(), Precision::Fp32);
        assert_eq!(Precision::Bf16.to_string(), "bf16");
        let v: Precision = serde_json::from_str("\"tf32\"").unwrap();
        assert_eq!(v, Precision::Tf32);
        assert!(torch_version().starts_with("2."), "{}", torch_version());
        // Configuring is global but harmless without a GPU; leave the default behind.
        Precision::Bf16.configure();
        Precision::Fp32.configure();
    }
}
