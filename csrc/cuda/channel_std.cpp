// CUDA passes of channel_std; checks and allocation live in csrc/ops/channel_std.cpp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../kernels/channel_std.cuh"
#include "../ops/channel_std.h"
#include "cuda_types.h"

namespace locallearn {
namespace {

void forward_pass_cuda(const at::Tensor& rows, at::Tensor& std_out, at::Tensor& mean_out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "channel_std_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK((kernels::launch_channel_std<cuda_type<scalar_t>, acc_t>(
        device_ptr<scalar_t>(rows), rows.size(0), rows.size(1), std_out.mutable_data_ptr<acc_t>(),
        mean_out.mutable_data_ptr<acc_t>(), current_stream())));
  });
}

void backward_pass_cuda(const at::Tensor& grad_std, const at::Tensor& rows, const at::Tensor& mean,
                        const at::Tensor& deviation, at::Tensor& grad_rows) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "channel_std_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK((kernels::launch_channel_std_backward<cuda_type<scalar_t>, acc_t>(
        grad_std.const_data_ptr<acc_t>(), device_ptr<scalar_t>(rows), mean.const_data_ptr<acc_t>(),
        deviation.const_data_ptr<acc_t>(), rows.size(0), rows.size(1), mutable_device_ptr<scalar_t>(grad_rows),
        current_stream())));
  });
}

constexpr ChannelStdPasses kCudaPasses{forward_pass_cuda, backward_pass_cuda};

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& input) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return channel_std_forward(kCudaPasses, input);
}

at::Tensor backward_cuda(const at::Tensor& grad_std, const at::Tensor& input, const at::Tensor& mean,
                         const at::Tensor& deviation) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return channel_std_backward(kCudaPasses, grad_std, input, mean, deviation);
}

}  // namespace
}  // namespace locallearn

TORCH_LIBRARY_IMPL(locallearn, CUDA, m) {
  m.impl("channel_std", &locallearn::forward_cuda);
  m.impl("channel_std_backward", &locallearn::backward_cuda);
}
