#pragma once
// The compute modes' linear layers, out[n, o] (+)= in[n, k] W^T (+ bias), which trade the float32
// product for the CPU's faster multipliers (docs/SPEC.md, SPEC §6.1's formats):
//
//   bf16 mode (W in BF16): each activation rounded to the nearest BF16 (ties to even), products
//     exact in float32, summed in float32: out[o] = bias[o] + sum_c bf16(x[c]) W[o, c].
//   int8 mode (W in Q8, block B): each input row quantized per block of B columns by SPEC §6.1's
//     reference quantizer (s = max|x| / 127, q = round(x / s), ties to even); per block the dot
//     D_b of the q's summed exactly in int32, then out[o] = bias[o] + sum_b float(D_b) (s_x,b
//     s_w[o, b]) in float32. A block with a NaN or an infinity gets s_x = NaN: the outputs it
//     touches are NaN.
//
// The paths mirror quant_linear.hpp's:
//   few rows (n <= kRowsGemmMaxRows, or no workspace): the rows rounded or quantized (the kernel
//     table's *_prepare) and multiplied by the *_rows kernels: one row by a GEMV along k; more, in
//     bf16, by blocks of weight rows and input rows read as they lie (rows_gemm.inl's scheme), in
//     int8 by the packed product's tiles over panels (unit_pack); output rows split over threads
//     by for_row_ranges. Without a workspace the buffers are the calling
//     thread's own (compute_buffers()): they grow to the largest product the thread has run and are
//     then reused, so a product allocates only when it is larger than every one before it;
//   many rows: gemm.hpp's blocking and thread grid (gemm_drive's, with the rows prepared and packed
//     by the thread that computes them) and the *_compute tiles;
//   Isa::none: linear_bf16_portable / linear_int8_portable, scalar loops.
// kernels/compute.inl has the kernels: vdpbf16ps (avx512_bf16), vpdpbusd (avx512_vnni, avx2_vnni)
// and, on the levels without them, BF16 widened to float with FMAs and int8 by exact int16 pair
// products. Every output comes from the same operations whichever thread and tile compute it, so
// the result has the same bits for any number of threads; the int8 mode's also on every vector
// level; the bf16 mode's on every level for the packed product, on the levels of one vector
// width for the few-row kernels (whose lanes split k). vdpbf16ps treats subnormal BF16 inputs and
// results as zero: there (products below 2^-126) its results differ by more than rounding.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/dispatch.hpp"
#include "tconst/detail/gemm.hpp"
#include "tconst/detail/ops.hpp"
#include "tconst/detail/parallel.hpp"
#include "tconst/detail/weight_matrix.hpp"
#include "tconst/error.hpp"

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

/// out[r * W.blocks() + b] = the sum of W's q over block b of row r, for a Q8 W (what
/// WeightMatrix::block_sums holds).
inline void int8_block_sums(const WeightMatrix& W, int32_t* out) {
  const Index nb = W.blocks();
  for (Index r = 0; r < W.rows; ++r) {
    const int8_t* p = static_cast<const int8_t*>(W.data) + r * W.cols;
    for (Index b = 0; b < nb; ++b) {
      const Index c0 = b * W.block, c1 = std::min(W.cols, c0 + W.block);
      int32_t s = 0;
      for (Index c = c0; c < c1; ++c) s += p[c];
      out[r * nb + b] = s;
    }
  }
}

/// One input row quantized for the int8 mode by the rules above (scalar): q[c] for c < k, and the
/// block scales s[b] (NaN for a block with a non-finite value, whose q are 0).
inline void int8_quantize_row(const float* x, Index k, Index block, int8_t* q, float* s) {
  for (Index c0 = 0, b = 0; c0 < k; c0 += block, ++b) {
    const Index c1 = std::min(k, c0 + block);
    float amax = 0.0f;
    bool finite = true;
    for (Index c = c0; c < c1; ++c) {
      finite = finite && std::isfinite(x[c]);
      amax = std::max(amax, std::fabs(x[c]));
    }
    const float scale = finite ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
    s[b] = scale;
    for (Index c = c0; c < c1; ++c) {
      const float v = scale > 0.0f ? std::nearbyint(x[c] / scale) : 0.0f;
      q[c] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
    }
  }
}

/// The buffers of the few-row path when the caller passes no workspace: the calling thread's own,
/// grown to the largest product it has run and then reused.
inline GemmWorkspace& compute_buffers() {
  thread_local GemmWorkspace buffers;
  return buffers;
}

/// The best table at most `isa` that this CPU runs and that has the mode's kernels (int8 or
/// bf16); Isa::none's (no kernels) if there is none.
inline const KernelTable& compute_kernels(Isa isa, bool int8) {
  for (int i = static_cast<int>(isa); i > 0; --i) {
    const KernelTable& t = kernels(static_cast<Isa>(i));
    if ((int8 ? t.int8_compute != nullptr : t.bf16_compute != nullptr)) return t;
  }
  return kernels(Isa::none);
}

