#pragma once
// WeightMatrix: a read-only [rows, cols] row-major weight matrix (PyTorch [out, in] layout) in one
// of the formats of SPEC §6.1 (float32, BF16, or Q8 with per-block float32 scales), as a float
// model keeps it in memory. The products over it (quant_linear.hpp) widen the weights in
// registers; dequantize_row() is the scalar definition every kernel is tested against.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "tconst/compute.hpp"
#include "tconst/detail/abi.hpp"

namespace tconst {
inline namespace TCONST_ABI {
/// How a model file stores a weight matrix (SPEC §6.1): float32, BF16, or Q8 with per-block
/// float32 scales.
enum class WeightFormat : uint8_t { f32, bf16, q8 };

inline const char* to_string(WeightFormat f) {
  switch (f) {
    case WeightFormat::f32:
      return "f32";
    case WeightFormat::bf16:
      return "bf16";
    case WeightFormat::q8:
      return "q8";
  }
  return "?";
}

namespace detail {

using tconst::WeightFormat;

struct WeightMatrix {
  WeightFormat format = WeightFormat::f32;
  const void* data = nullptr;     // [rows, cols]: float (f32), uint16_t bits (bf16), int8_t (q8)
  const float* scales = nullptr;  // q8 only: [rows, blocks()], block c / block of row r
  Eigen::Index block = 0;         // q8 only: weights per scale along a row (SPEC §6.1 B)
  Eigen::Index rows = 0, cols = 0;
  // q8 only, optional: [rows, blocks()] the sums of each block's q (int8_block_sums), which the
  // int8 compute mode needs; computed on every call of a product when absent.
  const int32_t* block_sums = nullptr;
  /// How products over it take their inputs (compute.hpp): f32 multiplies float32 activations by
  /// the stored values; bf16 (format bf16) and int8 (format q8) round or quantize them first.
  Compute compute = Compute::f32;

  /// Scales per row (q8): ceil(cols / block).
  Eigen::Index blocks() const { return block > 0 ? (cols + block - 1) / block : 0; }
  /// Rows [r0, r0 + n) (e.g. the k and v parts of qkv_proj): the same format, data and scales
  /// advanced to row r0.
  WeightMatrix row_block(Eigen::Index r0, Eigen::Index n) const {
    WeightMatrix w = *this;
    w.rows = n;
    const size_t first = static_cast<size_t>(r0) * static_cast<size_t>(cols);
    switch (format) {
      case WeightFormat::f32:
        w.data = static_cast<const float*>(data) + first;
        break;
      case WeightFormat::bf16:
        w.data = static_cast<const uint16_t*>(data) + first;
        break;
      case WeightFormat::q8:
        w.data = static_cast<const int8_t*>(data) + first;
        w.scales = scales + r0 * blocks();
        if (block_sums != nullptr) w.block_sums = block_sums + r0 * blocks();
        break;
    }
    return w;
  }
  /// Bytes of the weights (and scales) a product reads.
  size_t bytes() const {
    const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(cols);
    switch (format) {
      case WeightFormat::f32:
        return 4 * n;
      case WeightFormat::bf16:
        return 2 * n;
      case WeightFormat::q8:
        return n + 4 * static_cast<size_t>(rows) * static_cast<size_t>(blocks());
    }
    return 0;
  }
};

/// The float32 a BF16 pattern stands for (SPEC §6.1).
inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/// The BF16 bits nearest x, ties to even; a NaN stays a quiet NaN: SPEC §6.1's rounding, of the
/// reference quantizer (float_to_bf16) and of the bf16 compute's activations.
inline uint16_t float_to_bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu) != 0) {
    return static_cast<uint16_t>((u >> 16) | 0x40u);
  }
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/// x rounded to the nearest BF16 value (float_to_bf16_bits), as a float.
inline float round_to_bf16(float x) {
  return bf16_bits_to_float(float_to_bf16_bits(x));
}

/// out[c] = W[r, c] for c < cols, by SPEC §6.1's formula (one float32 multiplication for q8).
inline void dequantize_row(const WeightMatrix& W, Eigen::Index r, float* out) {
  const Eigen::Index n = W.cols;
  switch (W.format) {
    case WeightFormat::f32:
      std::memcpy(out, static_cast<const float*>(W.data) + r * n, sizeof(float) * n);
      return;
    case WeightFormat::bf16: {
      const uint16_t* p = static_cast<const uint16_t*>(W.data) + r * n;
      for (Eigen::Index c = 0; c < n; ++c) out[c] = bf16_bits_to_float(p[c]);
      return;
    }
    case WeightFormat::q8: {
      const int8_t* p = static_cast<const int8_t*>(W.data) + r * n;
      const float* s = W.scales + r * W.blocks();
      // Block by block (a loop the compiler vectorises, with no division per weight).
      for (Eigen::Index c0 = 0, b = 0; c0 < n; c0 += W.block, ++b) {
        const Eigen::Index c1 = std::min(n, c0 + W.block);
        const float scale = s[b];
        for (Eigen::Index c = c0; c < c1; ++c) out[c] = scale * static_cast<float>(p[c]);
      }
      return;
    }
  }
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
