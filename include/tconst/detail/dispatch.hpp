#pragma once
// The run-time choice of vector kernels: the widest instruction set this CPU runs among those the
// build has (kernel_table.hpp), so that a build for the baseline x86-64 still runs at the
// machine's vector width. TCONST_ISA=avx512|avx2|none in the environment caps the choice (read
// once, on first use), for comparing the paths; a choice the CPU cannot run falls back to the next
// one down. Without kernels (Isa::none, double, other CPUs) every driver takes its portable form.

#include <cstdlib>
#include <cstring>

#include "tconst/detail/kernel_table.hpp"

#if TCONST_X86_DISPATCH && TCONST_KERNELS_HERE
#include "tconst/detail/kernels/avx2.hpp"
#include "tconst/detail/kernels/avx512.hpp"
#endif

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

/// The kernels of exactly `isa` (empty where this build or this CPU cannot run it), looked up once
/// per instruction set.
inline const KernelTable& kernels(Isa isa) {
  struct Rows {
    KernelTable row[3];  // by Isa
  };
  static const Rows rows = [] {
    Rows r;
#if TCONST_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) r.row[1] = kernels_avx2();
    if (__builtin_cpu_supports("avx512f")) r.row[2] = kernels_avx512();
#endif
    return r;
  }();
  return rows.row[static_cast<int>(isa)];
}

/// The kernels of `isa`, or of the best instruction set below it that this build and CPU run.
inline const KernelTable& kernels_at_most(Isa isa) {
  for (int i = static_cast<int>(isa); i > 0; --i) {
    const KernelTable& t = kernels(static_cast<Isa>(i));
    if (t.isa != Isa::none) return t;
  }
  return kernels(Isa::none);
}

/// Name of an instruction set as TCONST_ISA spells it.
inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    case Isa::none:
      break;
  }
  return "none";
}

/// The instruction set the kernels use in this process: the best one the CPU runs, capped by
/// TCONST_ISA. Chosen once.
inline Isa active_isa() {
  static const Isa chosen = [] {
    Isa cap = Isa::avx512;
    if (const char* env = std::getenv("TCONST_ISA")) {
      if (std::strcmp(env, "avx2") == 0) cap = Isa::avx2;
      if (std::strcmp(env, "none") == 0) cap = Isa::none;
    }
    return kernels_at_most(cap).isa;
  }();
  return chosen;
}

/// The kernels of active_isa(): every field nullptr for Isa::none (then use the portable forms).
inline const KernelTable& active_kernels() {
  return kernels(active_isa());
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
