#pragma once
// The float kernels that are the product, compiled for AVX-512 and for AVX2 + FMA, and the
// run-time choice between them, so that a build for the baseline x86-64 still runs at the
// machine's vector width:
//   rows_gemm.inl   few-row matrix products, out[n, o] = in[n, k] W[o, k]^T (+ bias): one row (a
//                   cache-hit step) or a handful (S streams stepped together), no packing;
//   attention.inl   one query row's attention over a cache of keys and values, every head, and
//                   the softmax;
//   activation.inl  the SwiGLU gate;
//   simd.inl        the vector type and operations they are written in.
// Every kernel has a portable form in ops.hpp (Eigen), which other compilers and CPUs, double
// precision and TCONST_ISA=none use, and which the tests check the kernels against.
//
// TCONST_ISA=avx512|avx2|none in the environment caps the choice (read once, on first use), for
// comparing the paths; a choice the CPU cannot run falls back to the next one down.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#if !defined(TCONST_NO_DISPATCH) && (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define TCONST_X86_DISPATCH 1
#include <immintrin.h>
#else
#define TCONST_X86_DISPATCH 0
#endif

#if TCONST_X86_DISPATCH

#include "tconst/detail/kernels/target_avx512_begin.inl"
#define TCONST_ISA_NS avx512
#define TCONST_ISA_LANES 16
#define TCONST_ISA_ROWS 4
#define TCONST_ISA_GROUP 4
#include "tconst/detail/kernels/kernels.inl"  // undefines the four TCONST_ISA_ macros
#include "tconst/detail/kernels/target_avx2_begin.inl"
#include "tconst/detail/kernels/target_end.inl"
#define TCONST_ISA_NS avx2
#define TCONST_ISA_LANES 8
#define TCONST_ISA_ROWS 4
#define TCONST_ISA_GROUP 2
#include "tconst/detail/kernels/kernels.inl"  // undefines the four TCONST_ISA_ macros
#include "tconst/detail/kernels/target_end.inl"

#endif  // TCONST_X86_DISPATCH

namespace tconst {
namespace detail {

/// The instruction sets a few-row kernel exists for, best last.
enum class Isa { none, avx2, avx512 };

/// out[g, o] = in[g, :] . W[o, :] (+ bias[o]) for g < n, o in [o0, o1); W is [rows, k] row-major,
/// input rows ld_in apart, output rows ld_out apart. Allocates nothing.
using RowsGemmFn = void (*)(const float* W, Eigen::Index k, Eigen::Index o0, Eigen::Index o1,
                            const float* in, Eigen::Index ld_in, Eigen::Index n, const float* bias,
                            float* out, Eigen::Index ld_out);

/// One query row's attention over nk key rows for every head (ops.hpp's attend_one in float).
using AttendOneFn = void (*)(const float* q, const float* K, const float* V, Eigen::Index ld,
                             Eigen::Index nk, Eigen::Index heads, Eigen::Index dh, float* scores,
                             float* out, bool accumulate);

/// a[i] = silu(a[i]) * g[i] for i < n.
using SiluGateFn = void (*)(float* a, const float* g, Eigen::Index n);

/// p[0..n) = softmax(p[0..n)) in place.
using SoftmaxFn = void (*)(float* p, Eigen::Index n);

/// The largest of p[0..n), n >= 1.
using MaxOfFn = float (*)(const float* p, Eigen::Index n);

/// p[j] = e^(p[j] - shift) for j < n (shift >= every p[j]); returns their sum.
using ExpSumFn = float (*)(float* p, Eigen::Index n, float shift);

/// The kernels of one instruction set; all nullptr when this build or this CPU cannot run it.
struct Kernels {
  RowsGemmFn rows_gemm = nullptr;
  AttendOneFn attend_one = nullptr;
  SiluGateFn silu_gate = nullptr;
  SoftmaxFn softmax = nullptr;
  MaxOfFn max_of = nullptr;
  ExpSumFn exp_sum = nullptr;
};

/// The kernels for `isa` (checked against the CPU once per call).
inline Kernels kernels_for(Isa isa) {
#if TCONST_X86_DISPATCH
  __builtin_cpu_init();
  switch (isa) {
    case Isa::avx512:
      if (__builtin_cpu_supports("avx512f")) {
        return {&avx512::rows_gemm, &avx512::attend_one, &avx512::silu_gate,
                &avx512::softmax,   &avx512::max_of,     &avx512::exp_sum};
      }
      return {};
    case Isa::avx2:
      if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return {&avx2::rows_gemm, &avx2::attend_one, &avx2::silu_gate,
                &avx2::softmax,   &avx2::max_of,     &avx2::exp_sum};
      }
      return {};
    case Isa::none:
      return {};
  }
#endif
  (void)isa;
  return {};
}

/// The product kernel for `isa`, or nullptr when this build or this CPU cannot run it.
inline RowsGemmFn rows_gemm_for(Isa isa) {
  return kernels_for(isa).rows_gemm;
}
/// The attention kernel for `isa`, or nullptr.
inline AttendOneFn attend_one_for(Isa isa) {
  return kernels_for(isa).attend_one;
}
/// The SwiGLU gate kernel for `isa`, or nullptr.
inline SiluGateFn silu_gate_for(Isa isa) {
  return kernels_for(isa).silu_gate;
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

/// The instruction set the few-row kernel uses in this process: the best one the CPU runs, capped
/// by TCONST_ISA. Chosen once.
inline Isa active_isa() {
  static const Isa chosen = [] {
    Isa cap = Isa::avx512;
    if (const char* env = std::getenv("TCONST_ISA")) {
      if (std::strcmp(env, "avx2") == 0) cap = Isa::avx2;
      if (std::strcmp(env, "none") == 0) cap = Isa::none;
    }
    for (Isa isa : {Isa::avx512, Isa::avx2}) {
      if (static_cast<int>(isa) <= static_cast<int>(cap) && rows_gemm_for(isa) != nullptr) {
        return isa;
      }
    }
    return Isa::none;
  }();
  return chosen;
}

/// The kernels of active_isa(), looked up once.
inline const Kernels& active_kernels() {
  static const Kernels k = kernels_for(active_isa());
  return k;
}

/// The kernel of active_isa(), or nullptr (then use Eigen).
inline RowsGemmFn active_rows_gemm() {
  return active_kernels().rows_gemm;
}
/// The gate kernel of active_isa(), or nullptr (then use Eigen).
inline SiluGateFn active_silu_gate() {
  return active_kernels().silu_gate;
}
/// The attention kernel of active_isa(), or nullptr (then use Eigen).
inline AttendOneFn active_attend_one() {
  return active_kernels().attend_one;
}

}  // namespace detail
}  // namespace tconst
