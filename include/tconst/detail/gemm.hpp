#pragma once
// Many-row matrix products in float, out[n, o] (+)= in[n, k] W[o, k]^T (+ bias[o]): the products
// of a resync's chunks of context rows with the weight matrices. W is in PyTorch's layout, [o, k]
// row-major, and is read where it lies: each register tile broadcasts MR weight rows one float at
// a time against NV vectors of input rows, so only the input is packed (transposed into panels of
// NV * lanes rows, k-major), and no copy of the model's weights is ever made. The tile is stored
// transposed, 4 output columns at a time.
//
// Blocking: k in passes of at most kGemmKcMax columns (the output is re-read by every pass after
// the first); the input in blocks of rows whose packed panels fill at most kGemmBlockFloats (a
// part of L2), which stream past a tile's MR weight rows, and each weight row is read once per
// block.
//
// Threads (OpenMP, when enabled): a contiguous range of input rows each (and of output columns
// when there are fewer panels of rows than threads); a thread packs the rows it computes into its
// own part of the workspace, so no thread waits for another. k is never split and every output
// goes through the same sequence of operations whichever thread and tile compute it, so the result
// has the same bits for any number of threads.
//
// The pieces of each instruction set are kernels/gemm.inl's (kernel_table.hpp: pack, compute,
// attend); Isa::none and double use Eigen's product.

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/big_buffer.hpp"
#include "tconst/detail/dispatch.hpp"
#include "tconst/detail/parallel.hpp"
#include "tconst/detail/views.hpp"

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

/// The packing buffer of gemm(): grows to the largest block it has packed and is then reused, so
/// repeated products of the same shapes allocate nothing. One per caller (not shared by threads
/// that call gemm() at the same time).
struct GemmWorkspace {
  // Per thread: [panels][kc][panel width] one block of input rows, transposed; then, for weights
  // that are not float (quant_linear.hpp), [mr][kc] one tile's weight rows widened to float.
  LineVector<float> packed;
  // The compute modes (compute_linear.hpp): per thread, input rows rounded or quantized and then
  // packed, in 32-bit units; their int8 block scales, as rows and then in panel layout; the
  // weights' block sums when the WeightMatrix has none.
  LineVector<uint32_t> units;
  LineVector<float> unit_scales;
  LineVector<int32_t> block_sums;
};

/// Columns of k per pass, at most. The model's k (432, 1280) take one pass: passes short enough to
/// keep a tile's weight rows in L1 (3 of 427 for k = 1280) re-read and re-write the output block
/// and cost more than those rows' coming from L2.
constexpr Eigen::Index kGemmKcMax = 1280;
/// Floats of packed input per block of rows (the block stays in L2 while the weights pass by).
constexpr Eigen::Index kGemmBlockFloats = Eigen::Index{128} << 10;
/// Output columns per product on the Eigen path (Isa::none, double).
constexpr Eigen::Index kGemmEigenCols = 128;
/// Multiply-adds per thread below which a product runs on fewer threads.
constexpr Eigen::Index kGemmMinFmaPerThread = Eigen::Index{1} << 20;

/// out[n, o] (+)= in[n, k] W[o, k]^T (+ bias) with Eigen's product (W contiguous), on one thread:
/// Eigen runs a product on one thread inside an active parallel region, or without OpenMP.
template <typename S>
void gemm_eigen(RowsView<const S> W, RowsView<const S> in, const S* bias, RowsView<S> out,
                bool accumulate) {
  using Rows = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Index k = W.cols, o = W.rows;
  Eigen::Map<Rows, 0, Eigen::OuterStride<>> O(out.data, in.rows, o, Eigen::OuterStride<>(out.ld));
  const Eigen::Map<const Rows, 0, Eigen::OuterStride<>> X(in.data, in.rows, k,
                                                          Eigen::OuterStride<>(in.ld));
  const Eigen::Map<const Rows> Wm(W.data, o, k);
  if (!accumulate) O.setZero();
  if (k > 0) O.noalias() += X * Wm.transpose();
  if (bias != nullptr)
    O.rowwise() += Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>(bias, o);
}

/// Threads gemm() uses for a product of n x k x o multiply-adds with `panels` ranges of output
/// columns to share: OpenMP's count (1 inside a parallel region or without OpenMP), fewer when
/// each would get less than kGemmMinFmaPerThread.
inline int gemm_threads(Eigen::Index n, Eigen::Index k, Eigen::Index o, Eigen::Index panels) {
  if (in_parallel()) return 1;
  const double fma = static_cast<double>(n) * static_cast<double>(k) * static_cast<double>(o);
  const double by_work = fma / static_cast<double>(kGemmMinFmaPerThread);
  Eigen::Index t = std::min<Eigen::Index>(max_workers(), panels);
  if (by_work < static_cast<double>(t))
    t = std::max<Eigen::Index>(1, static_cast<Eigen::Index>(by_work));
  return static_cast<int>(t);
}

