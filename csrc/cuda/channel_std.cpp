// CUDA passes of channel_std; checks and allocation live in csrc/ops/channel_std.cpp.
#include "../kernels/channel_std.cuh"
#include "../ops/channel_std.h"
#include "stable_cuda.h"

namespace locallearn {
namespace {

void forward_pass_cuda(const Tensor& rows, Tensor& std_out, Tensor& mean_out) {
  dispatch_floating(rows.scalar_type(), "channel_std_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    STD_CUDA_CHECK((kernels::launch_channel_std<cuda_type<scalar_t>, acc_t>(
        device_ptr<scalar_t>(rows), rows.size(0), rows.size(1), std_out.mutable_data_ptr<acc_t>(),
        mean_out.mutable_data_ptr<acc_t>(), current_stream(rows))));
  });
}

void backward_pass_cuda(const Tensor& grad_std, const Tensor& rows, const Tensor& mean, const Tensor& deviation,
                        Tensor& grad_rows) {
  dispatch_floating(rows.scalar_type(), "channel_std_backward_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    STD_CUDA_CHECK((kernels::launch_channel_std_backward<cuda_type<scalar_t>, acc_t>(
        grad_std.const_data_ptr<acc_t>(), device_ptr<scalar_t>(rows), mean.const_data_ptr<acc_t>(),
        deviation.const_data_ptr<acc_t>(), rows.size(0), rows.size(1), mutable_device_ptr<scalar_t>(grad_rows),
        current_stream(rows))));
  });
}

constexpr ChannelStdPasses kCudaPasses{forward_pass_cuda, backward_pass_cuda};

std::tuple<Tensor, Tensor> forward_cuda(Tensor input) {
  const DeviceOf device_guard(input);
  return channel_std_forward(kCudaPasses, input);
}

Tensor backward_cuda(Tensor grad_std, Tensor input, Tensor mean, Tensor deviation) {
  const DeviceOf device_guard(input);
  return channel_std_backward(kCudaPasses, grad_std, input, mean, deviation);
}

}  // namespace
}  // namespace locallearn

STABLE_TORCH_LIBRARY_IMPL(locallearn, CUDA, m) {
  m.impl("channel_std", TORCH_BOX(&locallearn::forward_cuda));
  m.impl("channel_std_backward", TORCH_BOX(&locallearn::backward_cuda));
}
