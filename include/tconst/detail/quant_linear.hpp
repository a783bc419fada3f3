#pragma once
// Linear layers over a WeightMatrix in any of SPEC §6.1's formats: out[n, o] (+)= in[n, k] W^T
// (+ bias), float32 activations and accumulation, the weights widened to float in registers as
// they are read (never a float copy of the matrix). Every path multiplies exactly the dequantized
// matrix (dequantize_row's values: BF16 widened, Q8 as one float32 product of scale and weight),
// so a result differs from the float32 product of that matrix only by the order of its additions.
// The one exception is one input row over Q8 weights (quant_rows.inl's qgemv): it scales each
// block's sum of products once, so its result differs by that rounding too (SPEC §6.1's tolerance).
//
//   few rows (n <= kRowsGemmMaxRows, or no workspace): kernels/quant_rows.inl, rows_gemm.inl's
//     scheme (each weight row read once against every input row), output rows split over threads
//     by for_row_ranges;
//   many rows: gemm.hpp's packed product (gemm_drive: its blocking and thread grid), each tile's
//     weight rows widened once per pass into a strip of the workspace (kernels/quant_gemm.inl);
//   Isa::none: blocks of dequantized weights through Eigen (a stack buffer of columns for few
//     rows; ranges of kGemmEigenCols whole rows in the workspace for many).
// The vector paths are compiled for AVX-512 and for AVX2 + FMA and chosen at run time, capped by
// TCONST_ISA, as the float kernels are (dispatch.hpp). AVX512-BF16's vdpbf16ps is not used: it
// rounds the activations to BF16. Every output comes from the same operations whichever thread
// computes it, so the result has the same bits for any number of threads.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/compute_linear.hpp"
#include "tconst/detail/dispatch.hpp"
#include "tconst/detail/gemm.hpp"
#include "tconst/detail/ops.hpp"
#include "tconst/detail/parallel.hpp"
#include "tconst/detail/weight_matrix.hpp"

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

/// dst[c - c0] = W[r, c] for c in [c0, c1): dequantize_row's values for part of a row.
inline void dequantize_cols(const WeightMatrix& W, Index r, Index c0, Index c1, float* dst) {
  if (W.format == WeightFormat::f32) {
    std::memcpy(dst, static_cast<const float*>(W.data) + r * W.cols + c0,
                sizeof(float) * static_cast<size_t>(c1 - c0));
  } else if (W.format == WeightFormat::bf16) {
    const uint16_t* p = static_cast<const uint16_t*>(W.data) + r * W.cols;
    for (Index c = c0; c < c1; ++c) dst[c - c0] = bf16_bits_to_float(p[c]);
  } else {
    const int8_t* p = static_cast<const int8_t*>(W.data) + r * W.cols;
    const float* s = W.scales + r * W.blocks();
    for (Index c = c0; c < c1; ++c) dst[c - c0] = s[c / W.block] * static_cast<float>(p[c]);
  }
}

/// Columns of the portable few-row path's stack buffer.
constexpr Index kQuantPortableCols = 256;

/// The portable few-row path (Isa::none): per output row, columns dequantized kQuantPortableCols
/// at a time into a stack buffer and dotted with each input row (16 at a time).
inline void quant_rows_portable(const WeightMatrix& W, Index o0, Index o1, RowsView<const float> in,
                                const float* bias, RowsView<float> out, bool accumulate) {
  const Index n = in.rows, ld_in = in.ld, ld_out = out.ld;
  using Vec = Eigen::Matrix<float, Eigen::Dynamic, 1>;
  float w[kQuantPortableCols];  // [chunk] one row's columns, dequantized
  for (Index g0 = 0; g0 < n; g0 += 16) {
    const Index gn = std::min<Index>(16, n - g0);
    for (Index o = o0; o < o1; ++o) {
      float acc[16] = {};
      for (Index c0 = 0; c0 < W.cols; c0 += kQuantPortableCols) {
        const Index c1 = std::min(W.cols, c0 + kQuantPortableCols);
        dequantize_cols(W, o, c0, c1, w);
        const Eigen::Map<const Vec> wv(w, c1 - c0);
        for (Index g = 0; g < gn; ++g) {
          acc[g] += wv.dot(Eigen::Map<const Vec>(in.data + (g0 + g) * ld_in + c0, c1 - c0));
        }
      }
      const float b = bias != nullptr ? bias[o] : 0.0f;
      for (Index g = 0; g < gn; ++g) {
        float& y = out.data[(g0 + g) * ld_out + o];
        y = accumulate ? y + (acc[g] + b) : acc[g] + b;
      }
    }
  }
}

