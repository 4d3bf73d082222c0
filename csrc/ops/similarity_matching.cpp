// Schema, device-generic orchestration and CPU passes of the similarity-matching
// loss (seed 004, eqs. (4)-(5)). The element formulas live in
// csrc/kernels/similarity_matching_math.h, shared with the CUDA kernels.
#include "similarity_matching.h"

#include <cmath>

#include "../kernels/similarity_matching_math.h"
#include "storage_cast.h"

namespace locallearn {
namespace {

constexpr const char* kForward = "similarity_matching_loss";
constexpr const char* kBackward = "similarity_matching_loss_backward";

void check_forward_args(const Tensor& features, const std::optional<Tensor>& labels,
                        const std::optional<Tensor>& target, int64_t num_classes) {
  LOCALLEARN_CHECK(features.dim() == 2, "similarity_matching_loss: features must be (B, D), got ",
                    format_sizes(features.sizes()));
  LOCALLEARN_CHECK(is_supported_float(features.scalar_type()),
                    "similarity_matching_loss: features must be float32, float64, float16 or bfloat16, got ",
                    features.scalar_type());
  const int64_t batch = features.size(0);
  LOCALLEARN_CHECK(batch >= 2, "similarity_matching_loss: features needs a batch of at least 2, got ", batch);
  LOCALLEARN_CHECK(features.size(1) >= 1, "similarity_matching_loss: features needs at least one column");
  LOCALLEARN_CHECK(labels.has_value() != target.has_value(),
                    "similarity_matching_loss: give exactly one of labels and target");
  if (labels) {
    LOCALLEARN_CHECK(labels->dim() == 1 && labels->size(0) == batch,
                      "similarity_matching_loss: labels must be (B,) = (", batch, ",), got ", format_sizes(labels->sizes()));
    LOCALLEARN_CHECK(is_integral(labels->scalar_type()),
                      "similarity_matching_loss: labels must be integers, got ", labels->scalar_type());
    check_same_device(kForward, "labels", *labels, "features", features);
    LOCALLEARN_CHECK(num_classes >= 1, "similarity_matching_loss: num_classes must be >= 1, got ", num_classes);
  } else {
    LOCALLEARN_CHECK(target->dim() == 2 && target->size(0) == batch && target->size(1) == batch,
                      "similarity_matching_loss: target must be (B, B) = (", batch, ", ", batch, "), got ",
                      format_sizes(target->sizes()));
    check_floating(kForward, "target", *target);
    check_same_device(kForward, "target", *target, "features", features);
  }
}

void check_backward_args(const Tensor& grad_loss, const Tensor& normalized, const Tensor& residual,
                         const Tensor& row_stats) {
  LOCALLEARN_CHECK(grad_loss.dim() == 0, "similarity_matching_loss_backward: grad_loss must be 0-dim");
  check_floating(kBackward, "grad_loss", grad_loss);
  check_same_device(kBackward, "grad_loss", grad_loss, "normalized", normalized);
  check_same_device(kBackward, "residual", residual, "normalized", normalized);
  check_same_device(kBackward, "row_stats", row_stats, "normalized", normalized);
  LOCALLEARN_CHECK(normalized.dim() == 2 && is_supported_float(normalized.scalar_type()),
                    "similarity_matching_loss_backward: normalized must be a floating (B, D) matrix");
  const int64_t batch = normalized.size(0);
  LOCALLEARN_CHECK(has_shape(residual, {batch, batch}) &&
                        residual.scalar_type() == normalized.scalar_type(),
                    "similarity_matching_loss_backward: residual must be (B, B) in the dtype of normalized");
  LOCALLEARN_CHECK(has_shape(row_stats, {batch, kRowStatsWidth}) &&
                        row_stats.scalar_type() == opmath_dtype(normalized.scalar_type()),
                    "similarity_matching_loss_backward: row_stats must be (B, ", int64_t(kRowStatsWidth),
                    ") in the opmath dtype of normalized");
}

// a @ b with the result in opmath dtype: cuBLAS accumulates half-precision
// operands in fp32 and writes fp32; on the CPU the exact upcast does the same.
Tensor matmul_opmath(const Tensor& a, const Tensor& b) {
  const ScalarType opmath = opmath_dtype(a.scalar_type());
  Tensor out = torch::stable::new_empty(a, {a.size(0), b.size(1)}, opmath);
  if (a.scalar_type() == opmath) {
    mm_out(out, a, b);
  } else if (a.is_cuda()) {
    mm_out(out, a, b, opmath);
  } else {
    mm_out(out, torch::stable::to(a, opmath), torch::stable::to(b, opmath));
  }
  return out;
}

// ---- CPU passes -------------------------------------------------------------

void normalize_rows_cpu(const Tensor& features, Tensor& normalized, Tensor& row_stats) {
  const int64_t rows = features.size(0), cols = features.size(1);
  dispatch_floating(features.scalar_type(), "normalize_rows_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* x = features.const_data_ptr<scalar_t>();
    scalar_t* z = normalized.mutable_data_ptr<scalar_t>();
    acc_t* stats = row_stats.mutable_data_ptr<acc_t>();
    torch::stable::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* xr = x + row * cols;
        double sum = 0;
        for (int64_t c = 0; c < cols; ++c) sum += static_cast<double>(xr[c]);
        const acc_t mean = static_cast<acc_t>(sum / cols);
        double squares = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const double d = static_cast<double>(static_cast<acc_t>(xr[c]) - mean);
          squares += d * d;
        }
        const acc_t norm = static_cast<acc_t>(std::sqrt(squares));
        const acc_t inv = inverse_norm(norm);
        for (int64_t c = 0; c < cols; ++c) {
          z[row * cols + c] = to_storage<scalar_t>((static_cast<acc_t>(xr[c]) - mean) * inv);
        }
        stats[row * kRowStatsWidth + kInverseNorm] = inv;
        stats[row * kRowStatsWidth + kNorm] = norm;
      }
    });
  });
}

