// Launcher of DTP's difference target (seed 003 eq. (2)) through a fully-connected
// inverse g(h) = σ(V h + c):
//   out = h_below + σ(t_upper Vᵀ + c) − σ(h_upper Vᵀ + c)
// one tiled GEMM of the stacked rows [t_upper; h_upper] with Vᵀ: each block computes
// the same 64 x 64 tile of both halves from one staged tile of V, and the epilogue
// adds c, applies σ and writes the difference, so no pre-activation reaches memory.
// Contiguous row-major: h_below and out (batch, below), t_upper and h_upper
// (batch, upper), weight (below, upper), bias (below). scalar_t is float, double,
// __half or __nv_bfloat16, accumulated in its acc_type (cuda_utils.cuh). Returns the
// first CUDA error, cudaErrorInvalidConfiguration for more tiles than a grid holds.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "difference_target_math.h"

namespace locallearn::kernels {

template <typename scalar_t>
cudaError_t launch_difference_target(const scalar_t* h_below, const scalar_t* t_upper, const scalar_t* h_upper,
                                     const scalar_t* weight, const scalar_t* bias, int64_t batch, int64_t below,
                                     int64_t upper, Activation activation, scalar_t* out, cudaStream_t stream);

}  // namespace locallearn::kernels
