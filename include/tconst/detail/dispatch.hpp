#pragma once
// The run-time choice of vector kernels: the widest instruction set this CPU runs among those the
// build has (kernel_table.hpp), so that a build for the baseline x86-64 still runs at the
// machine's vector width. TCONST_ISA=avx512_bf16|avx512_vnni|avx512|avx2_vnni|avx2|none in the
// environment caps the choice (read once, on first use), for comparing the paths; a choice the CPU
// cannot run falls back to the next one down. Without kernels (Isa::none, double, other CPUs) every
// driver takes its portable form.

#include <cstdlib>
#include <cstring>

#include "tconst/detail/abi.hpp"
#if TCONST_X86_DISPATCH
#include <cpuid.h>
#endif

#include "tconst/detail/kernel_table.hpp"

#if TCONST_X86_DISPATCH && TCONST_KERNELS_HERE
#include "tconst/detail/kernels/avx2.hpp"
#include "tconst/detail/kernels/avx2_vnni.hpp"
#include "tconst/detail/kernels/avx512.hpp"
#include "tconst/detail/kernels/avx512_bf16.hpp"
#include "tconst/detail/kernels/avx512_vnni.hpp"
#endif

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

#if TCONST_X86_DISPATCH
/// Whether the CPU has AVX-VNNI (CPUID leaf 7, sub-leaf 1, EAX bit 4): read directly, as not
/// every compiler's __builtin_cpu_supports knows the name.
inline bool has_avx_vnni() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 1, a, b, c, d);
  return (a >> 4) & 1u;
}
#endif

/// The kernels of exactly `isa` (empty where this build or this CPU cannot run it), looked up once
/// per instruction set.
inline const KernelTable& kernels(Isa isa) {
  struct Rows {
    KernelTable row[kIsaCount];  // by Isa
  };
  static const Rows rows = [] {
    Rows r;
#if TCONST_X86_DISPATCH
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
    const bool avx512_vnni =
        avx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
    if (avx2) r.row[static_cast<int>(Isa::avx2)] = kernels_avx2();
    if (avx2 && has_avx_vnni()) {
      r.row[static_cast<int>(Isa::avx2_vnni)] = kernels_avx2_vnni();
    }
    if (avx512) r.row[static_cast<int>(Isa::avx512)] = kernels_avx512();
    if (avx512_vnni) r.row[static_cast<int>(Isa::avx512_vnni)] = kernels_avx512_vnni();
    if (avx512_vnni && __builtin_cpu_supports("avx512bf16")) {
      r.row[static_cast<int>(Isa::avx512_bf16)] = kernels_avx512_bf16();
    }
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
    case Isa::avx512_bf16:
      return "avx512_bf16";
    case Isa::avx512_vnni:
      return "avx512_vnni";
    case Isa::avx512:
      return "avx512";
    case Isa::avx2_vnni:
      return "avx2_vnni";
    case Isa::avx2:
      return "avx2";
    case Isa::none:
      break;
  }
  return "none";
}

/// The level whose float kernels `isa` uses (each level's float entries are its base's).
inline Isa float_isa(Isa isa) {
  switch (isa) {
    case Isa::avx512_bf16:
    case Isa::avx512_vnni:
    case Isa::avx512:
      return Isa::avx512;
    case Isa::avx2_vnni:
    case Isa::avx2:
      return Isa::avx2;
    case Isa::none:
      break;
  }
  return Isa::none;
}

/// The instruction set the kernels use in this process: the best one the CPU runs, capped by
/// TCONST_ISA. Chosen once.
inline Isa active_isa() {
  static const Isa chosen = [] {
    Isa cap = static_cast<Isa>(kIsaCount - 1);
    if (const char* env = std::getenv("TCONST_ISA")) {
      for (int i = 0; i < kIsaCount; ++i) {
        if (std::strcmp(env, isa_name(static_cast<Isa>(i))) == 0) cap = static_cast<Isa>(i);
      }
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