/// The block sums of a Q8 W: its own, or computed into `buf`.
inline const int32_t* block_sums_of(const WeightMatrix& W, LineVector<int32_t>& buf) {
  if (W.block_sums != nullptr) return W.block_sums;
  int32_t* s = at_least(buf, W.rows * W.blocks());
  int8_block_sums(W, s);
  return s;
}

/// sxp, panel after panel of nr rows (panel j0 at sxp + j0 * nb, block b of it at b * width):
/// Grows buf so that the compute modes' few-row products (compute_rows, or the portable loops) of
/// up to n rows of at most k columns allocate nothing: what a session reserves before its first
/// step.
inline void reserve_compute_rows(GemmWorkspace& buf, Index n, Index k) {
  const Index padded = (n + 31) / 32 * 32;  // every table's cnr divides 32
  at_least(buf.units, std::max((n + padded) * ((k + 1) / 2), (n * k + 3) / 4));
  at_least(buf.unit_scales, std::max(n * k, (n + padded) * ((k + 15) / 16)));  // blocks >= 16
}

/// the scales of `rows` prepared rows (row g's at scales + g * nb), 0 past the last row.
inline void pack_scales(const float* scales, Index rows, Index nb, Index nr, Index lanes,
                        float* sxp) {
  for (Index j0 = 0; j0 < rows; j0 += nr) {
    const Index r = std::min(nr, rows - j0), width = (r + lanes - 1) / lanes * lanes;
    float* p = sxp + j0 * nb;
    for (Index b = 0; b < nb; ++b) {
      for (Index i = 0; i < width; ++i) p[b * width + i] = i < r ? scales[(j0 + i) * nb + b] : 0.0f;
    }
  }
}

/// The few-row path with the kernels of `kern` (Int8: int8 mode, else bf16); buffers in `buf`.
template <bool Int8>
void compute_rows(const KernelTable& kern, RowsView<const float> in, const WeightMatrix& W,
                  const float* bias, RowsView<float> out, GemmWorkspace& buf, bool accumulate) {
  const Index n = in.rows, k = W.cols, unit = Int8 ? 4 : 2, ku = (k + unit - 1) / unit;
  const Index nr = kern.cnr, padded = (n + nr - 1) / nr * nr;
  uint32_t* rows = at_least(buf.units, (n + padded) * ku);
  uint32_t* packed = rows + n * ku;
  const int32_t* sums = nullptr;
  float* scales = nullptr;
  float* sxp = nullptr;
  if constexpr (Int8) {
    const Index nb = W.blocks();
    scales = at_least(buf.unit_scales, (n + padded) * nb);
    sxp = scales + n * nb;
    kern.int8_prepare(in.data, in.ld, n, k, W.block, rows, ku, scales, nb);
    pack_scales(scales, n, nb, nr, kern.clanes, sxp);
    sums = block_sums_of(W, buf.block_sums);
  } else {
    kern.bf16_prepare(in.data, in.ld, n, k, rows, ku);
  }
  if constexpr (Int8) {  // the bf16 few-row kernels read the prepared rows as they lie
    for (Index j0 = 0; j0 < n; j0 += nr) {
      kern.unit_pack(rows + j0 * ku, ku, std::min(nr, n - j0), 0, ku, packed + j0 * ku);
    }
  }
  for_row_ranges(W.rows, [&](Index r0, Index r1) {
    if constexpr (Int8) {
      kern.int8_rows(W, sums, r0, r1, rows, scales, packed, sxp, n, bias, out.data, out.ld,
                     accumulate);
    } else {
      kern.bf16_rows(W, r0, r1, rows, n, bias, out.data, out.ld, accumulate);
    }
  });
}

