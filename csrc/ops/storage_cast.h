// Conversion from the opmath type back to a tensor's storage type on the CPU,
// saturating half precision as the CUDA kernels do (csrc/kernels/cuda_utils.cuh).
#pragma once

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <limits>
#include <type_traits>

#include "../kernels/host_device.h"

namespace locallearn {

template <typename scalar_t, typename acc_t>
inline scalar_t to_storage(acc_t value) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return value;
  } else {
    return static_cast<scalar_t>(saturate(value, static_cast<acc_t>(std::numeric_limits<scalar_t>::max())));
  }
}

}  // namespace locallearn
