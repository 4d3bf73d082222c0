// The small SIMT GEMM tile of the difference-target and direct-feedback kernels: a
// block of 256 threads computes a 64 x 64 tile of C = A B, each thread a 4 x 4
// micro-tile strided by 16 (rows ty + 16 r, columns tx + 16 c, so a warp stores 16
// consecutive columns); the reduction dimension is staged 16 deep in shared memory, in
// acc_t. Blocks form a 1-d grid over the tiles, row tiles outermost. No torch headers.
#pragma once

#include <climits>
#include <cstdint>

#include "cuda_utils.cuh"

namespace locallearn::kernels::simt {

constexpr int kTile = 64;
constexpr int kDepth = 16;
constexpr int kThreads = 256;
constexpr int kGrid = 16;  // threads along each side of the tile
constexpr int kMicro = kTile / kGrid;
static_assert(kGrid * kGrid == kThreads);

// One staged operand, [depth][row of A or column of B], padded against bank conflicts.
template <typename acc_t>
using Staged = acc_t[kDepth][kTile + 1];

template <typename acc_t>
using Accumulators = acc_t[kMicro][kMicro];

struct Origin {
  int64_t row, column;
};

// The first row and column of this block's tile of a C with `columns` columns.
__device__ inline Origin tile_origin(int64_t columns) {
  const int64_t column_tiles = (columns + kTile - 1) / kTile;
  return {blockIdx.x / column_tiles * kTile, blockIdx.x % column_tiles * kTile};
}

// Row and column within the tile of this thread's micro-tile element (r, c).
__device__ inline int tile_row(int r) { return threadIdx.x / kGrid + kGrid * r; }
__device__ inline int tile_column(int c) { return threadIdx.x % kGrid + kGrid * c; }

// stage[k][m] = matrix[first + m][k0 + k] of a row-major (rows, depth) matrix, zero
// outside it. Threads sweep k, the contiguous index.
template <typename scalar_t>
__device__ void stage_rows(Staged<acc_type<scalar_t>>& stage, const scalar_t* __restrict__ matrix, int64_t rows,
                           int64_t depth, int64_t first, int64_t k0) {
  for (int e = threadIdx.x; e < kDepth * kTile; e += kThreads) {
    const int k = e % kDepth, m = e / kDepth;
    const int64_t row = first + m, column = k0 + k;
    stage[k][m] = row < rows && column < depth ? Numeric<scalar_t>::to_acc(matrix[row * depth + column])
                                               : acc_type<scalar_t>(0);
  }
}

// acc[r][c] += Σ_k a[k][tile_row(r)] · b[k][tile_column(c)] over the staged depth.
template <typename acc_t>
__device__ void multiply_staged(const Staged<acc_t>& a, const Staged<acc_t>& b, Accumulators<acc_t>& acc) {
#pragma unroll
  for (int k = 0; k < kDepth; ++k) {
    acc_t a_k[kMicro], b_k[kMicro];
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
      a_k[i] = a[k][tile_row(i)];
      b_k[i] = b[k][tile_column(i)];
    }
#pragma unroll
    for (int r = 0; r < kMicro; ++r) {
#pragma unroll
      for (int c = 0; c < kMicro; ++c) acc[r][c] += a_k[r] * b_k[c];
    }
  }
}

// store(row, column, r, c) for each element (r, c) of this thread's micro-tile that lies
// inside the (rows, columns) C.
template <typename Store>
__device__ __forceinline__ void store_tile(const Origin& at, int64_t rows, int64_t columns, const Store& store) {
#pragma unroll
  for (int r = 0; r < kMicro; ++r) {
    const int64_t row = at.row + tile_row(r);
#pragma unroll
    for (int c = 0; c < kMicro; ++c) {
      const int64_t column = at.column + tile_column(c);
      if (row < rows && column < columns) store(row, column, r, c);
    }
  }
}

// Blocks of the 1-d grid over the tiles of a (rows, columns) C, or 0 where there are
// more than a grid holds.
inline unsigned int tile_blocks(int64_t rows, int64_t columns) {
  const int64_t blocks = ceil_div(rows, kTile) * ceil_div(columns, kTile);
  return blocks <= INT_MAX ? static_cast<unsigned int>(blocks) : 0;
}

}  // namespace locallearn::kernels::simt