/// The many-row path: gemm_drive's blocking and thread grid, each thread preparing and packing
/// the rows it computes into its own part of ws.
template <bool Int8>
void compute_gemm(const KernelTable& kern, RowsView<const float> in, const WeightMatrix& W,
                  const float* bias, RowsView<float> out, GemmWorkspace& ws, bool accumulate) {
  const Index k = W.cols, o = W.rows, n = in.rows;
  const Index unit = Int8 ? 4 : 2, align = Int8 ? W.block : 2, ku = (k + unit - 1) / unit;
  const Index nbk = Int8 ? W.blocks() : 0;
  const Index passes = (k + kGemmKcMax - 1) / kGemmKcMax;
  const Index kc = ((k + passes - 1) / passes + align - 1) / align * align;
  const Index kcu = kc / unit;
  const Index nr = kern.cnr, mr = 8;  // mr: the grain of the columns' split over threads
  const Index row_panels = (n + nr - 1) / nr, col_panels = (o + mr - 1) / mr;
  Index tn = 1, tc = 1;
  gemm_grid(gemm_threads(n, k, o, row_panels * col_panels), n, nr, o, mr, tn, tc);
  const Index budget_rows = std::max(nr, kGemmBlockFloats / kcu / nr * nr);
  const Index block_rows =
      std::min(budget_rows, (gemm_largest_range(n, nr, tn) + nr - 1) / nr * nr);
  const Index units_per_thread = block_rows * (ku + kcu);
  const Index scales_per_thread = 2 * block_rows * nbk;
  uint32_t* units = at_least(ws.units, units_per_thread * tn * tc);
  float* all_scales = Int8 ? at_least(ws.unit_scales, scales_per_thread * tn * tc) : nullptr;
  const int32_t* sums = Int8 ? block_sums_of(W, ws.block_sums) : nullptr;

  auto run = [&](Index t) {
    const Index rt = t / tc, ct = t % tc;
    const Index r0 = gemm_range_start(n, nr, tn, rt), r1 = gemm_range_start(n, nr, tn, rt + 1);
    const Index c0 = gemm_range_start(o, mr, tc, ct), c1 = gemm_range_start(o, mr, tc, ct + 1);
    if (r0 >= r1 || c0 >= c1) return;
    uint32_t* rows = units + t * units_per_thread;  // [block_rows, ku] prepared
    uint32_t* packed = rows + block_rows * ku;      // [block_rows, kcu] one pass, in panels
    float* scales = Int8 ? all_scales + t * scales_per_thread : nullptr;
    float* sxp = Int8 ? scales + block_rows * nbk : nullptr;
    const Index blocks = (r1 - r0 + budget_rows - 1) / budget_rows;
    const Index nb = ((r1 - r0 + blocks - 1) / blocks + nr - 1) / nr * nr;
    for (Index n0 = r0; n0 < r1; n0 += nb) {
      const Index count = std::min(nb, r1 - n0);
      if constexpr (Int8) {
        kern.int8_prepare(in.row(n0), in.ld, count, k, W.block, rows, ku, scales, nbk);
        pack_scales(scales, count, nbk, nr, kern.clanes, sxp);
      } else {
        kern.bf16_prepare(in.row(n0), in.ld, count, k, rows, ku);
      }
      for (Index p0 = 0; p0 < k; p0 += kc) {
        const Index kcur = std::min(kc, k - p0), kcur_u = (kcur + unit - 1) / unit;
        for (Index j = 0; j < count; j += nr) {
          kern.unit_pack(rows + j * ku, ku, std::min(nr, count - j), p0 / unit, kcur_u,
                         packed + j * kcur_u);
        }
        const float* b = p0 == 0 ? bias : nullptr;
        const bool load = accumulate || p0 != 0;
        if constexpr (Int8) {
          kern.int8_compute(W, sums, c0, c1, p0, kcur, packed, sxp, count, b, out.row(n0), out.ld,
                            load);
        } else {
          kern.bf16_compute(W, c0, c1, p0, kcur, packed, count, b, out.row(n0), out.ld, load);
        }
      }
    }
  };
  parallel_for(tn * tc, tn * tc, [&](Index t, Index) { run(t); });
}

/// The bf16 mode on no vector kernels: the rows rounded (in buf), then one float32 sum per output.
inline void linear_bf16_portable(RowsView<const float> in, const WeightMatrix& W, const float* bias,
                                 RowsView<float> out, GemmWorkspace& buf, bool accumulate) {
  const Index n = in.rows, k = W.cols;
  float* x = reinterpret_cast<float*>(at_least(buf.unit_scales, n * k));
  for (Index g = 0; g < n; ++g) {
    for (Index c = 0; c < k; ++c) x[g * k + c] = round_to_bf16(in.row(g)[c]);
  }
  for_row_ranges(W.rows, [&](Index r0, Index r1) {
    for (Index o = r0; o < r1; ++o) {
      const uint16_t* w = static_cast<const uint16_t*>(W.data) + o * k;
      const float b = bias != nullptr ? bias[o] : 0.0f;
      for (Index g = 0; g < n; ++g) {
        float acc = 0.0f;
        for (Index c = 0; c < k; ++c) acc += x[g * k + c] * bf16_bits_to_float(w[c]);
        float& y = out.data[g * out.ld + o];
        y = accumulate ? y + (acc + b) : acc + b;
      }
    }
  });
}

