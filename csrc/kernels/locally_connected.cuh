// Launchers of the locally-connected 2-d op (a convolution without weight sharing):
// forward, transpose (input gradient) and weight gradient, each a batched GEMM over
// the output locations whose patch operand is gathered from the input on the fly
// (implicit im2col: no (B, K, L) tensor is ever written). Algorithms, tiling and
// what to verify on a GPU: docs/locally_connected_kernels.md.
//
// Layouts (contiguous), as in csrc/ops/locally_connected.h:
//   input  (B, C_in, H, W)            weight (L, C_out, K), K = C_in*kh*kw ordered (c, i, j)
//   bias   (C_out, H_out, W_out)      output (B, C_out, H_out, W_out), L = H_out*W_out
// scalar_t is float, double, __half or __nv_bfloat16; acc_t its opmath type
// (cuda_utils.cuh Numeric<scalar_t>::acc_t). Results are accumulated in acc_t and
// written with the saturating conversion of the other kernels. The TensorCorePolicy
// says which of them may run on tensor cores; float32 uses TF32 tensor cores only
// where it allows TF32, otherwise float32 is true fp32.
// Each launcher returns the first CUDA error, or cudaErrorInvalidValue for a patch
// size K >= 2^31 (the kernels index within a patch with int, everything else int64).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace locallearn::kernels {

// The sizes of one sweep; the fields of LocallyConnectedGeometry, so that the
// window arithmetic of locally_connected_math.h applies to both.
struct LocallyConnectedShape {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// What the launchers may run on tensor cores, read by the caller once per op call:
// the device's compute capability (half needs sm_70+, bfloat16 and TF32 sm_80+),
// whether float32 may round to TF32 (torch's float32 matmul precision), and whether
// tensor cores are enabled at all (off runs the SIMT kernels for every dtype).
struct TensorCorePolicy {
  int compute_capability_major;
  bool allow_tf32;
  bool enabled;
};

// output = LC(input; weight) + bias. bias may be null.
template <typename scalar_t, typename acc_t>
cudaError_t launch_locally_connected2d(const LocallyConnectedShape& shape, const scalar_t* input,
                                       const scalar_t* weight, const scalar_t* bias, scalar_t* output,
                                       const TensorCorePolicy& policy, cudaStream_t stream);

// grad_input = LCᵀ(grad_output). The sum is accumulated into `accumulator`, a
// zero-filled acc_t buffer with grad_input's (B, C_in, H, W) shape. When acc_t is
// scalar_t the accumulator may be grad_input itself (then it must be zero-filled);
// otherwise the launcher converts it into grad_input at the end.
template <typename scalar_t, typename acc_t>
cudaError_t launch_locally_connected2d_transpose(const LocallyConnectedShape& shape, const scalar_t* grad_output,
                                                 const scalar_t* weight, acc_t* accumulator, scalar_t* grad_input,
                                                 const TensorCorePolicy& policy, cudaStream_t stream);

// grad_weight (L, C_out, K) = Σ_b grad_output ⊗ patches; every element is written.
template <typename scalar_t, typename acc_t>
cudaError_t launch_locally_connected2d_weight_grad(const LocallyConnectedShape& shape, const scalar_t* input,
                                                   const scalar_t* grad_output, scalar_t* grad_weight,
                                                   const TensorCorePolicy& policy, cudaStream_t stream);

}  // namespace locallearn::kernels
