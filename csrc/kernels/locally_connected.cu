// Kernels of the locally-connected 2-d op; see locally_connected.cuh and
// docs/locally_connected_kernels.md.
//
// Every pass is a batched GEMM with one small GEMM per output location l:
//   forward      C(b, o) = Σ_k  patch_l(x_b)[k] · W[l, o, k]      -> output[b, o, l] (+ bias[o, l])
//   weight_grad  C(o, k) = Σ_b  grad_out[b, o, l] · patch_l(x_b)[k] -> grad_weight[l, o, k]
//   transpose    C(b, k) = Σ_o  grad_out[b, o, l] · W[l, o, k]      -> grad_input[b, patch_l(k)] +=
// written as a "pass" (ForwardPass, WeightGradPass, TransposePass) that says how to
// fetch element (m, r) of A, element (r, n) of B and where C(m, n) goes, and one tile
// engine per arithmetic (SIMT for every dtype, WMMA tensor cores for half, bfloat16 and
// TF32) that runs the GEMMs: one thread block per (location, M tile, N tile), the
// reduction dimension R walked in tiles staged in shared memory. The patch operand is
// gathered from the input while a tile is staged (implicit im2col).
//
// The per-thread pieces (operand gathers, tile loads, the SIMT step, the epilogues)
// are __host__ __device__ so that a CPU emulation can run them between emulated
// barriers; only the kernels and the WMMA step are device-only.
#include <mma.h>

#include <climits>
#include <type_traits>

#include "cuda_utils.cuh"
#include "locally_connected.cuh"
#include "locally_connected_math.h"

namespace locallearn::kernels {
namespace {

// ----------------------------------------------------------------------------------
// Tile shapes. Both engines compute 64x64 tiles of C; they differ in threads and in
// how deep a reduction tile is staged.

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kSmemPad = 8;  // elements; keeps WMMA pointers 32-byte aligned and spreads banks

constexpr int kSimtThreads = 256;  // 16 x 16 threads, each a 4 x 4 micro-tile
constexpr int kSimtDepth = 16;
constexpr int kSimtMicro = 4;
constexpr int kSimtGrid = 16;
static_assert(kSimtGrid * kSimtGrid == kSimtThreads && kSimtGrid * kSimtMicro == kTileM &&
              kSimtGrid * kSimtMicro == kTileN);

constexpr int kMmaThreads = 128;  // 4 warps in 2 x 2, each a 32 x 32 block of 16 x 16 fragments
constexpr int kMmaDepth = 32;
constexpr int kMmaWarpTile = 32;
constexpr int kMmaFragments = kMmaWarpTile / 16;
static_assert((kTileM / kMmaWarpTile) * (kTileN / kMmaWarpTile) * 32 == kMmaThreads);

LL_HOST_DEVICE int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// #pragma unroll in code that the host compiler also sees (the __host__ __device__ helpers).
#if defined(__CUDA_ARCH__)
#define LL_UNROLL _Pragma("unroll")
#else
#define LL_UNROLL
#endif

// ----------------------------------------------------------------------------------
// Conversions. Numeric<T> (cuda_utils.cuh) is device-only; on the device these call
// it, on the host they mirror it for the CPU emulation of the tile code.

template <typename T>
LL_HOST_DEVICE acc_type<T> to_acc(T value) {
#if defined(__CUDA_ARCH__)
  return Numeric<T>::to_acc(value);
#else
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(value);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(value);
  } else {
    return value;
  }
#endif
}

template <typename T>
LL_HOST_DEVICE T from_acc(acc_type<T> value) {
#if defined(__CUDA_ARCH__)
  return Numeric<T>::from_acc(value);
#else
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(saturate(value, 65504.0f));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(saturate(value, 3.38953139e38f));
  } else {
    return value;
  }
#endif
}

// A staged operand element. It came from a tensor of the storage type, so the
// conversion to a half-precision shared-memory type is exact.
template <typename smem_t, typename acc_t>
LL_HOST_DEVICE smem_t to_smem(acc_t value) {
  if constexpr (std::is_same_v<smem_t, __half>) {
    return __float2half_rn(value);
  } else if constexpr (std::is_same_v<smem_t, __nv_bfloat16>) {
    return __float2bfloat16_rn(value);
  } else {
    return value;
  }
}

// ----------------------------------------------------------------------------------
// Window arithmetic.

