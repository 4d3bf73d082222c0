// The counter-based generator of direct feedback alignment's fixed random matrices
// B_ℓ (K x N), bit for bit the one of locallearn.ops.reference.feedback_columns, shared
// by the CPU implementation and the CUDA kernel. No torch headers.
//   B_ℓ[i, j] = (2·(u >> 8) + 1 − 2²⁴) · s,  u = mix(mix(i ⊕ s_row) ⊕ mix(j ⊕ s_col))
// with mix a bijective 32-bit hash, the salts from (seed, ℓ) and s = √(3/K) / 2²⁴
// computed in double and rounded to float, as Python computes it before torch
// multiplies the float32 integers by it in float32.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace locallearn {

// xor-shift, multiply, xor-shift, multiply, xor-shift, all mod 2³².
LL_HOST_DEVICE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x5BD1E995u;
  x ^= x >> 16;
  return x;
}

struct FeedbackGenerator {
  uint32_t row_salt, column_salt;
  float scale;
};

// The generator of layer ``layer``'s matrix with ``rows`` = K rows under ``seed`` (any int64).
inline FeedbackGenerator feedback_generator(int64_t seed, uint32_t layer, int64_t rows) {
  const uint64_t bits = static_cast<uint64_t>(seed);
  uint32_t key = mix32(static_cast<uint32_t>(bits) ^ mix32(static_cast<uint32_t>(bits >> 32) ^ 0x9E3779B9u));
  key = mix32(key ^ mix32(layer ^ 0x632BE5ABu));
  const double scale = std::sqrt(3.0 / static_cast<double>(rows)) / 16777216.0;
  return {mix32(key ^ 0x85EBCA6Bu), mix32(key ^ 0xC2B2AE35u), static_cast<float>(scale)};
}

// mix(index ⊕ salt), the hash of a row (with the row salt) or of a column (column salt).
LL_HOST_DEVICE uint32_t feedback_hash(int64_t index, uint32_t salt) {
  return mix32(static_cast<uint32_t>(index) ^ salt);
}

// B_ℓ[i, j] from the hashes of row i and column j: an odd integer in (−2²⁴, 2²⁴), exact
// in float, times the scale in float.
LL_HOST_DEVICE float feedback_value(uint32_t row_hash, uint32_t column_hash, float scale) {
  const int32_t odd = static_cast<int32_t>((mix32(row_hash ^ column_hash) >> 7) | 1u) - (1 << 24);
  return static_cast<float>(odd) * scale;
}

}  // namespace locallearn
