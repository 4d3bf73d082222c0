// Launcher of direct feedback alignment's projection out = error B_ℓ with B_ℓ (K x N)
// generated in the kernel, never read from memory: each block of the 1-d tile grid
// (simt_tile.cuh) generates the 16 x 64 slice of B_ℓ that a step of its 64 x 64 output
// tile needs into shared memory, from the row and column hashes
// (direct_feedback_math.h), so the values are bit for bit the Python generator's.
// Contiguous row-major: error (batch, classes), out (batch, features). scalar_t is
// float, double, __half or __nv_bfloat16, accumulated in its acc_type (cuda_utils.cuh).
// Returns the first CUDA error, cudaErrorInvalidConfiguration for more tiles than a grid holds.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "direct_feedback_math.h"

namespace locallearn::kernels {

template <typename scalar_t>
cudaError_t launch_direct_feedback(const scalar_t* error, int64_t batch, int64_t classes, int64_t features,
                                   FeedbackGenerator generator, scalar_t* out, cudaStream_t stream);

}  // namespace locallearn::kernels