/// The portable many-row path (Isa::none): ranges of kGemmEigenCols weight rows, dequantized into
/// the thread's part of ws ([kGemmEigenCols, k] floats), each one single-threaded Eigen product
/// (gemm_eigen) of the same size on any thread count.
inline void quant_gemm_portable(RowsView<const float> in, const WeightMatrix& W, const float* bias,
                                RowsView<float> out, GemmWorkspace& ws, bool accumulate) {
  const Index k = W.cols, o = W.rows, n = in.rows;
  const Index ranges = (o + kGemmEigenCols - 1) / kGemmEigenCols;
  const int threads = in_parallel() ? 1 : gemm_threads(n, k, o, ranges);
  const Index per_thread = kGemmEigenCols * k;
  const size_t need = static_cast<size_t>(per_thread * threads);
  if (ws.packed.size() < need) ws.packed.resize(need);
  auto run = [&](Index t, Index nt) {
    float* w = ws.packed.data() + t * per_thread;  // [c, k] rows c0 .. c0 + c of W, dequantized
    for (Index r = ranges * t / nt; r < ranges * (t + 1) / nt; ++r) {
      const Index c0 = r * kGemmEigenCols, c = std::min(kGemmEigenCols, o - c0);
      for (Index i = 0; i < c; ++i) dequantize_cols(W, c0 + i, 0, k, w + i * k);
      gemm_eigen<float>(rows_view<const float>(w, c, k), in.cols_from(0, k),
                        bias != nullptr ? bias + c0 : nullptr, out.cols_from(c0, c), accumulate);
    }
  };
  for_each_worker(threads, run);
}

/// linear() over a bf16 or q8 matrix with the kernels of `isa` (or the best one below it that this
/// CPU runs; the portable path for Isa::none). For comparing the paths; linear() uses active_isa().
inline void quant_linear(Isa isa, RowsView<const float> in, const WeightMatrix& W,
                         const float* bias, RowsView<float> out, GemmWorkspace* ws,
                         bool accumulate) {
  const Index n = in.rows, ld_out = out.ld;
  if (n <= 0 || W.rows <= 0) return;
  const KernelTable& kern = kernels_at_most(isa);
  if (ws == nullptr || n <= kRowsGemmMaxRows || W.cols <= 0) {
    for_row_ranges(W.rows, [&](Index r0, Index r1) {
      if (kern.quant_rows != nullptr) {
        kern.quant_rows(W, r0, r1, in.data, in.ld, n, bias, out.data, ld_out, accumulate);
      } else {
        quant_rows_portable(W, r0, r1, in, bias, out, accumulate);
      }
    });
    return;
  }
  if (kern.quant_compute == nullptr) {
    quant_gemm_portable(in, W, bias, out, *ws, accumulate);
    return;
  }
  // Passes of whole Q8 blocks, so that a strip's segments start on a block.
  const Index align = W.format == WeightFormat::q8 ? W.block : 1;
  gemm_drive(kern, in.cols_from(0, W.cols), out.cols_from(0, W.rows), align,
             kern.mr * std::min(W.cols, kGemmKcMax + align), *ws,
             [&](float* strip, Index c0, Index c1, Index p0, Index kc, const float* packed,
                 RowsView<float> out_block, bool first) {
               kern.quant_compute(W, c0, c1, p0, kc, packed, out_block.rows, first ? bias : nullptr,
                                  out_block.data, out_block.ld, accumulate || !first, strip);
             });
}

/// out[n, o] = in[n, k] W^T (+ bias[o]), or out += that when `accumulate`, for W [o, k] in any
/// WeightMatrix format (f32 goes to the float linear()) and compute (bf16 and int8 to
/// compute_linear.hpp); n = in.rows. ws may be nullptr for n <=
/// kRowsGemmMaxRows (few-row kernel / GEMV); more rows take the packed GEMM, whose buffer ws holds.
/// A q8 W has scales and a block of 16 .. 256 (a power of two), as the loader checks. Allocates
/// only when ws has to grow.
inline void linear(RowsView<const float> in, const WeightMatrix& W, const float* bias,
                   RowsView<float> out, GemmWorkspace* ws = nullptr, bool accumulate = false) {
  if (W.compute == Compute::bf16) {
    linear_bf16(in, W, bias, out, ws, accumulate);
    return;
  }
  if (W.compute == Compute::int8) {
    linear_int8(in, W, bias, out, ws, accumulate);
    return;
  }
  if (W.format == WeightFormat::f32) {
    const ConstMatrixMap<float> Wm(static_cast<const float*>(W.data), W.rows, W.cols);
    linear<float>(in, Wm, bias, out, ws, accumulate);
    return;
  }
  quant_linear(active_isa(), in, W, bias, out, ws, accumulate);
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
