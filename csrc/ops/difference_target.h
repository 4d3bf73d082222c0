// DTP's difference target through a fully-connected learned inverse g(h) = σ(V h + c)
// (seed 003 eq. (2)): t_below = h_below + g(t_upper) − g(h_upper), as one GEMM of the
// stacked rows [t_upper; h_upper] with Vᵀ and the bias, σ and the difference in its
// epilogue. Device-generic checks and allocation; each device supplies the pass.
//
// Schema (STABLE_TORCH_LIBRARY_FRAGMENT in difference_target.cpp):
//   difference_target(Tensor h_below, Tensor t_upper, Tensor h_upper, Tensor weight,
//                     Tensor bias, str activation) -> Tensor
// h_below (B, N_below), t_upper and h_upper (B, N_upper), weight V (N_below, N_upper),
// bias c (N_below), one floating dtype; accumulated in its opmath type, returned in it.
#pragma once

#include <string>

#include "../kernels/difference_target_math.h"
#include "stable_compat.h"

namespace locallearn {

struct DifferenceTargetPass {
  // out (B, N_below) from the contiguous inputs.
  void (*forward)(const Tensor& h_below, const Tensor& t_upper, const Tensor& h_upper, const Tensor& weight,
                  const Tensor& bias, Activation activation, Tensor& out);
};

Tensor difference_target_forward(const DifferenceTargetPass& pass, const Tensor& h_below, const Tensor& t_upper,
                                 const Tensor& h_upper, const Tensor& weight, const Tensor& bias,
                                 const std::string& activation);

}  // namespace locallearn
