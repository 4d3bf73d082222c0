// Per-channel standard deviation over space, (B, C, *spatial) -> (B, C): the
// reduction seed 004 §3.1 applies to convolutional activations before the
// similarity matrix. Device-generic orchestration; each device supplies the
// two passes over the input viewed as (B*C, spatial) rows.
#pragma once

#include <tuple>

#include "stable_compat.h"

namespace locallearn {

struct ChannelStdPasses {
  // std_out and mean_out (rows,), opmath, from input rows (rows, cols).
  void (*forward)(const Tensor& rows, Tensor& std_out, Tensor& mean_out);
  // grad_rows (rows, cols) from grad_std (rows,), the input rows, mean and std.
  void (*backward)(const Tensor& grad_std, const Tensor& rows, const Tensor& mean, const Tensor& deviation,
                   Tensor& grad_rows);
};

// Returns (std, mean), both (B, C) in the opmath dtype of the input.
std::tuple<Tensor, Tensor> channel_std_forward(const ChannelStdPasses& passes, const Tensor& input);

Tensor channel_std_backward(const ChannelStdPasses& passes, const Tensor& grad_std, const Tensor& input,
                            const Tensor& mean, const Tensor& deviation);

}  // namespace locallearn
