#pragma once
// The one table of vector kernels: what each instruction set provides, as function pointers. Each
// instruction set fills its row in one place (kernels/isa.inl, compiled once per set); dispatch.hpp
// picks the row this CPU runs. A new instruction set is a new row: a kernels/<set>.hpp that opens
// its target region and reads isa.inl, a value of Isa, and its CPU check in dispatch.hpp.

#include <Eigen/Core>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/weight_matrix.hpp"

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

/// The instruction sets the kernels exist for, best last.
enum class Isa { none, avx2, avx512 };

/// out[g, o] = in[g, :] . W[o, :] (+ bias[o]) for g < n, o in [o0, o1); W is [rows, k] row-major,
/// input rows ld_in apart, output rows ld_out apart. Allocates nothing.
using RowsGemmFn = void (*)(const float* W, Eigen::Index k, Eigen::Index o0, Eigen::Index o1,
                            const float* in, Eigen::Index ld_in, Eigen::Index n, const float* bias,
                            float* out, Eigen::Index ld_out);
/// One query row's attention over nk key rows for every head (ops.hpp's attend_one in float).
using AttendOneFn = void (*)(const float* q, const float* K, const float* V, Eigen::Index ld,
                             Eigen::Index nk, Eigen::Index heads, Eigen::Index dh, float* scores,
                             float* out, bool accumulate);
/// a[i] = silu(a[i]) * g[i] for i < n.
using SiluGateFn = void (*)(float* a, const float* g, Eigen::Index n);
/// p[0..n) = softmax(p[0..n)) in place.
using SoftmaxFn = void (*)(float* p, Eigen::Index n);
/// The largest of p[0..n), n >= 1.
using MaxOfFn = float (*)(const float* p, Eigen::Index n);
/// p[j] = e^(p[j] - shift) for j < n (shift >= every p[j]); returns their sum.
using ExpSumFn = float (*)(float* p, Eigen::Index n, float shift);
/// Packs input rows [0, rows) (rows <= nr), columns [p0, p0 + kc), into a panel (gemm.inl).
using PackPanelFn = Eigen::Index (*)(const float* in, Eigen::Index ld_in, Eigen::Index rows,
                                     Eigen::Index p0, Eigen::Index kc, float* dst);
/// The packed product's register tiles over weight rows [o0, o1) of a float W (gemm.inl).
using GemmComputeFn = void (*)(const float* W, Eigen::Index ldw, Eigen::Index o0, Eigen::Index o1,
                               Eigen::Index p0, Eigen::Index kc, const float* packed,
                               Eigen::Index rows, const float* bias, float* out,
                               Eigen::Index ld_out, bool load_out);
/// One attention head of many query rows, a panel of them at a time (gemm.inl).
using AttendPanelsFn = void (*)(const float* K, const float* V, Eigen::Index ld_kv, Eigen::Index nk,
                                const float* qp, Eigen::Index nq, Eigen::Index dh, float scale,
                                float* pp, float* mx, float* sum, float* out, Eigen::Index ld_out,
                                bool load_out);
/// out[g, o] (+)= in[g, :] . W[o, :] (+ bias[o]) for g < n, o in [o0, o1), W bf16 or q8.
using QuantRowsFn = void (*)(const WeightMatrix& W, Eigen::Index o0, Eigen::Index o1,
                             const float* in, Eigen::Index ld_in, Eigen::Index n, const float* bias,
                             float* out, Eigen::Index ld_out, bool accumulate);
/// The packed product's register tiles over a WeightMatrix (quant_gemm.inl).
using QuantComputeFn = void (*)(const WeightMatrix& W, Eigen::Index o0, Eigen::Index o1,
                                Eigen::Index p0, Eigen::Index kc, const float* packed,
                                Eigen::Index rows, const float* bias, float* out,
                                Eigen::Index ld_out, bool load_out, float* strip);

/// The kernels of one instruction set; all empty (isa none) when this build or this CPU cannot
/// run it. Every kernel has a portable form (Eigen, `*_portable` in ops.hpp, gemm.hpp and
/// quant_linear.hpp), which double, Isa::none and other CPUs use.
struct KernelTable {
  Isa isa = Isa::none;
  // Few rows (a cache-hit step, S streams): rows_gemm.inl, attention.inl, activation.inl.
  RowsGemmFn rows_gemm = nullptr;
  AttendOneFn attend_one = nullptr;
  SiluGateFn silu_gate = nullptr;
  SoftmaxFn softmax = nullptr;
  MaxOfFn max_of = nullptr;
  ExpSumFn exp_sum = nullptr;
  // The packed product of many rows (gemm.inl), and the resync's attention through its tile.
  Eigen::Index mr = 0;     // weight rows (output columns) per register tile
  Eigen::Index nr = 0;     // input rows per packed panel
  Eigen::Index lanes = 0;  // floats per vector: a panel's width is a multiple of it
  PackPanelFn pack = nullptr;
  GemmComputeFn compute = nullptr;
  AttendPanelsFn attend = nullptr;
  // Over BF16 and Q8 weights (quant_rows.inl, quant_gemm.inl).
  QuantRowsFn quant_rows = nullptr;
  QuantComputeFn quant_compute = nullptr;
};

// Each instruction set's row, filled by kernels/isa.inl: inline in a header-only unit, compiled
// in the precompiled library's kernel units otherwise. Call only on a CPU that runs the set.
#if TCONST_X86_DISPATCH
#if TCONST_USE_PRECOMPILED
KernelTable kernels_avx512();
KernelTable kernels_avx2();
#else
inline KernelTable kernels_avx512();
inline KernelTable kernels_avx2();
#endif
#endif

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
