#pragma once
// The reference quantizer of SPEC §6.1 for one matrix: float32 to BF16 (round to nearest even) and
// to Q8 (per block of B weights along a row). quantize.hpp re-writes whole files with it; a
// session whose compute is bf16 or int8 (compute.hpp) converts a model's matrices with it, and
// int8 quantizes its activations with quantize_q8's rule.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/weight_matrix.hpp"
#include "tconst/error.hpp"

namespace tconst {
inline namespace TCONST_ABI {

/// The BF16 bits nearest x, ties to even; a NaN stays a (quiet) NaN, never rounds to infinity.
inline uint16_t float_to_bf16(float x) {
  return detail::float_to_bf16_bits(x);
}

/// Q8 of w[rows, cols] with block size `block` (SPEC §6.1): q[rows, cols] and
/// scales[rows, ceil(cols / block)]. Per block, s = max|w| / 127 in float32; q = w / s in float32,
/// rounded to the nearest integer (ties to even); a block whose s is 0 (all zero, or so small that
/// the division underflows) stores q = 0. Throws on a NaN or infinite weight.
inline void quantize_q8(const float* w, int64_t rows, int64_t cols, int64_t block, int8_t* q,
                        float* scales) {
  const int64_t blocks = (cols + block - 1) / block;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * block, c1 = std::min(cols, c0 + block);
      float amax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) {
        const float v = w[r * cols + c];
        if (!std::isfinite(v)) throw Error("cannot quantize a NaN or infinite weight to Q8");
        amax = std::max(amax, std::fabs(v));
      }
      const float s = amax / 127.0f;
      scales[r * blocks + b] = s;
      for (int64_t c = c0; c < c1; ++c) {
        const float v = s > 0.0f ? std::nearbyint(w[r * cols + c] / s) : 0.0f;
        q[r * cols + c] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
      }
    }
  }
}

}  // namespace TCONST_ABI
}  // namespace tconst
