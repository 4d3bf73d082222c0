// CUDA pass of direct_feedback; checks and allocation live in csrc/ops/direct_feedback.cpp.
#include "../kernels/direct_feedback.cuh"
#include "../ops/direct_feedback.h"
#include "stable_cuda.h"

namespace locallearn {
namespace {

void forward_pass_cuda(const Tensor& error, const FeedbackGenerator& generator, Tensor& out) {
  dispatch_floating(out.scalar_type(), "direct_feedback_cuda", [&](auto zero) {
    using scalar_t = decltype(zero);
    STD_CUDA_CHECK(kernels::launch_direct_feedback<cuda_type<scalar_t>>(
        device_ptr<scalar_t>(error), error.size(0), error.size(1), out.size(1), generator,
        mutable_device_ptr<scalar_t>(out), current_stream(out)));
  });
}

constexpr DirectFeedbackPass kCudaPass{forward_pass_cuda};

Tensor forward_cuda(Tensor error, int64_t seed, int64_t layer, int64_t num_features) {
  const DeviceOf device_guard(error);
  return direct_feedback_forward(kCudaPass, error, seed, layer, num_features);
}

}  // namespace
}  // namespace locallearn

STABLE_TORCH_LIBRARY_IMPL(locallearn, CUDA, m) {
  m.impl("direct_feedback", TORCH_BOX(&locallearn::forward_cuda));
}
