#pragma once
// The avx512_bf16 row of the kernel table: avx512_vnni's, with the bf16 mode's products by
// AVX512-BF16's vdpbf16ps on 16 lanes.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "tconst/detail/kernel_table.hpp"

// clang-format off (the order of these includes is the point)
#include "tconst/detail/kernels/target_avx512_bf16_begin.inl"
#define TCONST_ISA_NS avx512_bf16
#define TCONST_ISA_ENTRY kernels_avx512_bf16
#define TCONST_ISA_BASE kernels_avx512_vnni
#define TCONST_ISA_LANES 16
#define TCONST_ISA_ROWS 4
#define TCONST_ISA_GROUP 4
#define TCONST_ISA_MR 12
#define TCONST_ISA_NV 2
#define TCONST_ISA_LEVEL Isa::avx512_bf16
#define TCONST_CK_BF16 2
#define TCONST_CK_INT8 0
#include "tconst/detail/kernels/isa_compute.inl"
#include "tconst/detail/kernels/target_end.inl"
// clang-format on
