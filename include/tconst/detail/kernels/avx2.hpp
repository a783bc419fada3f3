#pragma once
// The kernels compiled for AVX2 and FMA: the avx2 row of the kernel table.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

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
#include "tconst/detail/kernels/isa.inl"
#include "tconst/detail/kernels/target_end.inl"
// clang-format on
