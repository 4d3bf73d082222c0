// CUDA passes of the locally-connected 2-d op: checks and allocation happen in the
// device-generic orchestration (csrc/ops/locally_connected.cpp); this file maps
// tensors to the launchers in csrc/kernels/locally_connected.cuh.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "../kernels/locally_connected.cuh"
#include "../ops/locally_connected.h"
#include "cuda_types.h"
#include "tensor_cores.h"

namespace locallearn {
namespace {

kernels::LocallyConnectedShape kernel_shape(const LocallyConnectedGeometry& g) {
  return {g.batch,    g.in_channels, g.in_h,     g.in_w,     g.out_channels, g.out_h,      g.out_w,     g.kernel_h,
          g.kernel_w, g.stride_h,    g.stride_w, g.pad_h,    g.pad_w,        g.dilation_h, g.dilation_w};
}

void forward_pass_cuda(const LocallyConnectedGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& bias, at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "locally_connected2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Named first: the comma between the template arguments would split C10_CUDA_CHECK's argument.
    const cudaError_t status = kernels::launch_locally_connected2d<cuda_type<scalar_t>, acc_t>(
        kernel_shape(g), device_ptr<scalar_t>(input), device_ptr<scalar_t>(weight),
        bias.defined() ? device_ptr<scalar_t>(bias) : nullptr, mutable_device_ptr<scalar_t>(output),
        tensor_core_policy(input.device()), current_stream());
    C10_CUDA_CHECK(status);
  });
}

void transpose_pass_cuda(const LocallyConnectedGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                         at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "locally_connected2d_transpose_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        // Overlapping patches are summed in acc_t: in grad_input itself (zero-filled
        // by the orchestration) for float and double, in a zeroed fp32 buffer that
        // the launcher converts into grad_input for half and bfloat16.
        at::Tensor accumulator =
            std::is_same_v<scalar_t, acc_t>
                ? grad_input
                : at::zeros(grad_input.sizes(), grad_input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const cudaError_t status = kernels::launch_locally_connected2d_transpose<cuda_type<scalar_t>, acc_t>(
            kernel_shape(g), device_ptr<scalar_t>(grad_output), device_ptr<scalar_t>(weight),
            accumulator.mutable_data_ptr<acc_t>(), mutable_device_ptr<scalar_t>(grad_input),
            tensor_core_policy(grad_output.device()), current_stream());
        C10_CUDA_CHECK(status);
      });
}

void weight_grad_pass_cuda(const LocallyConnectedGeometry& g, const at::Tensor& input, const at::Tensor& grad_output,
                           at::Tensor& grad_weight) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "locally_connected2d_weight_grad_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const cudaError_t status = kernels::launch_locally_connected2d_weight_grad<cuda_type<scalar_t>, acc_t>(
            kernel_shape(g), device_ptr<scalar_t>(input), device_ptr<scalar_t>(grad_output),
            mutable_device_ptr<scalar_t>(grad_weight), tensor_core_policy(input.device()), current_stream());
        C10_CUDA_CHECK(status);
      });
}

constexpr LocallyConnectedPasses kCudaPasses{forward_pass_cuda, transpose_pass_cuda, weight_grad_pass_cuda};

at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                        c10::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return locally_connected2d_forward(kCudaPasses, input, weight, bias, kernel_size, stride, padding, dilation);
}

at::Tensor transpose_cuda(const at::Tensor& grad_output, const at::Tensor& weight, c10::IntArrayRef input_size,
                          c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                          c10::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  return locally_connected2d_transpose(kCudaPasses, grad_output, weight, input_size, kernel_size, stride, padding,
                                       dilation);
}

at::Tensor weight_grad_cuda(const at::Tensor& input, const at::Tensor& grad_output, c10::IntArrayRef kernel_size,
                            c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return locally_connected2d_weight_grad(kCudaPasses, input, grad_output, kernel_size, stride, padding, dilation);
}

}  // namespace
}  // namespace locallearn

TORCH_LIBRARY_IMPL(locallearn, CUDA, m) {
  m.impl("locally_connected2d", &locallearn::forward_cuda);
  m.impl("locally_connected2d_transpose", &locallearn::transpose_cuda);
  m.impl("locally_connected2d_weight_grad", &locallearn::weight_grad_cuda);
}
