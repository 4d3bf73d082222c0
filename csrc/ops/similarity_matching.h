// The similarity-matching loss (seed 004, eqs. (4)-(5)) as a device-generic
// sequence of passes: each device supplies the three element passes, the two
// Gram-sized products run through torch's matmul (cuBLAS on CUDA, tensor cores
// for half precision) with opmath output.
//
// Forward:  normalize_rows -> G = Z Z^T -> residual       (loss = sum row_loss / B^2)
// Backward: P = E Z -> gradient
#pragma once

#include <optional>
#include <tuple>

#include "stable_compat.h"

namespace locallearn {

struct SimilarityMatchingPasses {
  // Z and the r_i, n_i columns of row_stats from (B, D) features.
  void (*normalize_rows)(const Tensor& features, Tensor& normalized, Tensor& row_stats);
  // E and the a_i, row-loss columns of row_stats from the (B, B) Gram matrix;
  // exactly one of labels (int64, (B,)) and target ((B, B), opmath) is set.
  void (*residual)(const Tensor& gram, const std::optional<Tensor>& labels, int64_t num_classes,
                   const std::optional<Tensor>& target, Tensor& residual, Tensor& row_stats);
  // dL/dX from P = E Z, Z and row_stats; grad_loss is a 0-dim opmath tensor.
  void (*gradient)(const Tensor& grad_loss, const Tensor& product, const Tensor& normalized,
                   const Tensor& row_stats, Tensor& grad_features);
};

// Returns (loss, normalized Z, residual E, row_stats); see the op schema.
std::tuple<Tensor, Tensor, Tensor, Tensor> similarity_matching_forward(
    const SimilarityMatchingPasses& passes, const Tensor& features,
    const std::optional<Tensor>& labels, const std::optional<Tensor>& target, int64_t num_classes);

Tensor similarity_matching_backward(const SimilarityMatchingPasses& passes, const Tensor& grad_loss,
                                        const Tensor& normalized, const Tensor& residual,
                                        const Tensor& row_stats);

}  // namespace locallearn
