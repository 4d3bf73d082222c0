// CUDA pass of difference_target; checks and allocation live in csrc/ops/difference_target.cpp.
#include "../kernels/difference_target.cuh"
#include "../ops/difference_target.h"
#include "stable_cuda.h"

namespace locallearn {
namespace {

void forward_pass_cuda(const Tensor& h_below, const Tensor& t_upper, const Tensor& h_upper, const Tensor& weight,
                       const Tensor& bias, Activation activation, Tensor& out) {
  dispatch_floating(out.scalar_type(), "difference_target_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    STD_CUDA_CHECK(kernels::launch_difference_target<cuda_type<scalar_t>>(
        device_ptr<scalar_t>(h_below), device_ptr<scalar_t>(t_upper), device_ptr<scalar_t>(h_upper),
        device_ptr<scalar_t>(weight), device_ptr<scalar_t>(bias), h_below.size(0), h_below.size(1),
        t_upper.size(1), activation, mutable_device_ptr<scalar_t>(out), current_stream(out)));
  });
}

constexpr DifferenceTargetPass kCudaPass{forward_pass_cuda};

Tensor forward_cuda(Tensor h_below, Tensor t_upper, Tensor h_upper, Tensor weight, Tensor bias,
                    std::string activation) {
  const DeviceOf device_guard(h_below);
  return difference_target_forward(kCudaPass, h_below, t_upper, h_upper, weight, bias, activation);
}

}  // namespace
}  // namespace locallearn

STABLE_TORCH_LIBRARY_IMPL(locallearn, CUDA, m) {
  m.impl("difference_target", TORCH_BOX(&locallearn::forward_cuda));
}
