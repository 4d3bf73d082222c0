// Schema, device-generic checks and the CPU pass of direct_feedback; the generator is
// shared with the CUDA kernel (csrc/kernels/direct_feedback_math.h).
//
// The CPU pass walks the columns in blocks of kColumnBlock, one block per thread at a
// time: it generates the block's K x kColumnBlock tile of B_ℓ into a per-thread opmath
// buffer and multiplies the error by it (aten::mm.out), so B_ℓ is never held whole.
#include "direct_feedback.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace locallearn {
namespace {

constexpr const char* kOp = "direct_feedback";
constexpr int64_t kColumnBlock = 256;
constexpr int64_t kIndexLimit = int64_t(1) << 32;  // rows and columns are hashed as 32-bit values

void forward_pass_cpu(const Tensor& error, const FeedbackGenerator& generator, Tensor& out) {
  const int64_t batch = error.size(0), classes = error.size(1), features = out.size(1);
  const Tensor errors = torch::stable::to(error, opmath_dtype(error.scalar_type()));
  dispatch_floating(out.scalar_type(), "direct_feedback_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    scalar_t* projected = out.mutable_data_ptr<scalar_t>();
    const int64_t blocks = (features + kColumnBlock - 1) / kColumnBlock;
    torch::stable::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint32_t> column_hashes(kColumnBlock);
      std::vector<acc_t> tile(classes * kColumnBlock);
      std::vector<acc_t> buffer(std::is_same_v<scalar_t, acc_t> ? 0 : batch * kColumnBlock);
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kColumnBlock, width = std::min(kColumnBlock, features - first);
        for (int64_t j = 0; j < width; ++j) column_hashes[j] = feedback_hash(first + j, generator.column_salt);
        for (int64_t i = 0; i < classes; ++i) {
          const uint32_t row_hash = feedback_hash(i, generator.row_salt);
          for (int64_t j = 0; j < width; ++j) {
            tile[i * width + j] = static_cast<acc_t>(feedback_value(row_hash, column_hashes[j], generator.scale));
          }
        }
        // Straight into the output's columns in opmath storage, else into `buffer` and
        // converted by one (vectorised) torch copy.
        Tensor columns = matrix(projected + first, batch, width, features);
        Tensor product = std::is_same_v<scalar_t, acc_t> ? columns : matrix(buffer.data(), batch, width, width);
        mm_out(product, errors, matrix(tile.data(), classes, width, width));
        if constexpr (!std::is_same_v<scalar_t, acc_t>) torch::stable::copy_(columns, product);
      }
    });
  });
}

constexpr DirectFeedbackPass kCpuPass{forward_pass_cpu};

Tensor forward_cpu(Tensor error, int64_t seed, int64_t layer, int64_t num_features) {
  return direct_feedback_forward(kCpuPass, error, seed, layer, num_features);
}

}  // namespace

Tensor direct_feedback_forward(const DirectFeedbackPass& pass, const Tensor& error, int64_t seed, int64_t layer,
                               int64_t num_features) {
  check_tensor(kOp, "error", error, 2, "(B, K)");
  LOCALLEARN_CHECK(error.size(1) >= 1 && error.size(1) < kIndexLimit, kOp,
                   ": error must have 1 <= K < 2^32 columns, got ", format_sizes(error.sizes()));
  LOCALLEARN_CHECK(layer >= 0 && layer < kIndexLimit, kOp, ": layer must be in [0, 2^32), got ", layer);
  LOCALLEARN_CHECK(num_features >= 0 && num_features < kIndexLimit, kOp, ": num_features must be in [0, 2^32), got ",
                   num_features);
  Tensor out = torch::stable::new_empty(error, {error.size(0), num_features});
  if (out.numel() == 0) return out;
  const FeedbackGenerator generator = feedback_generator(seed, static_cast<uint32_t>(layer), error.size(1));
  pass.forward(torch::stable::contiguous(error), generator, out);
  return out;
}

}  // namespace locallearn

STABLE_TORCH_LIBRARY_FRAGMENT(locallearn, m) {
  m.def("direct_feedback(Tensor error, int seed, int layer, int num_features) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(locallearn, CPU, m) {
  m.impl("direct_feedback", TORCH_BOX(&locallearn::forward_cpu));
}