void residual_cpu(const Tensor& gram, const std::optional<Tensor>& labels, int64_t num_classes,
                  const std::optional<Tensor>& target, Tensor& residual, Tensor& row_stats) {
  const int64_t batch = gram.size(0);
  dispatch_floating(residual.scalar_type(), "residual_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const acc_t* g = gram.const_data_ptr<acc_t>();
    const int64_t* y = labels ? labels->const_data_ptr<int64_t>() : nullptr;
    const acc_t* t = target ? target->const_data_ptr<acc_t>() : nullptr;
    scalar_t* e = residual.mutable_data_ptr<scalar_t>();
    acc_t* stats = row_stats.mutable_data_ptr<acc_t>();
    const acc_t same_class = y ? label_similarity<acc_t>(true, num_classes) : acc_t(0);
    const acc_t other_class = y ? label_similarity<acc_t>(false, num_classes) : acc_t(0);
    torch::stable::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t g_ii = self_similarity(stats[i * kRowStatsWidth + kNorm], stats[i * kRowStatsWidth + kInverseNorm]);
        double row_loss = 0;
        for (int64_t j = 0; j < batch; ++j) {
          const int64_t ij = i * batch + j;
          const acc_t s_ij = clamp_similarity(j == i ? g_ii : g[ij]);
          if (y) {
            const acc_t difference = s_ij - (y[i] == y[j] ? same_class : other_class);
            row_loss += static_cast<double>(difference) * difference;
            e[ij] = to_storage<scalar_t>(difference);
          } else {
            const acc_t difference = s_ij - t[ij];
            row_loss += static_cast<double>(difference) * difference;
            e[ij] = to_storage<scalar_t>(s_ij - symmetric_target(t[ij], t[j * batch + i]));
          }
        }
        stats[i * kRowStatsWidth + kRowLoss] = static_cast<acc_t>(row_loss);
      }
    });
  });
}

void gradient_cpu(const Tensor& grad_loss, const Tensor& product, const Tensor& normalized,
                  const Tensor& row_stats, Tensor& grad_features) {
  const int64_t batch = normalized.size(0), dim = normalized.size(1);
  dispatch_floating(normalized.scalar_type(), "gradient_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const acc_t scale = *grad_loss.const_data_ptr<acc_t>() * acc_t(4) / (acc_t(batch) * acc_t(batch));
    const acc_t* p = product.const_data_ptr<acc_t>();
    const scalar_t* z = normalized.const_data_ptr<scalar_t>();
    const acc_t* stats = row_stats.const_data_ptr<acc_t>();
    scalar_t* out = grad_features.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t* p_i = p + i * dim;
        const scalar_t* z_i = z + i * dim;
        double dot = 0, p_sum = 0, z_sum = 0;
        for (int64_t c = 0; c < dim; ++c) {
          const double z_c = static_cast<acc_t>(z_i[c]);
          dot += p_i[c] * z_c;
          p_sum += p_i[c];
          z_sum += z_c;
        }
        const acc_t inv = stats[i * kRowStatsWidth + kInverseNorm];
        const acc_t radial = radial_coefficient(static_cast<acc_t>(dot), stats[i * kRowStatsWidth + kNorm]);
        const acc_t p_mean = static_cast<acc_t>(p_sum / dim), z_mean = static_cast<acc_t>(z_sum / dim);
        for (int64_t c = 0; c < dim; ++c) {
          out[i * dim + c] = to_storage<scalar_t>(
              similarity_gradient(scale, inv, p_i[c] - p_mean, radial, static_cast<acc_t>(z_i[c]) - z_mean));
        }
      }
    });
  });
}

