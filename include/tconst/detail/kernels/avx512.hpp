#pragma once
// The kernels compiled for AVX-512 (with AVX2 and FMA): the avx512 row of the kernel table
// (compute modes: BF16 widened to float; int8 is avx2's, as AVX-512 F has no byte products).

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "tconst/detail/kernel_table.hpp"

// clang-format off (the order of these includes is the point)
#include "tconst/detail/kernels/target_avx512_begin.inl"
#define TCONST_ISA_NS avx512
#define TCONST_ISA_ENTRY kernels_avx512
#define TCONST_ISA_LANES 16
#define TCONST_ISA_ROWS 4
#define TCONST_ISA_GROUP 4
#define TCONST_ISA_MR 12
#define TCONST_ISA_NV 2
#define TCONST_ISA_LEVEL Isa::avx512
#define TCONST_CK_BF16 1
#define TCONST_CK_INT8 0
#include "tconst/detail/kernels/isa.inl"
#include "tconst/detail/kernels/target_end.inl"
// clang-format on
