#pragma once
// The one table of vector kernels: what each instruction set provides, as function pointers. Each
// instruction set fills its row in one place (kernels/isa.inl, compiled once per set); dispatch.hpp
// picks the row this CPU runs. A new instruction set is a new row: a kernels/<set>.hpp that opens
// its target region and reads isa.inl, a value of Isa, and its CPU check in dispatch.hpp. A level
// that only adds dot-product instructions (the *_vnni and *_bf16 levels) reads compute.inl alone
// and takes every other entry from its base level's row (avx2 or avx512).

#include <Eigen/Core>
#include <cstdint>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/weight_matrix.hpp"

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

/// The instruction sets the kernels exist for, best last. avx2_vnni: AVX2 + FMA + AVX-VNNI;
/// avx512_vnni: AVX-512 F/BW/VL/DQ + VNNI; avx512_bf16: that + AVX512-BF16. Their float kernels
/// are their base level's (avx2, avx512); they differ in the compute modes' products only.
enum class Isa { none, avx2, avx2_vnni, avx512, avx512_vnni, avx512_bf16 };
/// Values of Isa.
constexpr int kIsaCount = 6;

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

/// Input rows in compute-mode form (compute_linear.hpp), row-major in 32-bit units: bf16 mode two
/// adjacent columns rounded to BF16 (column 2u in the low half), int8 mode four adjacent columns
/// quantized per block (SPEC §6.1's reference quantizer) and stored as q + 128 in unsigned bytes.
/// Columns past k are 0 (bf16) or q = 0 (int8). Rows [0, n) of `in` go to dst (rows ld_dst units
/// apart); int8 also writes each block's scale to scales (rows ld_s apart): NaN for a block with
/// a non-finite value (whose q are then 0), so that the outputs it touches are NaN.
using Bf16PrepareFn = void (*)(const float* in, Eigen::Index ld_in, Eigen::Index n, Eigen::Index k,
                               uint32_t* dst, Eigen::Index ld_dst);
using Int8PrepareFn = void (*)(const float* in, Eigen::Index ld_in, Eigen::Index n, Eigen::Index k,
                               Eigen::Index block, uint32_t* dst, Eigen::Index ld_dst,
                               float* scales, Eigen::Index ld_s);
/// Packs prepared rows [0, rows) (rows <= the set's panel rows), units [u0, u0 + ku), into a panel
/// of width = rows rounded up to whole vectors: dst[u * width + r] = src[r * ld + u0 + u], 0 for
/// r >= rows. Returns the width.
using UnitPackFn = Eigen::Index (*)(const uint32_t* src, Eigen::Index ld, Eigen::Index rows,
                                    Eigen::Index u0, Eigen::Index ku, uint32_t* dst);
/// bf16 mode: out[j, o] (+)= sum over columns [p0, p0 + kc) of x[j, c] W[o, c] (+ bias[o]) for o
/// in [o0, o1), the `rows` input rows packed panel after panel (UnitPackFn, p0 even) in `packed`.
using Bf16ComputeFn = void (*)(const WeightMatrix& W, Eigen::Index o0, Eigen::Index o1,
                               Eigen::Index p0, Eigen::Index kc, const uint32_t* packed,
                               Eigen::Index rows, const float* bias, float* out,
                               Eigen::Index ld_out, bool load_out);
/// bf16 mode, few rows: the `rows` prepared input rows (ceil(k / 2) units apart) over all of W's
/// columns: one row by a GEMV along k, more by blocks of weight rows and input rows, each pair a
/// vector of sums along k.
using Bf16RowsFn = void (*)(const WeightMatrix& W, Eigen::Index o0, Eigen::Index o1,
                            const uint32_t* prepared, Eigen::Index rows, const float* bias,
                            float* out, Eigen::Index ld_out, bool load_out);
