// Direct feedback alignment's projection e B_ℓ of the output error (Nøkland 2016; seed
// 003 §2.1.1) with every entry of B_ℓ generated where it is used, never stored
// (csrc/kernels/direct_feedback_math.h). Device-generic checks and allocation; each
// device supplies the pass.
//
// Schema (STABLE_TORCH_LIBRARY_FRAGMENT in direct_feedback.cpp):
//   direct_feedback(Tensor error, int seed, int layer, int num_features) -> Tensor
// error (B, K) of one floating dtype → (B, num_features) in that dtype, each dot
// product accumulated in its opmath type (float32; float64 for float64).
#pragma once

#include "../kernels/direct_feedback_math.h"
#include "stable_compat.h"

namespace locallearn {

struct DirectFeedbackPass {
  // out (B, N) = error B_ℓ, error contiguous (B, K).
  void (*forward)(const Tensor& error, const FeedbackGenerator& generator, Tensor& out);
};

Tensor direct_feedback_forward(const DirectFeedbackPass& pass, const Tensor& error, int64_t seed, int64_t layer,
                               int64_t num_features);

}  // namespace locallearn