// Offset of patch element k = (c, i, j) of location (oh, ow) within one (C_in, H, W)
// image, or -1 where the element is zero padding.
LL_HOST_DEVICE int64_t patch_offset(const LocallyConnectedShape& s, int64_t oh, int64_t ow, int k) {
  const int taps = static_cast<int>(s.kernel_h * s.kernel_w);
  const int kernel_w = static_cast<int>(s.kernel_w);
  const int c = k / taps;
  const int tap = k - c * taps;
  const int i = tap / kernel_w;
  const int j = tap - i * kernel_w;
  const int64_t plane = tap_input_offset(s, oh, ow, i, j);
  return plane < 0 ? -1 : c * s.in_h * s.in_w + plane;
}

struct Location {
  int64_t l, oh, ow;
};

// The sizes every pass derives from the shape.
struct Extents {
  int64_t patch;      // K = C_in * kh * kw
  int64_t locations;  // L = H_out * W_out
  int64_t image;      // C_in * H * W, one input image
};

inline Extents extents_of(const LocallyConnectedShape& s) {
  return {s.in_channels * s.kernel_h * s.kernel_w, s.out_h * s.out_w, s.in_channels * s.in_h * s.in_w};
}

// ----------------------------------------------------------------------------------
// Passes. Each names the GEMM dimensions (rows M, cols N, depth R), its locations,
// and for each operand which index the threads of a warp sweep when it is staged
// ("fast": the one along which global memory is closest to contiguous), a prepare
// step for that index (done once per thread and reduction tile: the patch offset of
// a column, a row pointer) and a fetch of one element, zero outside the tensor. The
// epilogue likewise prepares per output column n and stores per row m.

// C(b, o) = Σ_k patch_l(x_b)[k] · W[l, o, k];  output[b, o, l] = C(b, o) + bias[o, l].
template <typename scalar_t_>
struct ForwardPass {
  using scalar_t = scalar_t_;
  using acc_t = acc_type<scalar_t>;
  LocallyConnectedShape s;
  Extents e;
  const scalar_t* input;
  const scalar_t* weight;
  const scalar_t* bias;  // may be null
  scalar_t* output;

  LL_HOST_DEVICE int64_t rows() const { return s.batch; }
  LL_HOST_DEVICE int64_t cols() const { return s.out_channels; }
  LL_HOST_DEVICE int64_t depth() const { return e.patch; }
  LL_HOST_DEVICE int64_t locations() const { return e.locations; }
  LL_HOST_DEVICE Location location(int64_t index) const { return {index, index / s.out_w, index % s.out_w}; }

  // A(b, k): threads sweep k (neighbouring taps are neighbouring input columns).
  static constexpr bool kAFastIsDepth = true;
  LL_HOST_DEVICE int64_t a_prepare(const Location& at, int64_t k) const {
    return k < e.patch ? patch_offset(s, at.oh, at.ow, static_cast<int>(k)) : -1;
  }
  LL_HOST_DEVICE acc_t a_fetch(int64_t offset, int64_t b) const {
    return (offset >= 0 && b < s.batch) ? to_acc(input[b * e.image + offset]) : acc_t(0);
  }

  // B(k, o) = W[l, o, k]: threads sweep k (contiguous).
  static constexpr bool kBFastIsDepth = true;
  LL_HOST_DEVICE const scalar_t* b_prepare(const Location& at, int64_t k) const {
    return k < e.patch ? weight + at.l * s.out_channels * e.patch + k : nullptr;
  }
  LL_HOST_DEVICE acc_t b_fetch(const scalar_t* column, int64_t o) const {
    return (column != nullptr && o < s.out_channels) ? to_acc(column[o * e.patch]) : acc_t(0);
  }

  struct OutColumn {
    int64_t offset;  // o * L + l
    acc_t bias;
  };
  LL_HOST_DEVICE OutColumn out_prepare(const Location& at, int64_t o) const {
    const int64_t offset = o * e.locations + at.l;
    return {offset, bias != nullptr ? to_acc(bias[offset]) : acc_t(0)};
  }
  LL_HOST_DEVICE void out_store(const OutColumn& column, int64_t b, acc_t value) const {
    output[b * s.out_channels * e.locations + column.offset] = from_acc<scalar_t>(value + column.bias);
  }
};

