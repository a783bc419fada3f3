#pragma once
// Which vector kernels this process runs: chosen once, at first use, as the widest instruction
// set the CPU supports among those the library was compiled with, capped by TCONST_ISA in the
// environment (avx512_bf16, avx512_vnni, avx512, avx2_vnni, avx2 or none).

#include "tconst/compute.hpp"
#include "tconst/detail/abi.hpp"
#include "tconst/detail/compute_linear.hpp"
#include "tconst/detail/dispatch.hpp"
namespace tconst {
inline namespace TCONST_ABI {

/// "avx512", "avx2" or "none" (portable Eigen code): the instruction set of the float kernels (the
/// base of the active level: avx512_bf16 and avx512_vnni run avx512's, avx2_vnni avx2's).
inline const char* vector_kernels() {
  return detail::isa_name(detail::float_isa(detail::active_isa()));
}

/// The instruction set whose kernels a compute's weight products run on here (SPEC §6.3): for f32,
/// vector_kernels(); for bf16 and int8 the best level, capped by TCONST_ISA, that has that
/// compute's kernels ("avx512_bf16": vdpbf16ps; "avx512_vnni", "avx2_vnni": vpdpbusd; "avx512",
/// "avx2": emulated with float FMAs or exact int16 products; "none": portable loops).
inline const char* compute_kernels(Compute c) {
  if (c == Compute::f32) return vector_kernels();
  return detail::isa_name(detail::compute_kernels(detail::active_isa(), c == Compute::int8).isa);
}

}  // namespace TCONST_ABI
}  // namespace tconst
