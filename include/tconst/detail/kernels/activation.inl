// One instruction set's SwiGLU gate (silu_gate_portable in ops.hpp is its portable form). Part of
// isa.inl, after simd.inl.

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {
namespace TCONST_ISA_NS {

using Eigen::Index;

/// a[i] = silu(a[i]) * g[i] = a[i] / (1 + e^-a[i]) * g[i] for i < n (the SwiGLU gate), as
/// a * s * g with s = 1 / (1 + t) for a >= 0 and t / (1 + t) below, t = e^-|a|: the exponent is
/// never positive, so nothing overflows. Each element's result depends on it alone (the tail
/// takes the same arithmetic under a mask), so any split of a row gives the same bits.
inline void silu_gate(float* a, const float* g, Index n) {
  for (Index i = 0; i < n; i += kLanes) {
    const Index m = std::min<Index>(kLanes, n - i);
    const V x = m == kLanes ? vload(a + i) : vload_head(a + i, static_cast<int>(m));
    const V gv = m == kLanes ? vload(g + i) : vload_head(g + i, static_cast<int>(m));
    const V t = vexp_nonpositive(vneg_abs(x));
    const V s = vdiv(vselect_negative(x, vset(1.0f), t), vadd(vset(1.0f), t));
    const V y = vmul(vmul(x, s), gv);
    if (m == kLanes) {
      vstore(a + i, y);
    } else {
      vstore_head(a + i, y, m);
    }
  }
}

}  // namespace TCONST_ISA_NS
}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