/// The first entry of [0, count) split into `parts` contiguous ranges of whole units: part i
/// starts at unit units * i / parts.
inline Eigen::Index gemm_range_start(Eigen::Index count, Eigen::Index unit, Eigen::Index parts,
                                     Eigen::Index i) {
  const Eigen::Index units = (count + unit - 1) / unit;
  return std::min(count, units * i / parts * unit);
}

/// The largest range when [0, count) is split into `parts` ranges of whole units.
inline Eigen::Index gemm_largest_range(Eigen::Index count, Eigen::Index unit, Eigen::Index parts) {
  Eigen::Index most = 0;
  for (Eigen::Index i = 0; i < parts; ++i) {
    most = std::max(most, gemm_range_start(count, unit, parts, i + 1) -
                              gemm_range_start(count, unit, parts, i));
  }
  return most;
}

/// A grid of tn ranges of n rows (panels of nr) by tc ranges of o columns (tiles of mr), tn * tc
/// <= threads, whose largest cell is the smallest. A thread packs the rows it computes, so threads
/// that share rows pack them twice: a split of the columns has to win by more than that (counted
/// as 3 % of a cell). The same holds with weights that are not float (BF16, Q8), although there
/// threads that share columns each widen the strips they read: widening a strip once per block
/// of rows costs less than packing the rows twice (BM_Gemm, BM_QuantLinear; docs/benchmarks.md,
/// "Choices measured").
inline void gemm_grid(int threads, Eigen::Index n, Eigen::Index nr, Eigen::Index o, Eigen::Index mr,
                      Eigen::Index& tn, Eigen::Index& tc) {
  double best = 0;
  tn = tc = 1;
  for (Eigen::Index rows = threads; rows >= 1; --rows) {
    const Eigen::Index cols = threads / rows;
    const double cell = static_cast<double>(gemm_largest_range(n, nr, rows)) *
                        static_cast<double>(gemm_largest_range(o, mr, cols)) *
                        (cols > 1 ? 1.03 : 1.0);
    if (tn * tc == 1 || cell < best) {
      best = cell;
      tn = rows;
      tc = cols;
    }
  }
}

/// gemm_eigen() over fixed ranges of kGemmEigenCols output columns, shared by the threads. Eigen's
/// blocking depends on a product's sizes and, when Eigen splits a product over threads itself, on
/// their count; here every range is one single-threaded product of the same size on any thread
/// count, so the result has the same bits on any.
template <typename S>
void gemm_eigen_split(RowsView<const S> W, RowsView<const S> in, const S* bias, RowsView<S> out,
                      bool accumulate) {
  using Eigen::Index;
  const Index k = W.cols, o = W.rows, n = in.rows;
  const Index ranges = (o + kGemmEigenCols - 1) / kGemmEigenCols;
  auto run = [&](Index t, Index nt) {
    for (Index r = ranges * t / nt; r < ranges * (t + 1) / nt; ++r) {
      const Index c0 = r * kGemmEigenCols, c = std::min(kGemmEigenCols, o - c0);
      gemm_eigen(W.block(c0, c), in, bias != nullptr ? bias + c0 : nullptr, out.cols_from(c0, c),
                 accumulate);
    }
  };
  // Outside an active parallel region Eigen would split a large product itself: open one of at
  // least 2 workers, in which it does not.
  if (!in_parallel() && max_workers() > 1) {
    for_each_worker(std::max(2, gemm_threads(n, k, o, ranges)), run);
    return;
  }
  run(0, 1);
}