/// int8 mode over a Q8 W, the same with the blocks of columns [p0, p0 + kc) (p0 a multiple of the
/// block): sums[o * blocks + b] = the sum of W's q over block b of row o; sx: the input rows' block
/// scales in panel layout, panel j0 at sx + j0 * blocks, block b of it at b * (panel width).
using Int8ComputeFn = void (*)(const WeightMatrix& W, const int32_t* sums, Eigen::Index o0,
                               Eigen::Index o1, Eigen::Index p0, Eigen::Index kc,
                               const uint32_t* packed, const float* sx, Eigen::Index rows,
                               const float* bias, float* out, Eigen::Index ld_out, bool load_out);
/// int8 mode, few rows: the `rows` input rows over all of W's columns, both prepared (rows
/// ceil(k / 4) units apart, their scales `scales`, W.blocks() apart) and packed (sx as for
/// Int8ComputeFn); one row takes a GEMV along k.
using Int8RowsFn = void (*)(const WeightMatrix& W, const int32_t* sums, Eigen::Index o0,
                            Eigen::Index o1, const uint32_t* prepared, const float* scales,
                            const uint32_t* packed, const float* sx, Eigen::Index rows,
                            const float* bias, float* out, Eigen::Index ld_out, bool load_out);
/// bf16 mode, one head of the resync's attention (SPEC §6.3; compute.inl's bf16_attend): the nq
/// queries in unit panels at qp (rounded to BF16 by Bf16PrepareFn, packed by UnitPackFn, panel j0
/// at qp + j0 * ceil(dh / 2)), the nk keys K [nk, ceil(dh / 2)] in units, the values Vp
/// [ceil(nk / 2), dh] in units pairing rows 2u and 2u + 1 per column; pp holds cnr * nk floats.
/// Normalised (out overwritten) when mx is nullptr, else one step of an online softmax with the
/// rows' running power-of-two exponent mx and sum.
/// bf16 mode: pairs of rows rounded to BF16, dst[u * k + e] = bf16(in[2u, e]) (low half) and
/// bf16(in[2u + 1, e]) (high half, 0 past row n - 1) for u < ceil(n / 2), e < k.
using Bf16PairRowsFn = void (*)(const float* in, Eigen::Index ld_in, Eigen::Index n, Eigen::Index k,
                                uint32_t* dst);
using AttendBf16Fn = void (*)(const uint32_t* K, const uint32_t* Vp, Eigen::Index nk,
                              const uint32_t* qp, Eigen::Index nq, Eigen::Index dh, float scale,
                              float* pp, float* mx, float* sum, float* out, Eigen::Index ld_out);

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
  // The compute modes (compute.inl): bf16 (activations rounded to BF16, BF16 W) and int8
  // (activations quantized per block, Q8 W). `rows`: few input rows (GEMVs and row blocks for bf16,
  // a GEMV and tiles for int8); `compute`: the packed product's tiles. Panels hold cnr input rows,
  // clanes per vector.
  Eigen::Index cnr = 0;
  Eigen::Index clanes = 0;
  UnitPackFn unit_pack = nullptr;
  Bf16PrepareFn bf16_prepare = nullptr;
  Bf16RowsFn bf16_rows = nullptr;
  Bf16ComputeFn bf16_compute = nullptr;
  AttendBf16Fn attend_bf16 = nullptr;
  Bf16PairRowsFn bf16_pair_rows = nullptr;
  Int8PrepareFn int8_prepare = nullptr;
  Int8RowsFn int8_rows = nullptr;
  Int8ComputeFn int8_compute = nullptr;
};

// Each instruction set's row, filled by kernels/isa.inl: inline in a header-only unit, compiled
// in the precompiled library's kernel units otherwise. Call only on a CPU that runs the set.
#if TCONST_X86_DISPATCH
#if TCONST_USE_PRECOMPILED
KernelTable kernels_avx512_bf16();
KernelTable kernels_avx512_vnni();
KernelTable kernels_avx512();
KernelTable kernels_avx2_vnni();
KernelTable kernels_avx2();
#else
inline KernelTable kernels_avx512_bf16();
inline KernelTable kernels_avx512_vnni();
inline KernelTable kernels_avx512();
inline KernelTable kernels_avx2_vnni();
inline KernelTable kernels_avx2();
#endif
#endif

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
