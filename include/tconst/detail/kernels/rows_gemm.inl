// One instruction set's few-row matrix product, out[n, o] = in[n, k] W[o, k]^T (+ bias): each
// weight row is read once and multiplied against every input row while it is in registers (no
// packing), which is what a cache-hit step (one row) or S streams stepped together (S rows) need.
// TCONST_ISA_ROWS and TCONST_ISA_GROUP give the register block: weight rows by input rows. Part of
// isa.inl, after simd.inl.

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {
namespace TCONST_ISA_NS {

using Eigen::Index;

/// acc[r][g] += W[r, c..c+L) * in[g, c..c+L) over one vector of columns (`head` > 0: only the
/// first `head` columns are there); with Fetch, the same columns of the next R rows are fetched.
template <int R, int G, bool Fetch>
inline void accumulate(V (&acc)[R][G], const float* W, Index k, const float* in, Index ld_in,
                       Index c, int head) {
  V x[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    x[g] = head > 0 ? vload_head(in + g * ld_in + c, head) : vload(in + g * ld_in + c);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const V w = head > 0 ? vload_head(W + r * k + c, head) : vload(W + r * k + c);
    // The same columns of the next block of rows: R * k floats on, about one block's time
    // ahead of the loads (prefetching past the matrix's end is harmless).
    if constexpr (Fetch) {
      _mm_prefetch(reinterpret_cast<const char*>(W + (R + r) * k + c), _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[r][g] = vfma(w, x[g], acc[r][g]);
  }
}

/// out[g * ld_out + r] = the sum of acc[r][g]'s lanes (+ bias[r]).
template <int R, int G>
inline void store_sums(V (&acc)[R][G], const float* bias, float* out, Index ld_out) {
#if TCONST_ISA_LANES == 16
  if constexpr (R == 4 && G == 4) {
    // Lane 4g + r of the tree's result is acc[r][g], so 128-bit lane g is out[g, 0..4).
    V e = sum_tree(&acc[0][0]);
    if (bias != nullptr) e = _mm512_add_ps(e, _mm512_broadcast_f32x4(_mm_loadu_ps(bias)));
    _mm_storeu_ps(out, _mm512_castps512_ps128(e));
    _mm_storeu_ps(out + ld_out, _mm512_extractf32x4_ps(e, 1));
    _mm_storeu_ps(out + 2 * ld_out, _mm512_extractf32x4_ps(e, 2));
    _mm_storeu_ps(out + 3 * ld_out, _mm512_extractf32x4_ps(e, 3));
    return;
  }
#endif
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const float b = bias != nullptr ? bias[r] : 0.0f;
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) out[g * ld_out + r] = vsum(acc[r][g]) + b;
  }
}

/// out[g, r] = in[g, :] . W[r, :] (+ bias[r]) for R weight rows and G input rows, all in registers
/// (with Fetch, the next R weight rows are fetched meanwhile).
template <int R, int G, bool Fetch>
inline void block(const float* W, Index k, const float* in, Index ld_in, const float* bias,
                  float* out, Index ld_out) {
  V acc[R][G];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[r][g] = vzero();
  }
  Index c = 0;
  for (; c + kLanes <= k; c += kLanes) accumulate<R, G, Fetch>(acc, W, k, in, ld_in, c, 0);
  if (c < k) accumulate<R, G, Fetch>(acc, W, k, in, ld_in, c, static_cast<int>(k - c));
  store_sums<R, G>(acc, bias, out, ld_out);
}

/// block<R, G> for the last `rem` (< kGroup) input rows, G counting down to rem.
template <int R, int G>
inline void last_group(Index rem, const float* W, Index k, const float* in, Index ld_in,
                       const float* bias, float* out, Index ld_out, bool fetch) {
  if constexpr (G > 0) {
    if (rem == G && fetch) {
      block<R, G, true>(W, k, in, ld_in, bias, out, ld_out);
    } else if (rem == G) {
      block<R, G, false>(W, k, in, ld_in, bias, out, ld_out);
    } else {
      last_group<R, G - 1>(rem, W, k, in, ld_in, bias, out, ld_out, fetch);
    }
  }
}

/// Every group of up to kGroup input rows against R weight rows (those stay in L1 meanwhile).
/// The next R weight rows are fetched during the second pass over these (or the only one): the
/// first pass waits on memory for its own rows anyway, the second computes from L1 while memory
/// brings the next ones (docs/benchmarks.md has what this and the alternatives measured).
template <int R>
inline void row_block(const float* W, Index k, const float* in, Index ld_in, Index n,
                      const float* bias, float* out, Index ld_out) {
  Index g0 = 0;
  for (; g0 + kGroup <= n; g0 += kGroup) {
    if (n <= kGroup || g0 == kGroup) {
      block<R, kGroup, true>(W, k, in + g0 * ld_in, ld_in, bias, out + g0 * ld_out, ld_out);
    } else {
      block<R, kGroup, false>(W, k, in + g0 * ld_in, ld_in, bias, out + g0 * ld_out, ld_out);
    }
  }
  last_group<R, kGroup - 1>(n - g0, W, k, in + g0 * ld_in, ld_in, bias, out + g0 * ld_out, ld_out,
                            n <= kGroup || g0 == kGroup);
}

/// out[g, o] = in[g, :] . W[o, :] (+ bias[o]) for g < n, o in [o0, o1); W is [rows, k] row-major.
inline void rows_gemm(const float* W, Index k, Index o0, Index o1, const float* in, Index ld_in,
                      Index n, const float* bias, float* out, Index ld_out) {
  // Many input rows (a resync's chunk) go in tiles that stay in L2 while the weights pass by.
  constexpr Index kTileBytes = Index{256} << 10;
  const Index tile =
      std::max<Index>(kGroup, kTileBytes / (k * Index{sizeof(float)}) / kGroup * kGroup);
  if (n > tile) {
    for (Index g0 = 0; g0 < n; g0 += tile) {
      rows_gemm(W, k, o0, o1, in + g0 * ld_in, ld_in, std::min(tile, n - g0), bias,
                out + g0 * ld_out, ld_out);
    }
    return;
  }
  Index o = o0;
  if (n == 1) {  // a GEMV: more rows in flight keep more of memory's bandwidth busy
    for (; o + 8 <= o1; o += 8) {
      block<8, 1, true>(W + o * k, k, in, ld_in, bias ? bias + o : nullptr, out + o, ld_out);
    }
  }
  for (; o + kRows <= o1; o += kRows) {
    row_block<kRows>(W + o * k, k, in, ld_in, n, bias ? bias + o : nullptr, out + o, ld_out);
  }
  for (; o < o1; ++o) {
    row_block<1>(W + o * k, k, in, ld_in, n, bias ? bias + o : nullptr, out + o, ld_out);
  }
}

}  // namespace TCONST_ISA_NS
}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
