// Schema, device-generic orchestration and CPU passes of channel_std; the
// element formulas are shared with the CUDA kernels (csrc/kernels/channel_std_math.h).
#include "channel_std.h"

#include "../kernels/channel_std_math.h"
#include "storage_cast.h"

namespace locallearn {
namespace {

int64_t spatial_positions(const Tensor& input) {
  int64_t positions = 1;
  for (int64_t d = 2; d < input.dim(); ++d) positions *= input.size(d);
  return positions;
}

void check_input(const Tensor& input) {
  LOCALLEARN_CHECK(input.dim() >= 3, "channel_std: input must be (B, C, *spatial), got ",
                   format_sizes(input.sizes()));
  LOCALLEARN_CHECK(is_supported_float(input.scalar_type()),
                   "channel_std: input must be float32, float64, float16 or bfloat16, got ", input.scalar_type());
  LOCALLEARN_CHECK(spatial_positions(input) >= 2, "channel_std: needs at least 2 spatial positions per channel, got ",
                   format_sizes(input.sizes()));
}

bool is_batch_by_channel(const Tensor& tensor, const Tensor& input) {
  return tensor.dim() == 2 && tensor.size(0) == input.size(0) && tensor.size(1) == input.size(1);
}

void check_statistic(const char* name, const Tensor& statistic, const Tensor& input) {
  check_same_device("channel_std_backward", name, statistic, "input", input);
  LOCALLEARN_CHECK(is_batch_by_channel(statistic, input) &&
                       statistic.scalar_type() == opmath_dtype(input.scalar_type()),
                   "channel_std_backward: ", name, " must be (B, C) in the opmath dtype of input, got ",
                   format_sizes(statistic.sizes()), " ", statistic.scalar_type());
}

// (B, C, *spatial) as contiguous (B*C, spatial) rows.
Tensor as_rows(const Tensor& input) {
  return torch::stable::view(torch::stable::contiguous(input), {input.size(0) * input.size(1), -1});
}

void forward_pass_cpu(const Tensor& rows, Tensor& std_out, Tensor& mean_out) {
  const int64_t n_rows = rows.size(0), cols = rows.size(1);
  dispatch_floating(rows.scalar_type(), "channel_std_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* x = rows.const_data_ptr<scalar_t>();
    acc_t* deviation = std_out.mutable_data_ptr<acc_t>();
    acc_t* mean = mean_out.mutable_data_ptr<acc_t>();
    torch::stable::parallel_for(0, n_rows, 16, [&](int64_t begin, int64_t end) {
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

void backward_pass_cpu(const Tensor& grad_std, const Tensor& rows, const Tensor& mean_in,
                       const Tensor& deviation_in, Tensor& grad_rows) {
  const int64_t n_rows = rows.size(0), cols = rows.size(1);
  dispatch_floating(rows.scalar_type(), "channel_std_backward_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const acc_t* g = grad_std.const_data_ptr<acc_t>();
    const scalar_t* x = rows.const_data_ptr<scalar_t>();
    const acc_t* mean = mean_in.const_data_ptr<acc_t>();
    const acc_t* deviation = deviation_in.const_data_ptr<acc_t>();
    scalar_t* out = grad_rows.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, n_rows, 16, [&](int64_t begin, int64_t end) {
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

std::tuple<Tensor, Tensor> forward_cpu(Tensor input) { return channel_std_forward(kCpuPasses, input); }

Tensor backward_cpu(Tensor grad_std, Tensor input, Tensor mean, Tensor deviation) {
  return channel_std_backward(kCpuPasses, grad_std, input, mean, deviation);
}

}  // namespace

std::tuple<Tensor, Tensor> channel_std_forward(const ChannelStdPasses& passes, const Tensor& input) {
  check_input(input);
  const ScalarType opmath = opmath_dtype(input.scalar_type());
  Tensor deviation = torch::stable::new_empty(input, {input.size(0), input.size(1)}, opmath);
  Tensor mean = torch::stable::new_empty(input, {input.size(0), input.size(1)}, opmath);
  if (input.numel() > 0) {
    Tensor std_rows = torch::stable::view(deviation, {-1});
    Tensor mean_rows = torch::stable::view(mean, {-1});
    passes.forward(as_rows(input), std_rows, mean_rows);
  }
  return {deviation, mean};
}

Tensor channel_std_backward(const ChannelStdPasses& passes, const Tensor& grad_std, const Tensor& input,
                            const Tensor& mean, const Tensor& deviation) {
  check_input(input);
  LOCALLEARN_CHECK(is_batch_by_channel(grad_std, input), "channel_std_backward: grad_std must be (B, C), got ",
                   format_sizes(grad_std.sizes()));
  check_floating("channel_std_backward", "grad_std", grad_std);
  check_same_device("channel_std_backward", "grad_std", grad_std, "input", input);
  check_statistic("mean", mean, input);
  check_statistic("std", deviation, input);
  Tensor grad_input = torch::stable::new_empty(input, input.sizes());
  if (input.numel() > 0) {
    Tensor grad_rows = torch::stable::view(grad_input, {input.size(0) * input.size(1), -1});
    const auto flat = [](const Tensor& t) { return torch::stable::view(torch::stable::contiguous(t), {-1}); };
    passes.backward(flat(torch::stable::to(grad_std, mean.scalar_type())), as_rows(input), flat(mean),
                    flat(deviation), grad_rows);
  }
  return grad_input;
}

}  // namespace locallearn

STABLE_TORCH_LIBRARY_FRAGMENT(locallearn, m) {
  m.def("channel_std(Tensor input) -> (Tensor std, Tensor mean)");
  m.def("channel_std_backward(Tensor grad_std, Tensor input, Tensor mean, Tensor std) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(locallearn, CPU, m) {
  m.impl("channel_std", TORCH_BOX(&locallearn::forward_cpu));
  m.impl("channel_std_backward", TORCH_BOX(&locallearn::backward_cpu));
}
