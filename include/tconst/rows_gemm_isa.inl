// One instruction set's few-row matrix product, included by rows_gemm.hpp once per instruction
// set, inside a region that compiles every function for that instruction set, with its
// parameters defined: TCONST_ISA_NS (namespace), TCONST_ISA_LANES (16: AVX-512, 8: AVX2 + FMA),
// TCONST_ISA_ROWS and TCONST_ISA_GROUP (the register block: weight rows by input rows; one input
// row takes 8 weight rows). Undefines them at its end. No include guard: it is read twice.

namespace tconst {
namespace detail {
namespace TCONST_ISA_NS {

using Eigen::Index;

#if TCONST_ISA_LANES == 16
using V = __m512;
inline V vzero() { return _mm512_setzero_ps(); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
/// The first m (< 16) floats at p, the rest zero; reads nothing past p + m.
inline V vload_head(const float* p, int m) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << m) - 1u), p);
}
inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(V a) { return _mm512_reduce_add_ps(a); }
#else
using V = __m256;
inline V vzero() { return _mm256_setzero_ps(); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline V vload_head(const float* p, int m) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(m), lane));
}
inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

constexpr int kLanes = TCONST_ISA_LANES;
constexpr int kRows = TCONST_ISA_ROWS;
constexpr int kGroup = TCONST_ISA_GROUP;

/// acc[r][g] += W[r, c..c+L) * in[g, c..c+L) over one vector of columns (`head` > 0: only the
/// first `head` columns are there).
template <int R, int G>
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
    _mm_prefetch(reinterpret_cast<const char*>(W + (R + r) * k + c), _MM_HINT_T0);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[r][g] = vfma(w, x[g], acc[r][g]);
  }
}

/// out[g * ld_out + r] = the sum of acc[r][g]'s lanes (+ bias[r]).
template <int R, int G>
inline void store_sums(V (&acc)[R][G], const float* bias, float* out, Index ld_out) {
#if TCONST_ISA_LANES == 16
  if constexpr (R == 4 && G == 4) {
    // All 16 sums at once by a tree of lane shuffles (45 instructions instead of 16 reductions):
    // halves, then quarters, then pairs within 128-bit lanes. Lane 4g + r of the result holds
    // acc[r][g], so 128-bit lane g is out[g, 0..4).
    const V* a = &acc[0][0];
    V b[8], c[4], d[2];
    for (int j = 0; j < 8; ++j) {
      b[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], 0x44),
                           _mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], 0xEE));
    }
    for (int j = 0; j < 4; ++j) {
      c[j] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], 0x88),
                           _mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], 0xDD));
    }
    for (int j = 0; j < 2; ++j) {
      d[j] = _mm512_add_ps(_mm512_unpacklo_ps(c[2 * j], c[2 * j + 1]),
                           _mm512_unpackhi_ps(c[2 * j], c[2 * j + 1]));
    }
    const __m512d d0 = _mm512_castps_pd(d[0]), d1 = _mm512_castps_pd(d[1]);
    V e = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(d0, d1)),
                        _mm512_castpd_ps(_mm512_unpackhi_pd(d0, d1)));
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

/// out[g, r] = in[g, :] . W[r, :] (+ bias[r]) for R weight rows and G input rows, all in registers.
template <int R, int G>
inline void block(const float* W, Index k, const float* in, Index ld_in, const float* bias,
                  float* out, Index ld_out) {
  V acc[R][G];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[r][g] = vzero();
  }
  Index c = 0;
  for (; c + kLanes <= k; c += kLanes) accumulate<R, G>(acc, W, k, in, ld_in, c, 0);
  if (c < k) accumulate<R, G>(acc, W, k, in, ld_in, c, static_cast<int>(k - c));
  store_sums<R, G>(acc, bias, out, ld_out);
}

/// block<R, G> for the last `rem` (< kGroup) input rows, G counting down to rem.
template <int R, int G>
inline void last_group(Index rem, const float* W, Index k, const float* in, Index ld_in,
                       const float* bias, float* out, Index ld_out) {
  if constexpr (G > 0) {
    if (rem == G) {
      block<R, G>(W, k, in, ld_in, bias, out, ld_out);
    } else {
      last_group<R, G - 1>(rem, W, k, in, ld_in, bias, out, ld_out);
    }
  }
}

/// Every group of up to kGroup input rows against R weight rows (those stay in L1 meanwhile).
template <int R>
inline void row_block(const float* W, Index k, const float* in, Index ld_in, Index n,
                      const float* bias, float* out, Index ld_out) {
  Index g0 = 0;
  for (; g0 + kGroup <= n; g0 += kGroup) {
    block<R, kGroup>(W, k, in + g0 * ld_in, ld_in, bias, out + g0 * ld_out, ld_out);
  }
  last_group<R, kGroup - 1>(n - g0, W, k, in + g0 * ld_in, ld_in, bias, out + g0 * ld_out,
                            ld_out);
}

/// out[g, o] = in[g, :] . W[o, :] (+ bias[o]) for g < n, o in [o0, o1); W is [rows, k] row-major.
inline void rows_gemm(const float* W, Index k, Index o0, Index o1, const float* in, Index ld_in,
                      Index n, const float* bias, float* out, Index ld_out) {
  // Many input rows (a resync's chunk) go in tiles that stay in L2 while the weights pass by.
  constexpr Index kTileBytes = Index{256} << 10;
  const Index tile = std::max<Index>(kGroup, kTileBytes / (k * Index{sizeof(float)}) / kGroup * kGroup);
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
      block<8, 1>(W + o * k, k, in, ld_in, bias ? bias + o : nullptr, out + o, ld_out);
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
}  // namespace tconst

#undef TCONST_ISA_NS
#undef TCONST_ISA_LANES
#undef TCONST_ISA_ROWS
#undef TCONST_ISA_GROUP
