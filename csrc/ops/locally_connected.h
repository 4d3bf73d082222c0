// Locally-connected 2-d layer (a convolution without weight sharing) and its two
// gradients: the input gradient, which is also the transpose map seed 003 §5.4 uses
// for inverses of LC layers, and the weight gradient. Device-generic orchestration
// (checks, contiguity, allocation) lives in csrc/ops/locally_connected.cpp; each
// device supplies the three passes below over contiguous tensors.
//
// Layouts (see python/locallearn/ops/locally_connected.py for why):
//   input        (B, C_in, H, W)
//   weight       (L_out, C_out, K)   L_out = H_out*W_out, K = C_in*kh*kw ordered (c, i, j)
//   bias         (C_out, H_out, W_out), optional
//   output       (B, C_out, H_out, W_out)
// Every pass accumulates in the opmath type (float for half/bfloat16) and writes its
// result in the storage dtype of its first tensor argument.
//
// Schema (STABLE_TORCH_LIBRARY_FRAGMENT in locally_connected.cpp):
//   locally_connected2d(Tensor input, Tensor weight, Tensor? bias, int[2] kernel_size,
//                       int[2] stride, int[2] padding, int[2] dilation, bool allow_tf32=False) -> Tensor
//   locally_connected2d_transpose(Tensor grad_output, Tensor weight, int[2] input_size,
//                       int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation,
//                       bool allow_tf32=False) -> Tensor
//   locally_connected2d_weight_grad(Tensor input, Tensor grad_output, int[2] kernel_size,
//                       int[2] stride, int[2] padding, int[2] dilation, bool allow_tf32=False) -> Tensor
// allow_tf32 lets the CUDA kernels round float32 products to TF32 (the Python wrapper
// passes torch's float32 matmul precision, which the stable ABI cannot read); the CPU
// passes ignore it.
#pragma once

#include <cstdint>
#include <optional>

#include "stable_compat.h"

namespace locallearn {

using IntArrayRef = torch::headeronly::IntHeaderOnlyArrayRef;

// The sizes of one locally-connected sweep, validated by the orchestration.
struct LocallyConnectedGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  int64_t locations() const { return out_h * out_w; }
  int64_t patch_size() const { return in_channels * kernel_h * kernel_w; }
};

struct LocallyConnectedPasses {
  // output (B, C_out, H_out, W_out) from input, weight and bias (nullopt when absent).
  void (*forward)(const LocallyConnectedGeometry& g, const Tensor& input, const Tensor& weight,
                  const std::optional<Tensor>& bias, Tensor& output, bool allow_tf32);
  // grad_input (B, C_in, H, W) = LCᵀ(grad_output); grad_input arrives zero-filled.
  void (*transpose)(const LocallyConnectedGeometry& g, const Tensor& grad_output, const Tensor& weight,
                    Tensor& grad_input, bool allow_tf32);
  // grad_weight (L_out, C_out, K) = Σ_b grad_output ⊗ patches, in input's dtype.
  void (*weight_grad)(const LocallyConnectedGeometry& g, const Tensor& input, const Tensor& grad_output,
                      Tensor& grad_weight, bool allow_tf32);
};

Tensor locally_connected2d_forward(const LocallyConnectedPasses& passes, const Tensor& input, const Tensor& weight,
                                   const std::optional<Tensor>& bias, IntArrayRef kernel_size, IntArrayRef stride,
                                   IntArrayRef padding, IntArrayRef dilation, bool allow_tf32);

Tensor locally_connected2d_transpose(const LocallyConnectedPasses& passes, const Tensor& grad_output,
                                     const Tensor& weight, IntArrayRef input_size, IntArrayRef kernel_size,
                                     IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                     bool allow_tf32);

Tensor locally_connected2d_weight_grad(const LocallyConnectedPasses& passes, const Tensor& input,
                                       const Tensor& grad_output, IntArrayRef kernel_size, IntArrayRef stride,
                                       IntArrayRef padding, IntArrayRef dilation, bool allow_tf32);

}  // namespace locallearn
