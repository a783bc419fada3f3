#pragma once
// Which vector kernels this process runs: chosen once, at first use, as the widest instruction
// set the CPU supports among those the library was compiled with, capped by TCONST_ISA in the
// environment (avx512_bf16, avx512_vnni, avx512, avx2_vnni, avx2 or none).

#include "tconst/detail/abi.hpp"
#include "tconst/detail/dispatch.hpp"
namespace tconst {
inline namespace TCONST_ABI {

/// "avx512", "avx2" or "none" (portable Eigen code): the instruction set of the float kernels (the
/// base of the active level: avx512_bf16 and avx512_vnni run avx512's, avx2_vnni avx2's).
inline const char* vector_kernels() {
  return detail::isa_name(detail::float_isa(detail::active_isa()));
}

}  // namespace TCONST_ABI
}  // namespace tconst
