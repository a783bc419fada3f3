#pragma once
// The product over a weight matrix in any format of SPEC §6.1 (detail::WeightMatrix): float32
// activations, float32 accumulation. F32 matrices take the float kernels of ops.hpp. BF16 and Q8
// matrices are widened a chunk of one weight row at a time into a buffer on the stack (nothing is
// allocated), by dequantize_row()'s arithmetic, and each input row is dotted with the chunk: a
// portable, exact form of the product, one weight row per OpenMP thread range.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>

#include "tconst/detail/kernels/gemm.hpp"
#include "tconst/detail/ops.hpp"
#include "tconst/detail/weight_matrix.hpp"

namespace tconst {
namespace detail {

/// Weights widened at once by the portable product (a stack buffer of this many floats).
constexpr Index kWidenChunk = 256;

/// out[i] = W[r, c0 + i] for i < n (SPEC §6.1), for a BF16 or Q8 matrix.
inline void widen_chunk(const WeightMatrix& W, Index r, Index c0, Index n, float* out) noexcept {
  const Index first = r * W.cols + c0;
  if (W.format == WeightFormat::bf16) {
    const uint16_t* p = static_cast<const uint16_t*>(W.data) + first;
    for (Index i = 0; i < n; ++i) out[i] = bf16_bits_to_float(p[i]);
    return;
  }
  const int8_t* p = static_cast<const int8_t*>(W.data) + first;
  const float* s = W.scales + r * W.blocks();
  for (Index i = 0; i < n; ++i) out[i] = s[(c0 + i) / W.block] * static_cast<float>(p[i]);
}

/// out[n, o] = in[n, k] W^T (+ bias[o]), or out += that when `accumulate`, for W [o, k] in any
/// WeightMatrix format; input rows ld_in apart, output rows ld_out apart. `ws` (the packed GEMM's
/// buffer) serves the F32 products of many rows; it may be nullptr.
inline void linear(const float* in, Index ld_in, Index n, const WeightMatrix& W, const float* bias,
                   float* out, Index ld_out, GemmWorkspace* ws = nullptr, bool accumulate = false) {
  if (W.format == WeightFormat::f32) {
    const ConstMatrixMap<float> M(static_cast<const float*>(W.data), W.rows, W.cols);
    linear<float>(in, ld_in, n, M, bias, out, ld_out, ws, accumulate);
    return;
  }
  const Index k = W.cols;
  for_row_ranges(W.rows, [&](Index r0, Index r1) {
    alignas(64) float w[kWidenChunk];  // [chunk] one weight row's columns c0.., widened
    for (Index o = r0; o < r1; ++o) {
      for (Index i = 0; i < n; ++i) {
        float& y = out[i * ld_out + o];
        if (!accumulate) y = 0.0f;
      }
      for (Index c0 = 0; c0 < k; c0 += kWidenChunk) {
        const Index nc = std::min(kWidenChunk, k - c0);
        widen_chunk(W, o, c0, nc, w);
        const Eigen::Map<const Eigen::VectorXf> wv(w, nc);
        for (Index i = 0; i < n; ++i) {
          out[i * ld_out + o] += Eigen::Map<const Eigen::VectorXf>(in + i * ld_in + c0, nc).dot(wv);
        }
      }
      if (bias != nullptr) {
        for (Index i = 0; i < n; ++i) out[i * ld_out + o] += bias[o];
      }
    }
  });
}

}  // namespace detail
}  // namespace tconst
