// Every kernel of one instruction set, for dispatch.hpp, which reads this file once per
// instruction set inside a region that compiles every function for that set, with its parameters
// defined: TCONST_ISA_NS (namespace), TCONST_ISA_LANES (16: AVX-512, 8: AVX2 + FMA),
// TCONST_ISA_ROWS and TCONST_ISA_GROUP (the few-row product's register block). Undefines them at
// its end. No include guard: it is read once per instruction set.

// In this order: the vector type and operations first, the kernels written in them after.
#include "tconst/detail/kernels/simd.inl"
// clang-format off
#include "tconst/detail/kernels/rows_gemm.inl"
#include "tconst/detail/kernels/activation.inl"
#include "tconst/detail/kernels/attention.inl"
// clang-format on

#undef TCONST_ISA_NS
#undef TCONST_ISA_LANES
#undef TCONST_ISA_ROWS
#undef TCONST_ISA_GROUP
