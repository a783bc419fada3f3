#pragma once
// Which vector kernels this process runs: chosen once, at first use, as the widest instruction
// set the CPU supports among those the library was compiled with, capped by TCONST_ISA in the
// environment (avx512, avx2 or none).

#include "tconst/detail/kernels/dispatch.hpp"

namespace tconst {

/// "avx512", "avx2" or "none" (portable Eigen code): the instruction set of the float kernels.
inline const char* vector_kernels() {
  return detail::isa_name(detail::active_isa());
}

}  // namespace tconst
