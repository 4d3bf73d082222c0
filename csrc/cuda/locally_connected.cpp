// CUDA passes of the locally-connected 2-d op: checks and allocation happen in the
// device-generic orchestration (csrc/ops/locally_connected.cpp); this file maps
// tensors to the launchers in csrc/kernels/locally_connected.cuh.
#include <type_traits>
#include <vector>

#include "../kernels/locally_connected.cuh"
#include "../ops/locally_connected.h"
#include "stable_cuda.h"
#include "tensor_cores.h"

namespace locallearn {
namespace {

kernels::LocallyConnectedShape kernel_shape(const LocallyConnectedGeometry& g) {
  return {g.batch,    g.in_channels, g.in_h,     g.in_w,     g.out_channels, g.out_h,      g.out_w,     g.kernel_h,
          g.kernel_w, g.stride_h,    g.stride_w, g.pad_h,    g.pad_w,        g.dilation_h, g.dilation_w};
}

void forward_pass_cuda(const LocallyConnectedGeometry& g, const Tensor& input, const Tensor& weight,
                       const std::optional<Tensor>& bias, Tensor& output, bool allow_tf32) {
  dispatch_floating(input.scalar_type(), "locally_connected2d_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    // Named first: the comma between the template arguments would split STD_CUDA_CHECK's argument.
    const cudaError_t status = kernels::launch_locally_connected2d<cuda_type<scalar_t>, acc_t>(
        kernel_shape(g), device_ptr<scalar_t>(input), device_ptr<scalar_t>(weight),
        bias ? device_ptr<scalar_t>(*bias) : nullptr, mutable_device_ptr<scalar_t>(output),
        tensor_core_policy(input.get_device_index(), allow_tf32), current_stream(input));
    STD_CUDA_CHECK(status);
  });
}

void transpose_pass_cuda(const LocallyConnectedGeometry& g, const Tensor& grad_output, const Tensor& weight,
                         Tensor& grad_input, bool allow_tf32) {
  dispatch_floating(grad_output.scalar_type(), "locally_connected2d_transpose_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    // Overlapping patches are summed in acc_t: in grad_input itself (zero-filled
    // by the orchestration) for float and double, in a zeroed fp32 buffer that
    // the launcher converts into grad_input for half and bfloat16.
    Tensor accumulator = std::is_same_v<scalar_t, acc_t>
                             ? grad_input
                             : torch::stable::new_zeros(grad_input, grad_input.sizes(), ScalarType::Float);
    const cudaError_t status = kernels::launch_locally_connected2d_transpose<cuda_type<scalar_t>, acc_t>(
        kernel_shape(g), device_ptr<scalar_t>(grad_output), device_ptr<scalar_t>(weight),
        accumulator.mutable_data_ptr<acc_t>(), mutable_device_ptr<scalar_t>(grad_input),
        tensor_core_policy(grad_output.get_device_index(), allow_tf32), current_stream(grad_output));
    STD_CUDA_CHECK(status);
  });
}

void weight_grad_pass_cuda(const LocallyConnectedGeometry& g, const Tensor& input, const Tensor& grad_output,
                           Tensor& grad_weight, bool allow_tf32) {
  dispatch_floating(input.scalar_type(), "locally_connected2d_weight_grad_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const cudaError_t status = kernels::launch_locally_connected2d_weight_grad<cuda_type<scalar_t>, acc_t>(
        kernel_shape(g), device_ptr<scalar_t>(input), device_ptr<scalar_t>(grad_output),
        mutable_device_ptr<scalar_t>(grad_weight), tensor_core_policy(input.get_device_index(), allow_tf32),
        current_stream(input));
    STD_CUDA_CHECK(status);
  });
}

constexpr LocallyConnectedPasses kCudaPasses{forward_pass_cuda, transpose_pass_cuda, weight_grad_pass_cuda};

using Ints = std::vector<int64_t>;

Tensor forward_cuda(Tensor input, Tensor weight, std::optional<Tensor> bias, Ints kernel_size, Ints stride,
                    Ints padding, Ints dilation, bool allow_tf32) {
  const DeviceOf device_guard(input);
  return locally_connected2d_forward(kCudaPasses, input, weight, bias, kernel_size, stride, padding, dilation,
                                     allow_tf32);
}

Tensor transpose_cuda(Tensor grad_output, Tensor weight, Ints input_size, Ints kernel_size, Ints stride,
                      Ints padding, Ints dilation, bool allow_tf32) {
  const DeviceOf device_guard(grad_output);
  return locally_connected2d_transpose(kCudaPasses, grad_output, weight, input_size, kernel_size, stride, padding,
                                       dilation, allow_tf32);
}

Tensor weight_grad_cuda(Tensor input, Tensor grad_output, Ints kernel_size, Ints stride, Ints padding,
                        Ints dilation, bool allow_tf32) {
  const DeviceOf device_guard(input);
  return locally_connected2d_weight_grad(kCudaPasses, input, grad_output, kernel_size, stride, padding, dilation,
                                         allow_tf32);
}

}  // namespace
}  // namespace locallearn

STABLE_TORCH_LIBRARY_IMPL(locallearn, CUDA, m) {
  m.impl("locally_connected2d", TORCH_BOX(&locallearn::forward_cuda));
  m.impl("locally_connected2d_transpose", TORCH_BOX(&locallearn::transpose_cuda));
  m.impl("locally_connected2d_weight_grad", TORCH_BOX(&locallearn::weight_grad_cuda));
}
