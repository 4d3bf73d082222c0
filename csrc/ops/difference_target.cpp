// Schema, device-generic checks and the CPU pass of difference_target; the element
// formula is shared with the CUDA kernel (csrc/kernels/difference_target_math.h).
//
// The CPU pass runs one GEMM (aten::mm.out, in opmath) of the stacked rows
// [t_upper; h_upper] (2B, N_upper) with Vᵀ, then one loop that adds the bias, applies
// σ to both halves and writes h_below + σ(top) − σ(bottom) in the storage dtype.
#include "difference_target.h"

#include <algorithm>

#include "storage_cast.h"

namespace locallearn {
namespace {

constexpr const char* kOp = "difference_target";

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::ReLU;
  if (name == "leaky_relu") return Activation::LeakyReLU;
  if (name == "tanh") return Activation::Tanh;
  LOCALLEARN_CHECK(name == "elu", kOp, ": activation must be one of relu, leaky_relu, tanh, elu, got '", name, "'");
  return Activation::ELU;
}

void forward_pass_cpu(const Tensor& h_below, const Tensor& t_upper, const Tensor& h_upper, const Tensor& weight,
                      const Tensor& bias, Activation activation, Tensor& out) {
  const int64_t batch = h_below.size(0), below = h_below.size(1), upper = t_upper.size(1);
  const ScalarType opmath = opmath_dtype(out.scalar_type());
  Tensor stacked = torch::stable::new_empty(t_upper, {2 * batch, upper}, opmath);
  Tensor top = torch::stable::narrow(stacked, 0, 0, batch);
  Tensor bottom = torch::stable::narrow(stacked, 0, batch, batch);
  torch::stable::copy_(top, t_upper);
  torch::stable::copy_(bottom, h_upper);
  Tensor pre_activation = torch::stable::new_empty(t_upper, {2 * batch, below}, opmath);
  mm_out(pre_activation, stacked, torch::stable::transpose(torch::stable::to(weight, opmath), 0, 1));
  dispatch_floating(out.scalar_type(), "difference_target_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const acc_t* z = pre_activation.const_data_ptr<acc_t>();
    const scalar_t* h = h_below.const_data_ptr<scalar_t>();
    const scalar_t* c = bias.const_data_ptr<scalar_t>();
    scalar_t* target = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 4096 / below);
    torch::stable::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t i = 0; i < below; ++i) {
          const int64_t at = b * below + i;
          target[at] = to_storage<scalar_t>(difference_target_value(
              activation, static_cast<acc_t>(h[at]), z[at], z[batch * below + at], static_cast<acc_t>(c[i])));
        }
      }
    });
  });
}

constexpr DifferenceTargetPass kCpuPass{forward_pass_cpu};

Tensor forward_cpu(Tensor h_below, Tensor t_upper, Tensor h_upper, Tensor weight, Tensor bias,
                   std::string activation) {
  return difference_target_forward(kCpuPass, h_below, t_upper, h_upper, weight, bias, activation);
}

}  // namespace

Tensor difference_target_forward(const DifferenceTargetPass& pass, const Tensor& h_below, const Tensor& t_upper,
                                 const Tensor& h_upper, const Tensor& weight, const Tensor& bias,
                                 const std::string& activation) {
  check_tensor(kOp, "h_below", h_below, 2, "(B, N_below)");
  check_tensor(kOp, "t_upper", t_upper, 2, "(B, N_upper)");
  check_tensor(kOp, "h_upper", h_upper, 2, "(B, N_upper)");
  check_tensor(kOp, "weight", weight, 2, "(N_below, N_upper)");
  check_tensor(kOp, "bias", bias, 1, "(N_below)");
  check_same_dtype_and_device(kOp, "t_upper", t_upper, "h_below", h_below);
  check_same_dtype_and_device(kOp, "h_upper", h_upper, "h_below", h_below);
  check_same_dtype_and_device(kOp, "weight", weight, "h_below", h_below);
  check_same_dtype_and_device(kOp, "bias", bias, "h_below", h_below);
  const int64_t batch = h_below.size(0), below = h_below.size(1), upper = t_upper.size(1);
  LOCALLEARN_CHECK(has_shape(t_upper, {batch, upper}) && has_shape(h_upper, {batch, upper}), kOp,
                   ": t_upper and h_upper must both be (B, N_upper) with B = ", batch, ", got ",
                   format_sizes(t_upper.sizes()), " and ", format_sizes(h_upper.sizes()));
  LOCALLEARN_CHECK(has_shape(weight, {below, upper}) && has_shape(bias, {below}), kOp,
                   ": weight and bias must be (N_below, N_upper) = (", below, ", ", upper, ") and (", below,
                   "), got ", format_sizes(weight.sizes()), " and ", format_sizes(bias.sizes()));
  const Activation sigma = parse_activation(activation);
  Tensor out = torch::stable::new_empty(h_below, {batch, below});
  if (out.numel() == 0) return out;
  const auto dense = [](const Tensor& t) { return torch::stable::contiguous(t); };
  pass.forward(dense(h_below), dense(t_upper), dense(h_upper), dense(weight), dense(bias), sigma, out);
  return out;
}

}  // namespace locallearn

STABLE_TORCH_LIBRARY_FRAGMENT(locallearn, m) {
  m.def(
      "difference_target(Tensor h_below, Tensor t_upper, Tensor h_upper, Tensor weight, Tensor bias,"
      " str activation) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(locallearn, CPU, m) {
  m.impl("difference_target", TORCH_BOX(&locallearn::forward_cpu));
}
