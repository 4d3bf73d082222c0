// Kernel of direct feedback alignment's generated projection; see direct_feedback.cuh.
#include "cuda_utils.cuh"
#include "direct_feedback.cuh"
#include "simt_tile.cuh"

namespace locallearn::kernels {
namespace {

template <typename scalar_t>
__global__ void __launch_bounds__(simt::kThreads)
    direct_feedback_kernel(const scalar_t* __restrict__ error, int64_t batch, int64_t classes, int64_t features,
                           FeedbackGenerator generator, scalar_t* __restrict__ out) {
  using acc_t = acc_type<scalar_t>;
  __shared__ simt::Staged<acc_t> errors, feedback;
  __shared__ uint32_t column_hashes[simt::kTile];
  const simt::Origin at = simt::tile_origin(features);
  if (threadIdx.x < simt::kTile) {
    column_hashes[threadIdx.x] = feedback_hash(at.column + threadIdx.x, generator.column_salt);
  }
  __syncthreads();
  simt::Accumulators<acc_t> sum = {};
  for (int64_t k0 = 0; k0 < classes; k0 += simt::kDepth) {
    simt::stage_rows(errors, error, batch, classes, at.row, k0);
    for (int e = threadIdx.x; e < simt::kDepth * simt::kTile; e += simt::kThreads) {
      const int k = e / simt::kTile, n = e % simt::kTile;
      const int64_t row = k0 + k;
      feedback[k][n] = row < classes && at.column + n < features
                           ? acc_t(feedback_value(feedback_hash(row, generator.row_salt), column_hashes[n],
                                                  generator.scale))
                           : acc_t(0);
    }
    __syncthreads();
    simt::multiply_staged(errors, feedback, sum);
    __syncthreads();
  }
  simt::store_tile(at, batch, features, [&](int64_t row, int64_t column, int r, int c) {
    out[row * features + column] = Numeric<scalar_t>::from_acc(sum[r][c]);
  });
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_direct_feedback(const scalar_t* error, int64_t batch, int64_t classes, int64_t features,
                                   FeedbackGenerator generator, scalar_t* out, cudaStream_t stream) {
  const unsigned int blocks = simt::tile_blocks(batch, features);
  if (blocks == 0) return cudaErrorInvalidConfiguration;
  direct_feedback_kernel<scalar_t>
      <<<blocks, simt::kThreads, 0, stream>>>(error, batch, classes, features, generator, out);
  return cudaGetLastError();
}

#define LOCALLEARN_INSTANTIATE(scalar_t)                                                                  \
  template cudaError_t launch_direct_feedback<scalar_t>(const scalar_t*, int64_t, int64_t, int64_t,      \
                                                        FeedbackGenerator, scalar_t*, cudaStream_t);

LOCALLEARN_FOR_EACH_STORAGE_TYPE(LOCALLEARN_INSTANTIATE)
#undef LOCALLEARN_INSTANTIATE

}  // namespace locallearn::kernels