// C(o, k) = Σ_b grad_out[b, o, l] · patch_l(x_b)[k];  grad_weight[l, o, k] = C(o, k).
// Each block owns its (l, o-tile, k-tile) of grad_weight and loops over the whole
// batch, so the result is written once, without atomics.
template <typename scalar_t_>
struct WeightGradPass {
  using scalar_t = scalar_t_;
  using acc_t = acc_type<scalar_t>;
  LocallyConnectedShape s;
  Extents e;
  const scalar_t* input;
  const scalar_t* grad_output;
  scalar_t* grad_weight;

  LL_HOST_DEVICE int64_t rows() const { return s.out_channels; }
  LL_HOST_DEVICE int64_t cols() const { return e.patch; }
  LL_HOST_DEVICE int64_t depth() const { return s.batch; }
  LL_HOST_DEVICE int64_t locations() const { return e.locations; }
  LL_HOST_DEVICE Location location(int64_t index) const { return {index, index / s.out_w, index % s.out_w}; }

  // A(o, b) = grad_out[b, o, l]: strided either way; threads sweep o.
  static constexpr bool kAFastIsDepth = false;
  LL_HOST_DEVICE const scalar_t* a_prepare(const Location& at, int64_t o) const {
    return o < s.out_channels ? grad_output + o * e.locations + at.l : nullptr;
  }
  LL_HOST_DEVICE acc_t a_fetch(const scalar_t* row, int64_t b) const {
    return (row != nullptr && b < s.batch) ? to_acc(row[b * s.out_channels * e.locations]) : acc_t(0);
  }

  // B(b, k) = patch_l(x_b)[k]: threads sweep k.
  static constexpr bool kBFastIsDepth = false;
  LL_HOST_DEVICE int64_t b_prepare(const Location& at, int64_t k) const {
    return k < e.patch ? patch_offset(s, at.oh, at.ow, static_cast<int>(k)) : -1;
  }
  LL_HOST_DEVICE acc_t b_fetch(int64_t offset, int64_t b) const {
    return (offset >= 0 && b < s.batch) ? to_acc(input[b * e.image + offset]) : acc_t(0);
  }

  LL_HOST_DEVICE int64_t out_prepare(const Location& at, int64_t k) const {
    return at.l * s.out_channels * e.patch + k;
  }
  LL_HOST_DEVICE void out_store(int64_t column, int64_t o, acc_t value) const {
    grad_weight[column + o * e.patch] = from_acc<scalar_t>(value);
  }
};

// C(b, k) = Σ_o grad_out[b, o, l] · W[l, o, k];  accumulator[b, patch_l(k)] += C(b, k).
// Patches of neighbouring locations overlap, so one launch covers only locations of
// one "colour": oh ≡ first_oh (mod step_h) and ow ≡ first_ow (mod step_w), with
// step * stride >= the window extent, whose patches are disjoint. Within a launch
// every accumulator element then has at most one writer (plain read-modify-write);
// the colours run one after another on the stream, in a fixed order.
template <typename scalar_t_>
struct TransposePass {
  using scalar_t = scalar_t_;
  using acc_t = acc_type<scalar_t>;
  LocallyConnectedShape s;
  Extents e;
  const scalar_t* grad_output;
  const scalar_t* weight;
  acc_t* accumulator;
  int64_t first_oh = 0, first_ow = 0, step_h = 1, step_w = 1;  // set per colour by the launcher
  int64_t colour_w = 0;                                           // locations of the colour per row
  int64_t colour_locations = 0;

  LL_HOST_DEVICE int64_t rows() const { return s.batch; }
  LL_HOST_DEVICE int64_t cols() const { return e.patch; }
  LL_HOST_DEVICE int64_t depth() const { return s.out_channels; }
  LL_HOST_DEVICE int64_t locations() const { return colour_locations; }
  LL_HOST_DEVICE Location location(int64_t index) const {
    const int64_t oh = first_oh + step_h * (index / colour_w);
    const int64_t ow = first_ow + step_w * (index % colour_w);
    return {oh * s.out_w + ow, oh, ow};
  }

  // A(b, o) = grad_out[b, o, l]: strided either way; threads sweep b.
  static constexpr bool kAFastIsDepth = false;
  LL_HOST_DEVICE const scalar_t* a_prepare(const Location& at, int64_t b) const {
    return b < s.batch ? grad_output + b * s.out_channels * e.locations + at.l : nullptr;
  }
  LL_HOST_DEVICE acc_t a_fetch(const scalar_t* row, int64_t o) const {
    return (row != nullptr && o < s.out_channels) ? to_acc(row[o * e.locations]) : acc_t(0);
  }

