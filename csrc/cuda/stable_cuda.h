// Glue between stable-ABI tensors and the plain-CUDA launchers in csrc/kernels/:
// storage type mapping, raw pointers, the current stream and CUDA error checks. Needs
// USE_CUDA defined (the CUDA shims of torch/csrc/inductor/aoti_torch/c/shim.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/macros.h>

#include "../ops/stable_compat.h"

namespace locallearn {

template <typename T>
struct CudaStorage {
  using type = T;
};
template <>
struct CudaStorage<Half> {
  using type = __half;
};
template <>
struct CudaStorage<BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using cuda_type = typename CudaStorage<T>::type;

template <typename T>
const cuda_type<T>* device_ptr(const Tensor& t) {
  return reinterpret_cast<const cuda_type<T>*>(t.const_data_ptr<T>());
}

template <typename T>
cuda_type<T>* mutable_device_ptr(Tensor& t) {
  return reinterpret_cast<cuda_type<T>*>(t.mutable_data_ptr<T>());
}

// The stream PyTorch is using on ``tensor``'s device.
inline cudaStream_t current_stream(const Tensor& tensor) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(tensor.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

// Makes ``tensor``'s device current for the scope.
struct DeviceOf : torch::stable::accelerator::DeviceGuard {
  explicit DeviceOf(const Tensor& tensor) : DeviceGuard(tensor.get_device_index()) {}
};

}  // namespace locallearn
