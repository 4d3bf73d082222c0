// CUDA passes of the similarity-matching loss: checks and allocation happen in
// the device-generic orchestration (csrc/ops/similarity_matching.cpp); this
// file only maps tensors to the launchers in csrc/kernels/.
#include "../kernels/similarity_matching.cuh"
#include "../ops/similarity_matching.h"
#include "stable_cuda.h"

namespace locallearn {
namespace {

void normalize_rows_cuda(const Tensor& features, Tensor& normalized, Tensor& row_stats) {
  dispatch_floating(features.scalar_type(), "normalize_rows_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    STD_CUDA_CHECK((kernels::launch_normalize_rows<cuda_type<scalar_t>, acc_t>(
        device_ptr<scalar_t>(features), features.size(0), features.size(1),
        mutable_device_ptr<scalar_t>(normalized), row_stats.mutable_data_ptr<acc_t>(), current_stream(features))));
  });
}

void residual_cuda(const Tensor& gram, const std::optional<Tensor>& labels, int64_t num_classes,
                   const std::optional<Tensor>& target, Tensor& residual, Tensor& row_stats) {
  dispatch_floating(residual.scalar_type(), "residual_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    STD_CUDA_CHECK((kernels::launch_similarity_residual<cuda_type<scalar_t>, acc_t>(
        gram.const_data_ptr<acc_t>(), gram.size(0), labels ? labels->const_data_ptr<int64_t>() : nullptr,
        num_classes, target ? target->const_data_ptr<acc_t>() : nullptr, mutable_device_ptr<scalar_t>(residual),
        row_stats.mutable_data_ptr<acc_t>(), current_stream(gram))));
  });
}

void gradient_cuda(const Tensor& grad_loss, const Tensor& product, const Tensor& normalized,
                   const Tensor& row_stats, Tensor& grad_features) {
  dispatch_floating(normalized.scalar_type(), "gradient_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    STD_CUDA_CHECK((kernels::launch_similarity_gradient<cuda_type<scalar_t>, acc_t>(
        grad_loss.const_data_ptr<acc_t>(), product.const_data_ptr<acc_t>(), device_ptr<scalar_t>(normalized),
        row_stats.const_data_ptr<acc_t>(), normalized.size(0), normalized.size(1),
        mutable_device_ptr<scalar_t>(grad_features), current_stream(normalized))));
  });
}

constexpr SimilarityMatchingPasses kCudaPasses{normalize_rows_cuda, residual_cuda, gradient_cuda};

std::tuple<Tensor, Tensor, Tensor, Tensor> forward_cuda(Tensor features, std::optional<Tensor> labels,
                                                        std::optional<Tensor> target, int64_t num_classes) {
  const DeviceOf device_guard(features);
  return similarity_matching_forward(kCudaPasses, features, labels, target, num_classes);
}

Tensor backward_cuda(Tensor grad_loss, Tensor normalized, Tensor residual, Tensor row_stats) {
  const DeviceOf device_guard(normalized);
  return similarity_matching_backward(kCudaPasses, grad_loss, normalized, residual, row_stats);
}

}  // namespace
}  // namespace locallearn

STABLE_TORCH_LIBRARY_IMPL(locallearn, CUDA, m) {
  m.impl("similarity_matching_loss", TORCH_BOX(&locallearn::forward_cuda));
  m.impl("similarity_matching_loss_backward", TORCH_BOX(&locallearn::backward_cuda));
}