  // B(o, k) = W[l, o, k]: threads sweep k (contiguous).
  static constexpr bool kBFastIsDepth = false;
  LL_HOST_DEVICE const scalar_t* b_prepare(const Location& at, int64_t k) const {
    return k < e.patch ? weight + at.l * s.out_channels * e.patch + k : nullptr;
  }
  LL_HOST_DEVICE acc_t b_fetch(const scalar_t* column, int64_t o) const {
    return (column != nullptr && o < s.out_channels) ? to_acc(column[o * e.patch]) : acc_t(0);
  }

  LL_HOST_DEVICE int64_t out_prepare(const Location& at, int64_t k) const {
    return patch_offset(s, at.oh, at.ow, static_cast<int>(k));
  }
  LL_HOST_DEVICE void out_store(int64_t offset, int64_t b, acc_t value) const {
    if (offset >= 0) accumulator[b * e.image + offset] += value;
  }
};

// ----------------------------------------------------------------------------------
// Tile scheduling and staging, shared by both engines.

struct TileCoord {
  int64_t location_index, m0, n0;
};

// Tiles are numbered M tile fastest, then N tile, then location: the blocks resident
// together share a location's operands (W[l] across M tiles, the batch rows across N
// tiles) and neighbouring locations (overlapping patches, the same output sectors).
LL_HOST_DEVICE TileCoord tile_coord(int64_t tile, int64_t rows, int64_t cols) {
  const int64_t m_tiles = div_up(rows, kTileM);
  const int64_t n_tiles = div_up(cols, kTileN);
  const int64_t m_tile = tile % m_tiles;
  const int64_t rest = tile / m_tiles;
  return {rest / n_tiles, m_tile * kTileM, (rest % n_tiles) * kTileN};
}

template <typename Pass>
int64_t tile_count(const Pass& pass) {
  return div_up(pass.rows(), kTileM) * div_up(pass.cols(), kTileN) * pass.locations();
}

// Shared-memory operand tiles, both stored reduction-major: a[r][m] = A(m0+m, r0+r)
// (for WMMA a col_major A with leading dimension kTileM + kSmemPad) and
// b[r][n] = B(r0+r, n0+n) (a row_major B).
template <typename smem_t, int kDepth>
struct OperandTiles {
  static constexpr int kLdA = kTileM + kSmemPad;
  static constexpr int kLdB = kTileN + kSmemPad;
  smem_t a[kDepth][kLdA];
  smem_t b[kDepth][kLdB];
};

template <typename Pass>
struct OperandA {
  const Pass& pass;
  const Location& at;
  static constexpr bool kFastIsDepth = Pass::kAFastIsDepth;
  LL_HOST_DEVICE auto prepare(int64_t fast) const { return pass.a_prepare(at, fast); }
  template <typename Prepared>
  LL_HOST_DEVICE auto fetch(const Prepared& prepared, int64_t slow) const { return pass.a_fetch(prepared, slow); }
};

template <typename Pass>
struct OperandB {
  const Pass& pass;
  const Location& at;
  static constexpr bool kFastIsDepth = Pass::kBFastIsDepth;
  LL_HOST_DEVICE auto prepare(int64_t fast) const { return pass.b_prepare(at, fast); }
  template <typename Prepared>
  LL_HOST_DEVICE auto fetch(const Prepared& prepared, int64_t slow) const { return pass.b_fetch(prepared, slow); }
};