/// The int8 mode on no vector kernels: the rows quantized (in buf), then per output the blocks'
/// exact int32 dots, each scaled in float32 and summed.
inline void linear_int8_portable(RowsView<const float> in, const WeightMatrix& W, const float* bias,
                                 RowsView<float> out, GemmWorkspace& buf, bool accumulate) {
  const Index n = in.rows, k = W.cols, nb = W.blocks();
  int8_t* q = reinterpret_cast<int8_t*>(at_least(buf.units, (n * k + 3) / 4));
  float* s = at_least(buf.unit_scales, n * nb);
  for (Index g = 0; g < n; ++g) int8_quantize_row(in.row(g), k, W.block, q + g * k, s + g * nb);
  for_row_ranges(W.rows, [&](Index r0, Index r1) {
    for (Index o = r0; o < r1; ++o) {
      const int8_t* w = static_cast<const int8_t*>(W.data) + o * k;
      const float* sw = W.scales + o * nb;
      const float b = bias != nullptr ? bias[o] : 0.0f;
      for (Index g = 0; g < n; ++g) {
        float acc = 0.0f;
        for (Index c0 = 0, blk = 0; c0 < k; c0 += W.block, ++blk) {
          const Index c1 = std::min(k, c0 + W.block);
          int32_t d = 0;
          for (Index c = c0; c < c1; ++c) d += int32_t{q[g * k + c]} * int32_t{w[c]};
          acc += static_cast<float>(d) * (s[g * nb + blk] * sw[blk]);
        }
        float& y = out.data[g * out.ld + o];
        y = accumulate ? y + (acc + b) : acc + b;
      }
    }
  });
}

/// Throws unless W is in `format` (and, for q8, has scales and a block of 16 .. 256).
inline void check_compute_weights(const WeightMatrix& W, WeightFormat format) {
  if (W.format != format) {
    throw Error(std::string("the ") + (format == WeightFormat::q8 ? "int8" : "bf16") +
                " compute mode needs " + to_string(format) + " weights, not " +
                to_string(W.format));
  }
  if (format == WeightFormat::q8 &&
      (W.scales == nullptr || W.block < 16 || W.block > 256 || (W.block & (W.block - 1)) != 0)) {
    throw Error("the int8 compute mode needs Q8 weights with scales and a block of 16 .. 256");
  }
}

/// The product of one mode with the kernels of `isa` (or the best level below it that has them).
template <bool Int8>
void compute_linear(Isa isa, RowsView<const float> in, const WeightMatrix& W, const float* bias,
                    RowsView<float> out, GemmWorkspace* ws, bool accumulate) {
  check_compute_weights(W, Int8 ? WeightFormat::q8 : WeightFormat::bf16);
  if (in.rows <= 0 || W.rows <= 0) return;
  const KernelTable& kern = compute_kernels(isa, Int8);
  GemmWorkspace& buf = ws != nullptr ? *ws : compute_buffers();
  if (kern.unit_pack == nullptr) {
    if constexpr (Int8) {
      linear_int8_portable(in, W, bias, out, buf, accumulate);
    } else {
      linear_bf16_portable(in, W, bias, out, buf, accumulate);
    }
    return;
  }
  if (ws == nullptr || in.rows <= kRowsGemmMaxRows || W.cols <= 0) {
    compute_rows<Int8>(kern, in, W, bias, out, buf, accumulate);
  } else {
    compute_gemm<Int8>(kern, in, W, bias, out, *ws, accumulate);
  }
}

/// out[n, o] = in[n, k] W^T (+ bias[o]), or out += that when `accumulate`, in the bf16 mode: each
/// activation rounded to BF16, W BF16 [o, k]. n = in.rows; ws may be nullptr (then the few-row
/// kernel for any n, with the calling thread's own buffers); more than kRowsGemmMaxRows rows with a
/// workspace take the packed product. `isa` caps the kernels (Isa::none: the portable loops).
/// Throws Error for weights in another format.
inline void linear_bf16(Isa isa, RowsView<const float> in, const WeightMatrix& W, const float* bias,
                        RowsView<float> out, GemmWorkspace* ws, bool accumulate) {
  compute_linear<false>(isa, in, W, bias, out, ws, accumulate);
}

/// The same in the int8 mode: each input row quantized per block of W.block columns, W Q8.
inline void linear_int8(Isa isa, RowsView<const float> in, const WeightMatrix& W, const float* bias,
                        RowsView<float> out, GemmWorkspace* ws, bool accumulate) {
  compute_linear<true>(isa, in, W, bias, out, ws, accumulate);
}

/// linear_bf16() with active_isa()'s kernels.
inline void linear_bf16(RowsView<const float> in, const WeightMatrix& W, const float* bias,
                        RowsView<float> out, GemmWorkspace* ws = nullptr, bool accumulate = false) {
  linear_bf16(active_isa(), in, W, bias, out, ws, accumulate);
}

/// linear_int8() with active_isa()'s kernels.
inline void linear_int8(RowsView<const float> in, const WeightMatrix& W, const float* bias,
                        RowsView<float> out, GemmWorkspace* ws = nullptr, bool accumulate = false) {
  linear_int8(active_isa(), in, W, bias, out, ws, accumulate);
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
