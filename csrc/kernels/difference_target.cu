// Kernel of DTP's difference target; see difference_target.cuh and simt_tile.cuh.
#include "cuda_utils.cuh"
#include "difference_target.cuh"
#include "simt_tile.cuh"

namespace locallearn::kernels {
namespace {

template <typename scalar_t>
__global__ void __launch_bounds__(simt::kThreads)
    difference_target_kernel(const scalar_t* __restrict__ h_below, const scalar_t* __restrict__ t_upper,
                             const scalar_t* __restrict__ h_upper, const scalar_t* __restrict__ weight,
                             const scalar_t* __restrict__ bias, int64_t batch, int64_t below, int64_t upper,
                             Activation activation, scalar_t* __restrict__ out) {
  using acc_t = acc_type<scalar_t>;
  __shared__ simt::Staged<acc_t> top, bottom, inverse;
  const simt::Origin at = simt::tile_origin(below);
  simt::Accumulators<acc_t> top_sum = {}, bottom_sum = {};
  for (int64_t k0 = 0; k0 < upper; k0 += simt::kDepth) {
    simt::stage_rows(top, t_upper, batch, upper, at.row, k0);
    simt::stage_rows(bottom, h_upper, batch, upper, at.row, k0);
    simt::stage_rows(inverse, weight, below, upper, at.column, k0);  // Vᵀ(k, i) = V[i, k]
    __syncthreads();
    simt::multiply_staged(top, inverse, top_sum);
    simt::multiply_staged(bottom, inverse, bottom_sum);
    __syncthreads();
  }
  simt::store_tile(at, batch, below, [&](int64_t row, int64_t column, int r, int c) {
    const int64_t index = row * below + column;
    const acc_t below_value = Numeric<scalar_t>::to_acc(h_below[index]);
    const acc_t bias_value = Numeric<scalar_t>::to_acc(bias[column]);
    out[index] = Numeric<scalar_t>::from_acc(
        difference_target_value(activation, below_value, top_sum[r][c], bottom_sum[r][c], bias_value));
  });
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_difference_target(const scalar_t* h_below, const scalar_t* t_upper, const scalar_t* h_upper,
                                     const scalar_t* weight, const scalar_t* bias, int64_t batch, int64_t below,
                                     int64_t upper, Activation activation, scalar_t* out, cudaStream_t stream) {
  const unsigned int blocks = simt::tile_blocks(batch, below);
  if (blocks == 0) return cudaErrorInvalidConfiguration;
  difference_target_kernel<scalar_t><<<blocks, simt::kThreads, 0, stream>>>(h_below, t_upper, h_upper, weight, bias,
                                                                            batch, below, upper, activation, out);
  return cudaGetLastError();
}

#define LOCALLEARN_INSTANTIATE(scalar_t)                                                                      \
  template cudaError_t launch_difference_target<scalar_t>(const scalar_t*, const scalar_t*, const scalar_t*, \
                                                          const scalar_t*, const scalar_t*, int64_t, int64_t, \
                                                          int64_t, Activation, scalar_t*, cudaStream_t);

LOCALLEARN_FOR_EACH_STORAGE_TYPE(LOCALLEARN_INSTANTIATE)
#undef LOCALLEARN_INSTANTIATE

}  // namespace locallearn::kernels