// tile[r][x] = operand at (x: index0 + x, r: depth0 + r) for x < kExtent, r < kDepth,
// zero outside the operand; the share of thread `tid` of kThreads. Threads sweep the
// operand's fast index, so each thread prepares one fast index per call.
template <int kThreads, int kExtent, int kDepth, int kLd, typename smem_t, typename Operand>
LL_HOST_DEVICE void stage_tile(smem_t (*tile)[kLd], const Operand& operand, int64_t index0, int64_t depth0,
                               int tid) {
  if constexpr (Operand::kFastIsDepth) {
    static_assert(kThreads % kDepth == 0 && kExtent % (kThreads / kDepth) == 0, "tile does not split");
    const int r = tid % kDepth;
    const auto prepared = operand.prepare(depth0 + r);
    for (int x = tid / kDepth; x < kExtent; x += kThreads / kDepth) {
      tile[r][x] = to_smem<smem_t>(operand.fetch(prepared, index0 + x));
    }
  } else {
    static_assert(kThreads % kExtent == 0 && kDepth % (kThreads / kExtent) == 0, "tile does not split");
    const int x = tid % kExtent;
    const auto prepared = operand.prepare(index0 + x);
    for (int r = tid / kExtent; r < kDepth; r += kThreads / kExtent) {
      tile[r][x] = to_smem<smem_t>(operand.fetch(prepared, depth0 + r));
    }
  }
}

template <int kThreads, typename Pass, typename smem_t, int kDepth>
LL_HOST_DEVICE void stage_operands(OperandTiles<smem_t, kDepth>& tiles, const Pass& pass, const Location& at,
                                   const TileCoord& t, int64_t r0, int tid) {
  stage_tile<kThreads, kTileM, kDepth, OperandTiles<smem_t, kDepth>::kLdA>(tiles.a, OperandA<Pass>{pass, at}, t.m0,
                                                                          r0, tid);
  stage_tile<kThreads, kTileN, kDepth, OperandTiles<smem_t, kDepth>::kLdB>(tiles.b, OperandB<Pass>{pass, at}, t.n0,
                                                                          r0, tid);
}

// ----------------------------------------------------------------------------------
// SIMT engine: 256 threads as 16 x 16; thread (ty, tx) owns C rows ty + 16 i and
// columns tx + 16 j (i, j < 4), so the shared-memory reads of a warp are broadcasts
// (A) or 16 consecutive words (B) and the stores of a warp sweep 16 columns.

template <typename acc_t>
using SimtTiles = OperandTiles<acc_t, kSimtDepth>;

template <typename acc_t>
LL_HOST_DEVICE void simt_accumulate(const SimtTiles<acc_t>& tiles, acc_t (&acc)[kSimtMicro][kSimtMicro], int tid) {
  const int tx = tid % kSimtGrid;
  const int ty = tid / kSimtGrid;
  LL_UNROLL
  for (int r = 0; r < kSimtDepth; ++r) {
    acc_t a[kSimtMicro], b[kSimtMicro];
    LL_UNROLL
    for (int i = 0; i < kSimtMicro; ++i) {
      a[i] = tiles.a[r][ty + kSimtGrid * i];
      b[i] = tiles.b[r][tx + kSimtGrid * i];
    }
    LL_UNROLL
    for (int i = 0; i < kSimtMicro; ++i) {
      LL_UNROLL
      for (int j = 0; j < kSimtMicro; ++j) acc[i][j] += a[i] * b[j];
    }
  }
}

template <typename Pass, typename acc_t>
LL_HOST_DEVICE void simt_store(const Pass& pass, const Location& at, const TileCoord& t,
                               const acc_t (&acc)[kSimtMicro][kSimtMicro], int tid) {
  const int tx = tid % kSimtGrid;
  const int ty = tid / kSimtGrid;
  for (int j = 0; j < kSimtMicro; ++j) {
    const int64_t n = t.n0 + tx + kSimtGrid * j;
    if (n >= pass.cols()) break;
    const auto column = pass.out_prepare(at, n);
    for (int i = 0; i < kSimtMicro; ++i) {
      const int64_t m = t.m0 + ty + kSimtGrid * i;
      if (m >= pass.rows()) break;
      pass.out_store(column, m, acc[i][j]);
    }
  }
}

template <typename Pass>
__global__ void __launch_bounds__(kSimtThreads) lc_simt_kernel(const Pass pass, int64_t tiles) {
  using acc_t = typename Pass::acc_t;
  __shared__ SimtTiles<acc_t> smem;
  const int tid = threadIdx.x;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const TileCoord t = tile_coord(tile, pass.rows(), pass.cols());
    const Location at = pass.location(t.location_index);
    acc_t acc[kSimtMicro][kSimtMicro] = {};
    for (int64_t r0 = 0; r0 < pass.depth(); r0 += kSimtDepth) {
      stage_operands<kSimtThreads>(smem, pass, at, t, r0, tid);
      __syncthreads();
      simt_accumulate(smem, acc, tid);
      __syncthreads();
    }
    simt_store(pass, at, t, acc, tid);
  }
}

