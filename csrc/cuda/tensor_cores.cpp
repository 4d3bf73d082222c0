#include "tensor_cores.h"

#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAMacros.h>
#include <torch/version.h>

#include <array>
#include <atomic>

namespace locallearn {
namespace {

std::atomic<bool> tensor_cores_switch{true};

int compute_capability_major(c10::DeviceIndex device) {
  TORCH_CHECK(device >= 0 && device < C10_COMPILE_TIME_MAX_GPUS, "locallearn: bad CUDA device index ", int(device));
  static std::array<std::atomic<int>, C10_COMPILE_TIME_MAX_GPUS> cache{};  // 0: not queried yet
  int major = cache[device].load(std::memory_order_relaxed);
  if (major == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    cache[device].store(major, std::memory_order_relaxed);
  }
  return major;
}

// float32 runs on TF32 tensor cores only where a cuBLAS matmul would: torch's
// float32 matmul precision is TF32 (torch.backends.cuda.matmul.fp32_precision,
// set_float32_matmul_precision or the legacy allow_tf32) and no NoTF32Guard is active.
bool allow_tf32() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  const bool tf32 = at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
                    at::Float32Precision::TF32;
#else  // before the precision API of torch 2.9
  const bool tf32 = at::globalContext().allowTF32CuBLAS();
#endif
  return tf32 && !at::NoTF32Guard::should_disable_tf32();
}

}  // namespace

void set_tensor_cores_enabled(bool enabled) { tensor_cores_switch.store(enabled); }

bool tensor_cores_enabled() { return tensor_cores_switch.load(); }

kernels::TensorCorePolicy tensor_core_policy(int device_index) {
  return {compute_capability_major(static_cast<c10::DeviceIndex>(device_index)), allow_tf32(),
          tensor_cores_enabled()};
}

}  // namespace locallearn
