#pragma once
// The avx2_vnni row of the kernel table: avx2's, with the int8 mode's products by AVX-VNNI's
// vpdpbusd on 8 lanes.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "tconst/detail/kernel_table.hpp"

// clang-format off (the order of these includes is the point)
#include "tconst/detail/kernels/target_avx2_vnni_begin.inl"
#define TCONST_ISA_NS avx2_vnni
#define TCONST_ISA_ENTRY kernels_avx2_vnni
#define TCONST_ISA_BASE kernels_avx2
#define TCONST_ISA_LANES 8
#define TCONST_ISA_ROWS 4
#define TCONST_ISA_GROUP 2
#define TCONST_ISA_MR 6
#define TCONST_ISA_NV 2
#define TCONST_ISA_LEVEL Isa::avx2_vnni
#define TCONST_CK_BF16 0
#define TCONST_CK_INT8 2
#include "tconst/detail/kernels/isa_compute.inl"
#include "tconst/detail/kernels/target_end.inl"
// clang-format on