constexpr SimilarityMatchingPasses kCpuPasses{normalize_rows_cpu, residual_cpu, gradient_cpu};

std::tuple<Tensor, Tensor, Tensor, Tensor> forward_cpu(Tensor features, std::optional<Tensor> labels,
                                                       std::optional<Tensor> target, int64_t num_classes) {
  return similarity_matching_forward(kCpuPasses, features, labels, target, num_classes);
}

Tensor backward_cpu(Tensor grad_loss, Tensor normalized, Tensor residual, Tensor row_stats) {
  return similarity_matching_backward(kCpuPasses, grad_loss, normalized, residual, row_stats);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> similarity_matching_forward(const SimilarityMatchingPasses& passes,
                                                                       const Tensor& features,
                                                                       const std::optional<Tensor>& labels,
                                                                       const std::optional<Tensor>& target,
                                                                       int64_t num_classes) {
  check_forward_args(features, labels, target, num_classes);
  const Tensor x = torch::stable::contiguous(features);
  const int64_t batch = x.size(0), dim = x.size(1);
  const ScalarType opmath = opmath_dtype(x.scalar_type());

  Tensor normalized = torch::stable::new_empty(x, {batch, dim});
  Tensor row_stats = torch::stable::new_empty(x, {batch, kRowStatsWidth}, opmath);
  passes.normalize_rows(x, normalized, row_stats);

  const Tensor gram = matmul_opmath(normalized, torch::stable::transpose(normalized, 0, 1));
  Tensor residual = torch::stable::new_empty(x, {batch, batch});
  const std::optional<Tensor> labels64 =
      labels ? std::optional<Tensor>(torch::stable::contiguous(torch::stable::to(*labels, ScalarType::Long)))
             : std::nullopt;
  const std::optional<Tensor> target_opmath =
      target ? std::optional<Tensor>(torch::stable::contiguous(torch::stable::to(*target, opmath))) : std::nullopt;
  passes.residual(gram, labels64, num_classes, target_opmath, residual, row_stats);

  // loss = sum of the row losses / B^2, as 0 - (-1/B^2) * sum (subtract is the stable op with a scalar).
  const Tensor total = torch::stable::sum(torch::stable::select(row_stats, 1, kRowLoss));
  Tensor loss = torch::stable::subtract(torch::stable::new_zeros(total, {}), total,
                                        -1.0 / (static_cast<double>(batch) * batch));
  return {loss, normalized, residual, row_stats};
}

Tensor similarity_matching_backward(const SimilarityMatchingPasses& passes, const Tensor& grad_loss,
                                    const Tensor& normalized, const Tensor& residual, const Tensor& row_stats) {
  check_backward_args(grad_loss, normalized, residual, row_stats);
  const Tensor z = torch::stable::contiguous(normalized);
  const Tensor product = matmul_opmath(torch::stable::contiguous(residual), z);
  Tensor grad_features = torch::stable::new_empty(z, z.sizes());
  passes.gradient(torch::stable::to(grad_loss, row_stats.scalar_type()), product, z,
                  torch::stable::contiguous(row_stats), grad_features);
  return grad_features;
}

}  // namespace locallearn

STABLE_TORCH_LIBRARY_FRAGMENT(locallearn, m) {
  m.def(
      "similarity_matching_loss(Tensor features, Tensor? labels, Tensor? target, int num_classes)"
      " -> (Tensor loss, Tensor normalized, Tensor residual, Tensor row_stats)");
  m.def(
      "similarity_matching_loss_backward(Tensor grad_loss, Tensor normalized, Tensor residual, Tensor row_stats)"
      " -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(locallearn, CPU, m) {
  m.impl("similarity_matching_loss", TORCH_BOX(&locallearn::forward_cpu));
  m.impl("similarity_matching_loss_backward", TORCH_BOX(&locallearn::backward_cpu));
}
