// The few libtorch switches that tch does not bind, as a plain C API for Rust
// (src/precision.rs declares the same functions). Compiled by build.rs with the `cc`
// crate against the headers of the libtorch being linked, as torch-sys compiles its
// own wrappers. Keep it small: one function per switch, no tensors cross this API.
#pragma once
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

// Device types as in c10::DeviceType: 0 = CPU, 1 = CUDA.
#define VNCA_DEVICE_CPU 0
#define VNCA_DEVICE_CUDA 1

// TF32 for float32 matrix products (cuBLAS) and convolutions (cuDNN) on CUDA.
// PyTorch's own defaults are: matmul off, cuDNN on; fp32 mode turns both off.
void vnca_set_tf32(bool matmul, bool cudnn);
// cuDNN's autotuner: time the algorithms for each new input shape, keep the fastest.
void vnca_set_cudnn_benchmark(bool enabled);

// Enters an autocast region for `device_type` with bfloat16 as the lower precision
// (CUDA and CPU both), returning whether autocast was already enabled there, which
// vnca_autocast_exit restores. Regions nest; the cast cache is cleared when the
// outermost one exits (what torch.autocast's __exit__ does).
bool vnca_autocast_enter_bf16(int device_type);
void vnca_autocast_exit(int device_type, bool was_enabled);
bool vnca_autocast_enabled(int device_type);

// Flush denormal floats to zero on the CPU (x86 FTZ and DAZ), for the calling thread and
// the threads it starts later; returns false where the CPU cannot. torch.set_flush_denormal.
bool vnca_set_flush_denormal(bool on);

// The libtorch version these functions were compiled against ("2.13.0").
const char *vnca_torch_version(void);

#ifdef __cplusplus
}
#endif
