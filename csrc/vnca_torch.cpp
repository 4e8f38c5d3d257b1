#include "vnca_torch.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace {
c10::DeviceType device_of(int device_type) {
  return device_type == VNCA_DEVICE_CUDA ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
}
}  // namespace

extern "C" {

void vnca_set_tf32(bool matmul, bool cudnn) {
  at::globalContext().setAllowTF32CuBLAS(matmul);
  at::globalContext().setAllowTF32CuDNN(cudnn);
}

void vnca_set_cudnn_benchmark(bool enabled) { at::globalContext().setBenchmarkCuDNN(enabled); }

bool vnca_autocast_enter_bf16(int device_type) {
  const auto dev = device_of(device_type);
  const bool was = at::autocast::is_autocast_enabled(dev);
  at::autocast::set_autocast_dtype(dev, at::kBFloat16);
  at::autocast::set_autocast_enabled(dev, true);
  at::autocast::increment_nesting();
  return was;
}

void vnca_autocast_exit(int device_type, bool was_enabled) {
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(device_of(device_type), was_enabled);
}

bool vnca_set_flush_denormal(bool on) { return at::globalContext().setFlushDenormal(on); }

bool vnca_autocast_enabled(int device_type) {
  return at::autocast::is_autocast_enabled(device_of(device_type));
}

const char *vnca_torch_version(void) { return TORCH_VERSION; }
}
