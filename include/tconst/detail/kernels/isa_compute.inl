// The row of a level that adds dot-product instructions to a base level (avx2_vnni, avx512_vnni,
// avx512_bf16): its compute-mode kernels (compute.inl) over the base's row, whose float kernels
// (and compute-mode kernels this level does not compile) it keeps, so that its float results are
// the base's bit for bit. Read by kernels/<set>.hpp inside its target region, with isa.inl's
// parameters and TCONST_ISA_BASE, the function that returns the base's row.

// clang-format off
#include "tconst/detail/kernels/simd.inl"
#include "tconst/detail/kernels/gemm.inl"  // store_tile
#include "tconst/detail/kernels/compute.inl"
// clang-format on

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

#if TCONST_USE_PRECOMPILED
KernelTable TCONST_ISA_ENTRY() {
#else
inline KernelTable TCONST_ISA_ENTRY() {
#endif
  KernelTable t = TCONST_ISA_BASE();
  t.isa = TCONST_ISA_LEVEL;
  TCONST_ISA_NS::fill_compute(t);
  return t;
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst

#undef TCONST_ISA_NS
#undef TCONST_ISA_ENTRY
#undef TCONST_ISA_BASE
#undef TCONST_ISA_LANES
#undef TCONST_ISA_ROWS
#undef TCONST_ISA_GROUP
#undef TCONST_ISA_MR
#undef TCONST_ISA_NV
#undef TCONST_ISA_LEVEL
#undef TCONST_CK_BF16
#undef TCONST_CK_INT8
