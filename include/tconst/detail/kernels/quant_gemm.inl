// One instruction set's register-tile step of the packed product over BF16 or Q8 weights
// (quant_linear.hpp): for each tile of weight rows, the rows' columns of this pass are widened to
// float once (quant_rows.inl's widen_strip, exactly the dequantized values) into a per-thread
// strip, which gemm.inl's float tile then reads in place of W against every packed panel of the
// block. Part of isa.inl, after gemm.inl and quant_rows.inl.

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {
namespace TCONST_ISA_NS {

/// out[j, o] (+)= in[j, p0:p0+kc] . W[o, p0:p0+kc] (+ bias[o]) for o in [o0, o1) and the `rows`
/// input rows packed panel after panel in `packed` (gemm.inl's compute for a WeightMatrix).
/// `strip` holds kMr * kc floats, 64-byte aligned.
inline void compute_quant(const WeightMatrix& W, Index o0, Index o1, Index p0, Index kc,
                          const float* packed, Index rows, const float* bias, float* out,
                          Index ld_out, bool load_out, float* strip) {
  for (Index op = o0; op < o1; op += kMr) {
    const int m = static_cast<int>(std::min<Index>(kMr, o1 - op));
    widen_strip(W, op, m, p0, kc, strip);
    // The next tile's weights come into L2 while this one computes (widening has no arithmetic
    // to hide a miss behind; the float tile reads its weights as it goes).
    if (op + kMr < o1) {
      fetch_strip(W, op + kMr, std::min<Index>(kMr, o1 - op - kMr), p0, kc);
    }
    const float* b = bias != nullptr ? bias + op : nullptr;
    for (Index j0 = 0; j0 < rows; j0 += kNr) {
      const Index r = std::min<Index>(kNr, rows - j0);
      const int nv = static_cast<int>((r + kLanes - 1) / kLanes);
      const TileFn fn = m == kMr && nv == kNv ? &tile<kMr, kNv> : tile_for(m, nv);
      fn(strip, kc, packed + j0 * kc, kc, b, out + j0 * ld_out + op, ld_out, r, load_out);
    }
  }
}

}  // namespace TCONST_ISA_NS
}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