// ----------------------------------------------------------------------------------
// Tensor-core engine (nvcuda::wmma, fp32 accumulators): 128 threads as 2 x 2 warps,
// each a 32 x 32 block of C in 2 x 2 fragments of 16 x 16. The accumulators go
// through shared memory (c, row-major) to the pass's epilogue.

template <typename scalar_t>
struct MmaTraits;  // smem_t: staged operand type; fragment_t: WMMA element type; kK: fragment depth

template <>
struct MmaTraits<__half> {
  using smem_t = __half;
  using fragment_t = __half;
  static constexpr int kK = 16;
};

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <>
struct MmaTraits<__nv_bfloat16> {
  using smem_t = __nv_bfloat16;
  using fragment_t = __nv_bfloat16;
  static constexpr int kK = 16;
};

template <>
struct MmaTraits<float> {  // TF32: staged as float, rounded to tf32 in the fragments
  using smem_t = float;
  using fragment_t = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;
};
#endif

// Whether this compilation pass has the WMMA types of scalar_t (bfloat16 and TF32
// need sm_80; the launcher never picks them on older devices).
template <typename scalar_t>
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
constexpr bool kMmaCompiled = std::is_same_v<scalar_t, __half>;
#else
constexpr bool kMmaCompiled = true;
#endif

template <typename scalar_t>
constexpr bool kHasMmaPath = !std::is_same_v<scalar_t, double>;

constexpr int kLdC = kTileN + 4;

template <typename smem_t>
union alignas(128) MmaShared {
  OperandTiles<smem_t, kMmaDepth> operands;
  float c[kTileM][kLdC];
};

template <typename Pass>
LL_HOST_DEVICE void mma_store(const Pass& pass, const Location& at, const TileCoord& t, const float (*c)[kLdC],
                              int tid) {
  static_assert(kMmaThreads % kTileN == 0, "epilogue does not split");
  const int x = tid % kTileN;
  const int64_t n = t.n0 + x;
  if (n >= pass.cols()) return;
  const auto column = pass.out_prepare(at, n);
  for (int y = tid / kTileN; y < kTileM; y += kMmaThreads / kTileN) {
    const int64_t m = t.m0 + y;
    if (m >= pass.rows()) break;
    pass.out_store(column, m, c[y][x]);
  }
}

template <typename Pass>
__device__ void mma_tiles(const Pass& pass, int64_t tiles) {
  namespace wmma = nvcuda::wmma;
  using Traits = MmaTraits<typename Pass::scalar_t>;
  using smem_t = typename Traits::smem_t;
  using fragment_t = typename Traits::fragment_t;
  constexpr int kK = Traits::kK;
  constexpr int kLdA = OperandTiles<smem_t, kMmaDepth>::kLdA;
  constexpr int kLdB = OperandTiles<smem_t, kMmaDepth>::kLdB;
  using FragmentA = wmma::fragment<wmma::matrix_a, 16, 16, kK, fragment_t, wmma::col_major>;
  using FragmentB = wmma::fragment<wmma::matrix_b, 16, 16, kK, fragment_t, wmma::row_major>;
  using FragmentC = wmma::fragment<wmma::accumulator, 16, 16, kK, float>;

  __shared__ MmaShared<smem_t> smem;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int warp_m = (warp / (kTileN / kMmaWarpTile)) * kMmaWarpTile;
  const int warp_n = (warp % (kTileN / kMmaWarpTile)) * kMmaWarpTile;

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const TileCoord t = tile_coord(tile, pass.rows(), pass.cols());
    const Location at = pass.location(t.location_index);
    FragmentC acc[kMmaFragments][kMmaFragments];
#pragma unroll
    for (int i = 0; i < kMmaFragments; ++i) {
#pragma unroll
      for (int j = 0; j < kMmaFragments; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    }
    for (int64_t r0 = 0; r0 < pass.depth(); r0 += kMmaDepth) {
      stage_operands<kMmaThreads>(smem.operands, pass, at, t, r0, tid);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kMmaDepth; kk += kK) {
        FragmentA a[kMmaFragments];
        FragmentB b[kMmaFragments];
#pragma unroll
        for (int i = 0; i < kMmaFragments; ++i) {
          wmma::load_matrix_sync(a[i], &smem.operands.a[kk][warp_m + 16 * i], kLdA);
          wmma::load_matrix_sync(b[i], &smem.operands.b[kk][warp_n + 16 * i], kLdB);
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
          if constexpr (std::is_same_v<smem_t, float>) {
            for (int e = 0; e < a[i].num_elements; ++e) a[i].x[e] = wmma::__float_to_tf32(a[i].x[e]);
            for (int e = 0; e < b[i].num_elements; ++e) b[i].x[e] = wmma::__float_to_tf32(b[i].x[e]);
          }
#endif
        }
#pragma unroll
        for (int i = 0; i < kMmaFragments; ++i) {
#pragma unroll
          for (int j = 0; j < kMmaFragments; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
      }
      __syncthreads();
    }
    // The operand tiles are dead (barrier above, or never written): c may overwrite them.
#pragma unroll
    for (int i = 0; i < kMmaFragments; ++i) {
#pragma unroll
      for (int j = 0; j < kMmaFragments; ++j) {
        wmma::store_matrix_sync(&smem.c[warp_m + 16 * i][warp_n + 16 * j], acc[i][j], kLdC, wmma::mem_row_major);
      }
    }
    __syncthreads();
    mma_store(pass, at, t, smem.c, tid);
    __syncthreads();  // c is read before the next tile stages operands over it
  }
}

template <typename Pass>
__global__ void __launch_bounds__(kMmaThreads) lc_mma_kernel(const Pass pass, int64_t tiles) {
  if constexpr (kMmaCompiled<typename Pass::scalar_t>) {
    mma_tiles(pass, tiles);
  } else {
    __trap();
  }
}

template <typename acc_t, typename scalar_t>
__global__ void convert_kernel(const acc_t* __restrict__ source, int64_t n, scalar_t* __restrict__ target) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    target[idx] = Numeric<scalar_t>::from_acc(source[idx]);
  }
}