/// The blocking and threading of the packed product out[n, o] (+)= in[n, k] W^T (o = out.cols), for
/// any weight format: packs each thread's blocks of input rows with kern.pack and hands every block
/// and pass to compute(scratch, c0, c1, p0, kc, packed, out_block, first_pass), which multiplies
/// the packed rows by weight rows [c0, c1) over columns [p0, p0 + kc) into out_block (the block's
/// output rows, out_block.rows of them). Passes of k are multiples of `k_align` columns (but the
/// last); each thread gets `scratch_floats` floats of ws besides its panels, 64-byte aligned.
/// Allocates only when `ws` has to grow.
template <typename Compute>
void gemm_drive(const KernelTable& kern, RowsView<const float> in, RowsView<float> out,
                Eigen::Index k_align, Eigen::Index scratch_floats, GemmWorkspace& ws,
                const Compute& compute) {
  using Eigen::Index;
  const Index k = in.cols, o = out.cols, n = in.rows;
  const Index passes = (k + kGemmKcMax - 1) / kGemmKcMax;
  const Index kc = ((k + passes - 1) / passes + k_align - 1) / k_align * k_align;
  const Index nr = kern.nr, mr = kern.mr;
  const Index row_panels = (n + nr - 1) / nr, col_panels = (o + mr - 1) / mr;
  // Threads on a grid: tn ranges of input rows by tc ranges of output columns.
  Index tn = 1, tc = 1;
  gemm_grid(gemm_threads(n, k, o, row_panels * col_panels), n, nr, o, mr, tn, tc);
  const Index budget_rows = std::max(nr, kGemmBlockFloats / kc / nr * nr);
  const Index panel_floats =
      std::min(budget_rows, (gemm_largest_range(n, nr, tn) + nr - 1) / nr * nr) * kc;
  const Index per_thread = panel_floats + (scratch_floats + 15) / 16 * 16;
  const size_t need = static_cast<size_t>(per_thread * tn * tc);
  if (ws.packed.size() < need) ws.packed.resize(need);

  auto run = [&](Index t) {
    const Index rt = t / tc, ct = t % tc;
    const Index r0 = gemm_range_start(n, nr, tn, rt), r1 = gemm_range_start(n, nr, tn, rt + 1);
    const Index c0 = gemm_range_start(o, mr, tc, ct), c1 = gemm_range_start(o, mr, tc, ct + 1);
    if (r0 >= r1 || c0 >= c1) return;
    float* packed = ws.packed.data() + t * per_thread;
    // Blocks of the thread's rows, of the same whole number of panels (the last may be short).
    const Index blocks = (r1 - r0 + budget_rows - 1) / budget_rows;
    const Index nb = ((r1 - r0 + blocks - 1) / blocks + nr - 1) / nr * nr;
    for (Index n0 = r0; n0 < r1; n0 += nb) {
      const Index rows = std::min(nb, r1 - n0);
      for (Index p0 = 0; p0 < k; p0 += kc) {
        const Index kcur = std::min(kc, k - p0);
        for (Index j = 0; j < rows; j += nr) {
          kern.pack(in.row(n0 + j), in.ld, std::min(nr, rows - j), p0, kcur, packed + j * kcur);
        }
        compute(packed + panel_floats, c0, c1, p0, kcur, static_cast<const float*>(packed),
                out.block(n0, rows), p0 == 0);
      }
    }
  };
  parallel_for(tn * tc, tn * tc, [&](Index t, Index) { run(t); });
}

/// out[n, o] = in[n, k] W[o, k]^T (+ bias[o]), or out += that when `accumulate`, with the kernels
/// of `isa` (or the best one below it that this CPU runs; Eigen for Isa::none). W is [o, k]
/// contiguous; n = in.rows, in's first k and out's first o columns are used; bias may be nullptr.
/// Nothing outside out's n x o entries is written. Allocates only when `ws` has to grow.
inline void gemm(Isa isa, RowsView<const float> W, RowsView<const float> in, const float* bias,
                 RowsView<float> out, bool accumulate, GemmWorkspace& ws) {
  using Eigen::Index;
  const Index k = W.cols, o = W.rows;
  if (in.rows <= 0 || o <= 0) return;
  const KernelTable& kern = kernels_at_most(isa);
  if (kern.compute == nullptr || k <= 0) {
    gemm_eigen_split(W, in, bias, out.cols_from(0, o), accumulate);
    return;
  }
  gemm_drive(kern, in.cols_from(0, k), out.cols_from(0, o), 1, 0, ws,
             [&](float*, Index c0, Index c1, Index p0, Index kc, const float* packed,
                 RowsView<float> out_block, bool first) {
               kern.compute(W.data, k, c0, c1, p0, kc, packed, out_block.rows,
                            first ? bias : nullptr, out_block.data, out_block.ld,
                            accumulate || !first);
             });
}

/// gemm() with active_isa()'s kernels.
inline void gemm(RowsView<const float> W, RowsView<const float> in, const float* bias,
                 RowsView<float> out, bool accumulate, GemmWorkspace& ws) {
  gemm(active_isa(), W, in, bias, out, accumulate, ws);
}

/// The same product in double, with Eigen's (there are no double kernels); `ws` is unused.
inline void gemm(RowsView<const double> W, RowsView<const double> in, const double* bias,
                 RowsView<double> out, bool accumulate, GemmWorkspace& ws) {
  (void)ws;
  if (in.rows <= 0 || W.rows <= 0) return;
  gemm_eigen_split(W, in, bias, out.cols_from(0, W.rows), accumulate);
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
