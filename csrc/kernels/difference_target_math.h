// Element formulas of DTP's difference target (seed 003 eq. (2)), shared by the CPU
// implementation and the CUDA kernel. No torch headers.
//   t_below[b, i] = h_below[b, i] + σ(z_t[b, i] + c_i) − σ(z_h[b, i] + c_i)
// with z_t = t_upper Vᵀ and z_h = h_upper Vᵀ, σ one of the elementwise activations of
// locallearn.models.network.ACTIVATIONS, with their constants there.
#pragma once

#include <cmath>

#include "host_device.h"

namespace locallearn {

// The schema's activation names, in this order: "relu", "leaky_relu", "tanh", "elu".
enum class Activation : int { ReLU, LeakyReLU, Tanh, ELU };

// σ(x) as torch computes it: leaky_relu with slope 0.01, elu with α = 1; NaN stays NaN.
template <typename acc_t>
LL_HOST_DEVICE acc_t activate(Activation activation, acc_t x) {
  switch (activation) {
    case Activation::ReLU: return x < acc_t(0) ? acc_t(0) : x;
    case Activation::LeakyReLU: return x < acc_t(0) ? acc_t(0.01) * x : x;
    case Activation::Tanh: return std::tanh(x);
    default: return x > acc_t(0) ? x : std::expm1(x);
  }
}

// h_below + σ(top + bias) − σ(bottom + bias), top and bottom the two GEMM rows' entries.
template <typename acc_t>
LL_HOST_DEVICE acc_t difference_target_value(Activation activation, acc_t h_below, acc_t top, acc_t bottom,
                                             acc_t bias) {
  return h_below + (activate(activation, top + bias) - activate(activation, bottom + bias));
}

}  // namespace locallearn