// ----------------------------------------------------------------------------------
// Host side.

// Whether the tensor-core engine serves scalar_t under `policy`: half on sm_70+,
// bfloat16 on sm_80+, float only as TF32 when allowed and on sm_80+.
template <typename scalar_t>
bool use_tensor_cores(const TensorCorePolicy& policy) {
  if constexpr (kHasMmaPath<scalar_t>) {
    if (!policy.enabled || (std::is_same_v<scalar_t, float> && !policy.allow_tf32)) return false;
    return policy.compute_capability_major >= (std::is_same_v<scalar_t, __half> ? 7 : 8);
  }
  return false;
}

// The kernels index patch elements with int (patch_offset) and everything else with int64_t.
inline bool indexable(const LocallyConnectedShape& s) {
  const Extents e = extents_of(s);
  return e.patch <= INT_MAX && s.kernel_h * s.kernel_w <= INT_MAX;
}

// Calls launch(colour) for each colour of locations in a fixed order, stopping at the
// first error. Locations step_h rows (or step_w columns) apart have disjoint patches:
// step * stride >= dilation * (kernel - 1) + 1, the extent of a window.
template <typename scalar_t, typename Launch>
cudaError_t for_each_colour(TransposePass<scalar_t> pass, const Launch& launch) {
  const LocallyConnectedShape& s = pass.s;
  pass.step_h = div_up(s.dilation_h * (s.kernel_h - 1) + 1, s.stride_h);
  pass.step_w = div_up(s.dilation_w * (s.kernel_w - 1) + 1, s.stride_w);
  for (int64_t first_oh = 0; first_oh < pass.step_h && first_oh < s.out_h; ++first_oh) {
    for (int64_t first_ow = 0; first_ow < pass.step_w && first_ow < s.out_w; ++first_ow) {
      pass.first_oh = first_oh;
      pass.first_ow = first_ow;
      pass.colour_w = div_up(s.out_w - first_ow, pass.step_w);
      pass.colour_locations = div_up(s.out_h - first_oh, pass.step_h) * pass.colour_w;
      if (const cudaError_t status = launch(pass); status != cudaSuccess) return status;
    }
  }
  return cudaSuccess;
}

