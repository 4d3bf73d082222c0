// CUDA passes of the similarity-matching loss: checks and allocation happen in
// the device-generic orchestration (csrc/ops/similarity_matching.cpp); this
// file only maps tensors to the launchers in csrc/kernels/.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../kernels/similarity_matching.cuh"
#include "../ops/similarity_matching.h"
#include "cuda_types.h"

namespace locallearn {
namespace {

void normalize_rows_cuda(const at::Tensor& features, at::Tensor& normalized, at::Tensor& row_stats) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "normalize_rows_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK((kernels::launch_normalize_rows<cuda_type<scalar_t>, acc_t>(
        device_ptr<scalar_t>(features), features.size(0), features.size(1),
        mutable_device_ptr<scalar_t>(normalized), row_stats.mutable_data_ptr<acc_t>(), current_stream())));
  });
}

void residual_cuda(const at::Tensor& gram, const std::optional<at::Tensor>& labels, int64_t num_classes,
                   const std::optional<at::Tensor>& target, at::Tensor& residual, at::Tensor& row_stats) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, residual.scalar_type(), "residual_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK((kernels::launch_similarity_residual<cuda_type<scalar_t>, acc_t>(
        gram.const_data_ptr<acc_t>(), gram.size(0), labels ? labels->const_data_ptr<int64_t>() : nullptr,
        num_classes, target ? target->const_data_ptr<acc_t>() : nullptr, mutable_device_ptr<scalar_t>(residual),
        row_stats.mutable_data_ptr<acc_t>(), current_stream())));
  });
}

void gradient_cuda(const at::Tensor& grad_loss, const at::Tensor& product, const at::Tensor& normalized,
                   const at::Tensor& row_stats, at::Tensor& grad_features) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, normalized.scalar_type(), "gradient_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    C10_CUDA_CHECK((kernels::launch_similarity_gradient<cuda_type<scalar_t>, acc_t>(
        grad_loss.const_data_ptr<acc_t>(), product.const_data_ptr<acc_t>(), device_ptr<scalar_t>(normalized),
        row_stats.const_data_ptr<acc_t>(), normalized.size(0), normalized.size(1),
        mutable_device_ptr<scalar_t>(grad_features), current_stream())));
  });
}

constexpr SimilarityMatchingPasses kCudaPasses{normalize_rows_cuda, residual_cuda, gradient_cuda};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& features,
                                                                        const std::optional<at::Tensor>& labels,
                                                                        const std::optional<at::Tensor>& target,
                                                                        int64_t num_classes) {
  const c10::cuda::CUDAGuard device_guard(features.device());
  return similarity_matching_forward(kCudaPasses, features, labels, target, num_classes);
}

at::Tensor backward_cuda(const at::Tensor& grad_loss, const at::Tensor& normalized, const at::Tensor& residual,
                         const at::Tensor& row_stats) {
  const c10::cuda::CUDAGuard device_guard(normalized.device());
  return similarity_matching_backward(kCudaPasses, grad_loss, normalized, residual, row_stats);
}

}  // namespace
}  // namespace locallearn

TORCH_LIBRARY_IMPL(locallearn, CUDA, m) {
  m.impl("similarity_matching_loss", &locallearn::forward_cuda);
  m.impl("similarity_matching_loss_backward", &locallearn::backward_cuda);
}
