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
// Schema (TORCH_LIBRARY_FRAGMENT in locally_connected.cpp):
//   locally_connected2d(Tensor input, Tensor weight, Tensor? bias, int[2] kernel_size,
//                       int[2] stride, int[2] padding, int[2] dilation) -> Tensor
//   locally_connected2d_transpose(Tensor grad_output, Tensor weight, int[2] input_size,
//                       int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor
//   locally_connected2d_weight_grad(Tensor input, Tensor grad_output, int[2] kernel_size,
//                       int[2] stride, int[2] padding, int[2] dilation) -> Tensor
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace locallearn {

// The sizes of one locally-connected sweep, validated by the orchestration.
struct LocallyConnectedGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  int64_t locations() const { return out_h * out_w; }
  int64_t patch_size() const { return in_channels * kernel_h * kernel_w; }
};

struct LocallyConnectedPasses {
  // output (B, C_out, H_out, W_out) from input, weight and bias (undefined when absent).
  void (*forward)(const LocallyConnectedGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& bias, at::Tensor& output);
  // grad_input (B, C_in, H, W) = LCᵀ(grad_output); grad_input arrives zero-filled.
  void (*transpose)(const LocallyConnectedGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                    at::Tensor& grad_input);
  // grad_weight (L_out, C_out, K) = Σ_b grad_output ⊗ patches, in input's dtype.
  void (*weight_grad)(const LocallyConnectedGeometry& g, const at::Tensor& input, const at::Tensor& grad_output,
                      at::Tensor& grad_weight);
};

at::Tensor locally_connected2d_forward(const LocallyConnectedPasses& passes, const at::Tensor& input,
                                       const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                       c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                       c10::IntArrayRef padding, c10::IntArrayRef dilation);

at::Tensor locally_connected2d_transpose(const LocallyConnectedPasses& passes, const at::Tensor& grad_output,
                                         const at::Tensor& weight, c10::IntArrayRef input_size,
                                         c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                         c10::IntArrayRef padding, c10::IntArrayRef dilation);

at::Tensor locally_connected2d_weight_grad(const LocallyConnectedPasses& passes, const at::Tensor& input,
                                           const at::Tensor& grad_output, c10::IntArrayRef kernel_size,
                                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                                           c10::IntArrayRef dilation);

}  // namespace locallearn
