// Schema, device-generic orchestration and CPU passes of channel_std; the
// element formulas are shared with the CUDA kernels (csrc/kernels/channel_std_math.h).
#include "channel_std.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include "../kernels/channel_std_math.h"
#include "checks.h"
#include "dtypes.h"
#include "storage_cast.h"

namespace locallearn {
namespace {

void check_input(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() >= 3, "channel_std: input must be (B, C, *spatial), got ", input.sizes());
  TORCH_CHECK_VALUE(is_supported_float(input.scalar_type()),
                    "channel_std: input must be float32, float64, float16 or bfloat16, got ", input.scalar_type());
  TORCH_CHECK_VALUE(c10::multiply_integers(input.sizes().slice(2)) >= 2,
                    "channel_std: needs at least 2 spatial positions per channel, got ", input.sizes());
}

void check_statistic(const char* name, const at::Tensor& statistic, const at::Tensor& input) {
  check_same_device("channel_std_backward", name, statistic, "input", input);
  TORCH_CHECK_VALUE(statistic.sizes() == input.sizes().slice(0, 2) &&
                        statistic.scalar_type() == at::toOpMathType(input.scalar_type()),
                    "channel_std_backward: ", name, " must be (B, C) in the opmath dtype of input, got ",
                    statistic.sizes(), " ", statistic.scalar_type());
}

// (B, C, *spatial) as contiguous (B*C, spatial) rows.
at::Tensor as_rows(const at::Tensor& input) {
  return input.contiguous().view({input.size(0) * input.size(1), -1});
}

void forward_pass_cpu(const at::Tensor& rows, at::Tensor& std_out, at::Tensor& mean_out) {
  const int64_t n_rows = rows.size(0), cols = rows.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "channel_std_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = rows.const_data_ptr<scalar_t>();
    acc_t* deviation = std_out.mutable_data_ptr<acc_t>();
    acc_t* mean = mean_out.mutable_data_ptr<acc_t>();
    at::parallel_for(0, n_rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = x + r * cols;
        double sum = 0;
        for (int64_t c = 0; c < cols; ++c) sum += static_cast<double>(xr[c]);
        mean[r] = static_cast<acc_t>(sum / cols);
        double squares = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const double d = static_cast<double>(static_cast<acc_t>(xr[c]) - mean[r]);
          squares += d * d;
        }
        deviation[r] = unbiased_std(static_cast<acc_t>(squares), cols);
      }
    });
  });
}

void backward_pass_cpu(const at::Tensor& grad_std, const at::Tensor& rows, const at::Tensor& mean_in,
                       const at::Tensor& deviation_in, at::Tensor& grad_rows) {
  const int64_t n_rows = rows.size(0), cols = rows.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "channel_std_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* g = grad_std.const_data_ptr<acc_t>();
    const scalar_t* x = rows.const_data_ptr<scalar_t>();
    const acc_t* mean = mean_in.const_data_ptr<acc_t>();
    const acc_t* deviation = deviation_in.const_data_ptr<acc_t>();
    scalar_t* out = grad_rows.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n_rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const acc_t centered = static_cast<acc_t>(x[r * cols + c]) - mean[r];
          out[r * cols + c] = to_storage<scalar_t>(channel_std_gradient(g[r], centered, deviation[r], cols));
        }
      }
    });
  });
}

constexpr ChannelStdPasses kCpuPasses{forward_pass_cpu, backward_pass_cpu};

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& input) {
  return channel_std_forward(kCpuPasses, input);
}

at::Tensor backward_cpu(const at::Tensor& grad_std, const at::Tensor& input, const at::Tensor& mean,
                        const at::Tensor& deviation) {
  return channel_std_backward(kCpuPasses, grad_std, input, mean, deviation);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> channel_std_forward(const ChannelStdPasses& passes, const at::Tensor& input) {
  check_input(input);
  const auto options = input.options().dtype(at::toOpMathType(input.scalar_type()));
  at::Tensor deviation = at::empty({input.size(0), input.size(1)}, options);
  at::Tensor mean = at::empty({input.size(0), input.size(1)}, options);
  if (input.numel() > 0) {
    at::Tensor std_rows = deviation.view({-1});
    at::Tensor mean_rows = mean.view({-1});
    passes.forward(as_rows(input), std_rows, mean_rows);
  }
  return {deviation, mean};
}

at::Tensor channel_std_backward(const ChannelStdPasses& passes, const at::Tensor& grad_std, const at::Tensor& input,
                                const at::Tensor& mean, const at::Tensor& deviation) {
  check_input(input);
  TORCH_CHECK_VALUE(grad_std.sizes() == input.sizes().slice(0, 2),
                    "channel_std_backward: grad_std must be (B, C), got ", grad_std.sizes());
  check_floating("channel_std_backward", "grad_std", grad_std);
  check_same_device("channel_std_backward", "grad_std", grad_std, "input", input);
  check_statistic("mean", mean, input);
  check_statistic("std", deviation, input);
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  if (input.numel() > 0) {
    at::Tensor grad_rows = grad_input.view({input.size(0) * input.size(1), -1});
    passes.backward(grad_std.to(mean.scalar_type()).contiguous().view({-1}), as_rows(input),
                    mean.contiguous().view({-1}), deviation.contiguous().view({-1}), grad_rows);
  }
  return grad_input;
}

}  // namespace locallearn

TORCH_LIBRARY_FRAGMENT(locallearn, m) {
  m.def("channel_std(Tensor input) -> (Tensor std, Tensor mean)", {at::Tag::pt2_compliant_tag});
  m.def("channel_std_backward(Tensor grad_std, Tensor input, Tensor mean, Tensor std) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(locallearn, CPU, m) {
  m.impl("channel_std", &locallearn::forward_cpu);
  m.impl("channel_std_backward", &locallearn::backward_cpu);
}
