#pragma once
// The kernels compiled for AVX2 and FMA: the avx2 row of the kernel table (compute modes: BF16
// widened to float, int8 by the sign trick).

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "tconst/detail/kernel_table.hpp"

// clang-format off (the order of these includes is the point)
#include "tconst/detail/kernels/target_avx2_begin.inl"
#define TCONST_ISA_NS avx2
#define TCONST_ISA_ENTRY kernels_avx2
#define TCONST_ISA_LANES 8
#define TCONST_ISA_ROWS 4
#define TCONST_ISA_GROUP 2
#define TCONST_ISA_MR 6
#define TCONST_ISA_NV 2
#define TCONST_ISA_LEVEL Isa::avx2
#define TCONST_CK_BF16 1
#define TCONST_CK_INT8 1
#include "tconst/detail/kernels/isa.inl"
#include "tconst/detail/kernels/target_end.inl"
// clang-format on
