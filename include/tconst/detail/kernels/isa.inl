// Every kernel of one instruction set and the row of the kernel table (kernel_table.hpp) that
// lists them. Read by kernels/<set>.hpp once, inside a region that compiles every function for
// that set, with these defined (undefined at the end):
//   TCONST_ISA_NS      the set's namespace (avx512, avx2) in tconst::detail
//   TCONST_ISA_ENTRY   the function that returns the set's row (kernels_avx512, ...)
//   TCONST_ISA_LANES   floats per vector (16: AVX-512, 8: AVX2 + FMA)
//   TCONST_ISA_ROWS, TCONST_ISA_GROUP   the few-row product's register block (rows_gemm.inl)
//   TCONST_ISA_MR, TCONST_ISA_NV        the packed product's register tile (gemm.inl)
//   TCONST_ISA_LEVEL   the set's value of Isa
//   TCONST_CK_BF16, TCONST_CK_INT8      which compute-mode kernels it compiles (compute.inl)
// The files below are this layer's only per-set code; the drivers that call them (ops.hpp,
// gemm.hpp, quant_linear.hpp) are the same for every set.

// clang-format off
#include "tconst/detail/kernels/simd.inl"  // first: the vector type the others are written in
#include "tconst/detail/kernels/rows_gemm.inl"
#include "tconst/detail/kernels/activation.inl"
#include "tconst/detail/kernels/attention.inl"
#include "tconst/detail/kernels/gemm.inl"
#include "tconst/detail/kernels/quant_rows.inl"
#include "tconst/detail/kernels/quant_gemm.inl"  // uses gemm.inl's tile, quant_rows.inl's strips
#include "tconst/detail/kernels/compute.inl"  // uses gemm.inl's store_tile
// clang-format on

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

#if TCONST_USE_PRECOMPILED
KernelTable TCONST_ISA_ENTRY() {
#else
inline KernelTable TCONST_ISA_ENTRY() {
#endif
  namespace k = TCONST_ISA_NS;
  KernelTable t;
  t.isa = TCONST_ISA_LEVEL;
  t.rows_gemm = &k::rows_gemm;
  t.attend_one = &k::attend_one;
  t.silu_gate = &k::silu_gate;
  t.softmax = &k::softmax;
  t.max_of = &k::max_of;
  t.exp_sum = &k::exp_sum;
  t.mr = k::kMr;
  t.nr = k::kNr;
  t.lanes = k::kLanes;
  t.pack = &k::pack_panel;
  t.compute = &k::compute;
  t.attend = &k::attend_panels;
  t.quant_rows = &k::quant_rows;
  t.quant_compute = &k::compute_quant;
  k::fill_compute(t);
  return t;
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst

#undef TCONST_ISA_NS
#undef TCONST_ISA_ENTRY
#undef TCONST_ISA_LANES
#undef TCONST_ISA_ROWS
#undef TCONST_ISA_GROUP
#undef TCONST_ISA_MR
#undef TCONST_ISA_NV
#undef TCONST_ISA_LEVEL
#undef TCONST_CK_BF16
#undef TCONST_CK_INT8