template <typename Pass>
cudaError_t launch_tiles(const Pass& pass, bool tensor_cores, cudaStream_t stream) {
  const int64_t tiles = tile_count(pass);
  if (tiles == 0) return cudaSuccess;
  const unsigned int blocks = static_cast<unsigned int>(tiles < INT_MAX ? tiles : INT_MAX);
  if constexpr (kHasMmaPath<typename Pass::scalar_t>) {
    if (tensor_cores) {
      lc_mma_kernel<Pass><<<blocks, kMmaThreads, 0, stream>>>(pass, tiles);
      return cudaGetLastError();
    }
  }
  lc_simt_kernel<Pass><<<blocks, kSimtThreads, 0, stream>>>(pass, tiles);
  return cudaGetLastError();
}

}  // namespace

template <typename scalar_t, typename acc_t>
cudaError_t launch_locally_connected2d(const LocallyConnectedShape& shape, const scalar_t* input,
                                       const scalar_t* weight, const scalar_t* bias, scalar_t* output,
                                       const TensorCorePolicy& policy, cudaStream_t stream) {
  static_assert(std::is_same_v<acc_t, acc_type<scalar_t>>);
  if (!indexable(shape)) return cudaErrorInvalidValue;
  const bool tensor_cores = use_tensor_cores<scalar_t>(policy);
  const ForwardPass<scalar_t> pass{shape, extents_of(shape), input, weight, bias, output};
  return launch_tiles(pass, tensor_cores, stream);
}

template <typename scalar_t, typename acc_t>
cudaError_t launch_locally_connected2d_transpose(const LocallyConnectedShape& shape, const scalar_t* grad_output,
                                                 const scalar_t* weight, acc_t* accumulator, scalar_t* grad_input,
                                                 const TensorCorePolicy& policy, cudaStream_t stream) {
  static_assert(std::is_same_v<acc_t, acc_type<scalar_t>>);
  if (!indexable(shape)) return cudaErrorInvalidValue;
  const bool tensor_cores = use_tensor_cores<scalar_t>(policy);
  const TransposePass<scalar_t> pass{shape, extents_of(shape), grad_output, weight, accumulator};
  const cudaError_t status = for_each_colour(
      pass, [&](const TransposePass<scalar_t>& colour) { return launch_tiles(colour, tensor_cores, stream); });
  if (status != cudaSuccess) return status;
  if (static_cast<const void*>(accumulator) != static_cast<const void*>(grad_input)) {
    constexpr int kThreads = 256;
    const int64_t n = shape.batch * extents_of(shape).image;
    if (n > 0) {
      convert_kernel<acc_t, scalar_t>
          <<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(accumulator, n, grad_input);
    }
  }
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t launch_locally_connected2d_weight_grad(const LocallyConnectedShape& shape, const scalar_t* input,
                                                   const scalar_t* grad_output, scalar_t* grad_weight,
                                                   const TensorCorePolicy& policy, cudaStream_t stream) {
  static_assert(std::is_same_v<acc_t, acc_type<scalar_t>>);
  if (!indexable(shape)) return cudaErrorInvalidValue;
  const bool tensor_cores = use_tensor_cores<scalar_t>(policy);
  const WeightGradPass<scalar_t> pass{shape, extents_of(shape), input, grad_output, grad_weight};
  return launch_tiles(pass, tensor_cores, stream);
}

#define LOCALLEARN_INSTANTIATE(scalar_t)                                                                        \
  template cudaError_t launch_locally_connected2d<scalar_t, acc_type<scalar_t>>(                                \
      const LocallyConnectedShape&, const scalar_t*, const scalar_t*, const scalar_t*, scalar_t*,               \
      const TensorCorePolicy&, cudaStream_t);                                                                   \
  template cudaError_t launch_locally_connected2d_transpose<scalar_t, acc_type<scalar_t>>(                      \
      const LocallyConnectedShape&, const scalar_t*, const scalar_t*, acc_type<scalar_t>*, scalar_t*,           \
      const TensorCorePolicy&, cudaStream_t);                                                                   \
  template cudaError_t launch_locally_connected2d_weight_grad<scalar_t, acc_type<scalar_t>>(                    \
      const LocallyConnectedShape&, const scalar_t*, const scalar_t*, scalar_t*, const TensorCorePolicy&,       \
      cudaStream_t);

LOCALLEARN_FOR_EACH_STORAGE_TYPE(LOCALLEARN_INSTANTIATE)
#undef LOCALLEARN_INSTANTIATE

#undef LL_UNROLL

}  // namespace locallearn::kernels
