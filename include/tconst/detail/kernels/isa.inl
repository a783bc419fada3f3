// One instruction set's few-row matrix product and one-query attention, included by
// rows_gemm.hpp once per instruction set, inside a region that compiles every function for that
// instruction set, with its parameters defined: TCONST_ISA_NS (namespace), TCONST_ISA_LANES (16:
// AVX-512, 8: AVX2 + FMA), TCONST_ISA_ROWS and TCONST_ISA_GROUP (the register block: weight rows
// by input rows; one input row takes 8 weight rows). Undefines them at its end. No include guard:
// it is read twice.

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
inline V vset(float a) { return _mm512_set1_ps(a); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
inline float vmax_lanes(V a) { return _mm512_reduce_max_ps(a); }
inline void vstore(float* p, V a) { _mm512_storeu_ps(p, a); }
inline V vround(V a) {
  return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
/// a * 2^n for integral n in [-127, 0].
inline V vscale2(V a, V n) { return _mm512_scalef_ps(a, n); }
inline V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
/// -|a|.
inline V vneg_abs(V a) {
  return _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_castps_si512(a), _mm512_set1_epi32(static_cast<int>(0x80000000u))));
}
/// Per lane: `neg` where a < 0, else `nonneg`.
inline V vselect_negative(V a, V nonneg, V neg) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_LT_OQ), nonneg, neg);
}
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
inline V vset(float a) { return _mm256_set1_ps(a); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
inline float vmax_lanes(V a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline void vstore(float* p, V a) { _mm256_storeu_ps(p, a); }
inline V vround(V a) {
  return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline V vscale2(V a, V n) {
  // 2^n built in the exponent field: n + 127 >= 0 is a normal number's exponent, or 0 (then the
  // product is 0, as a result below 2^-126 is flushed here).
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256i e = _mm256_slli_epi32(biased, 23);
  return _mm256_mul_ps(a, _mm256_castsi256_ps(e));
}
inline V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
inline V vneg_abs(V a) { return _mm256_or_ps(a, _mm256_set1_ps(-0.0f)); }
inline V vselect_negative(V a, V nonneg, V neg) {
  return _mm256_blendv_ps(nonneg, neg, _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_LT_OQ));
}
#endif

constexpr int kLanes = TCONST_ISA_LANES;
constexpr int kRows = TCONST_ISA_ROWS;
constexpr int kGroup = TCONST_ISA_GROUP;

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

#if TCONST_ISA_LANES == 16
/// The sums of 16 vectors' lanes in one vector, by a tree of lane shuffles (45 instructions
/// instead of 16 reductions): halves, then quarters, then pairs within 128-bit lanes. Lane
/// 4g + r of the result is the sum of a[4r + g].
inline V sum_tree(const V* a) {
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
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(d0, d1)),
                       _mm512_castpd_ps(_mm512_unpackhi_pd(d0, d1)));
}

/// Lane t of the result is the sum of a[t]'s lanes.
inline V lane_sums(const V (&a)[kLanes]) {
  V b[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) b[i] = a[4 * (i % 4) + i / 4];
  return sum_tree(b);
}
#else
/// Lane t of the result is the sum of a[t]'s lanes.
inline V lane_sums(const V (&a)[kLanes]) {
  const V h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
  const V h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
  const V lo = _mm256_hadd_ps(h01, h23), hi = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20),
                       _mm256_permute2f128_ps(lo, hi, 0x31));
}
#endif

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
/// brings the next ones. A step of 8 streams with 2 threads, same process in turns: the head
/// 2.64-2.70 -> 2.23-2.28 ms, the FFN 1.64-1.72 -> 1.48-1.57 ms against fetching in every pass.
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
  last_group<R, kGroup - 1>(n - g0, W, k, in + g0 * ld_in, ld_in, bias, out + g0 * ld_out,
                            ld_out, n <= kGroup || g0 == kGroup);
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

/// Stores the first m (<= kLanes) lanes of a at p; writes nothing past p + m.
inline void vstore_head(float* p, V a, Index m) {
  alignas(64) float tmp[kLanes];
  vstore(tmp, a);
  std::memcpy(p, tmp, sizeof(float) * static_cast<size_t>(m));
}

/// e^x for x <= 0 (a softmax's shifted scores), within 2 ulp of the float nearest e^x; results
/// below 2^-126 may be 0. n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts, so r is exact
/// to float precision), e^r by its Taylor polynomial to degree 7 (|r| <= ln 2 / 2: the first
/// term left out is below 2^-30), then times 2^n.
inline V vexp_nonpositive(V x) {
  x = vmax(x, vset(-87.0f));
  const V n = vround(vmul(x, vset(1.44269504088896341f)));
  V r = vfma(n, vset(-0.693145751953125f), x);  // ln 2's high part (14 significant bits)
  r = vfma(n, vset(-1.42860682030941723e-6f), r);
  V p = vset(1.0f / 5040.0f);
  p = vfma(p, r, vset(1.0f / 720.0f));
  p = vfma(p, r, vset(1.0f / 120.0f));
  p = vfma(p, r, vset(1.0f / 24.0f));
  p = vfma(p, r, vset(1.0f / 6.0f));
  p = vfma(p, r, vset(0.5f));
  p = vfma(p, r, vset(1.0f));
  p = vfma(p, r, vset(1.0f));
  return vscale2(p, n);
}

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

/// One query row against nk key rows, every head: out[h*dh, (h+1)*dh) (+)=
/// softmax_j(scale q_h . K[j, h]) V[j, h] (as ops.hpp's attend_one). `scores` holds heads * nk
/// floats. Keys and values are each read once from memory, a block of kLanes rows at a time that
/// every head then uses from L1. Allocates nothing.
inline void attend_one(const float* q, const float* K, const float* Vv, Index ld, Index nk,
                       Index heads, Index dh, float* scores, float* out, bool accumulate) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  const Index chunks = (dh + kLanes - 1) / kLanes;
  const int tail = static_cast<int>(dh - (chunks - 1) * kLanes);  // columns in the last chunk
  // Rows are fetched 16 rows (27 KB at d = 432) ahead of their use: memory's prefetchers do not
  // follow a block's kLanes rows read a few columns at a time, and without it the kernel waits on
  // memory. Further ahead, the rows fetched no longer fit in L1 beside the block in use (a
  // prefetch past the last row is harmless).
  const Index ahead = 16;
  auto load_cols = [&](const float* p, Index c) {
    return c + 1 < chunks || tail == kLanes ? vload(p) : vload_head(p, tail);
  };
  // Scores: kLanes keys per block, each head's dot products summed across lanes at once.
  for (Index j0 = 0; j0 < nk; j0 += kLanes) {
    const Index jn = std::min<Index>(kLanes, nk - j0);
    for (Index h = 0; h < heads; ++h) {
      V acc[kLanes];
#pragma GCC unroll 16
      for (int t = 0; t < kLanes; ++t) acc[t] = vzero();
      for (Index c = 0; c < chunks; ++c) {
        const Index col = h * dh + c * kLanes;
        const V qc = load_cols(q + col, c);
#pragma GCC unroll 16
        for (int t = 0; t < kLanes; ++t) {
          // A short last block repeats its last key; those lanes are not stored.
          const Index j = j0 + std::min<Index>(t, jn - 1);
          acc[t] = vfma(qc, load_cols(K + j * ld + col, c), acc[t]);
          _mm_prefetch(reinterpret_cast<const char*>(K + (j + ahead) * ld + col), _MM_HINT_T0);
        }
      }
      const V sums = vmul(lane_sums(acc), vset(scale));
      float* dst = scores + h * nk + j0;
      if (jn == kLanes) {
        vstore(dst, sums);
      } else {
        vstore_head(dst, sums, jn);
      }
    }
  }
  // Softmax of each head's row of scores, in place.
  const Index whole = nk / kLanes * kLanes;
  const int rest = static_cast<int>(nk - whole);
  for (Index h = 0; h < heads; ++h) {
    float* p = scores + h * nk;
    V m = vset(-std::numeric_limits<float>::infinity());
    for (Index j = 0; j < whole; j += kLanes) m = vmax(m, vload(p + j));
    float mx = vmax_lanes(m);
    for (Index j = whole; j < nk; ++j) mx = std::max(mx, p[j]);
    V sum = vzero();
    for (Index j = 0; j < whole; j += kLanes) {
      const V e = vexp_nonpositive(vadd(vload(p + j), vset(-mx)));
      vstore(p + j, e);
      sum = vadd(sum, e);
    }
    if (rest > 0) {
      const V e = vexp_nonpositive(vadd(vload_head(p + whole, rest), vset(-mx)));
      vstore_head(p + whole, e, rest);
      sum = vadd(sum, vload_head(p + whole, rest));
    }
    const float inv = 1.0f / vsum(sum);
    for (Index j = 0; j < whole; j += kLanes) vstore(p + j, vmul(vload(p + j), vset(inv)));
    for (Index j = whole; j < nk; ++j) p[j] *= inv;
  }
  // Values: kLanes rows per block; each head's output columns gather the block's rows.
  if (!accumulate) std::memset(out, 0, sizeof(float) * static_cast<size_t>(heads * dh));
  for (Index j0 = 0; j0 < nk; j0 += kLanes) {
    const Index j1 = std::min<Index>(nk, j0 + kLanes);
    for (Index h = 0; h < heads; ++h) {
      const float* p = scores + h * nk;
      for (Index c = 0; c < chunks; ++c) {
        const Index col = h * dh + c * kLanes;
        V acc = load_cols(out + col, c);
        for (Index j = j0; j < j1; ++j) {
          acc = vfma(vset(p[j]), load_cols(Vv + j * ld + col, c), acc);
          _mm_prefetch(reinterpret_cast<const char*>(Vv + (j + ahead) * ld + col), _MM_HINT_T0);
        }
        if (c + 1 < chunks || tail == kLanes) {
          vstore(out + col, acc);
        } else {
          vstore_head(out + col, acc, tail);
        }
      }
    }
  }
}

}  // namespace TCONST_ISA_NS
}  // namespace detail
}  // namespace tconst

#undef TCONST_ISA_NS
#undef TCONST_ISA_LANES
#undef TCONST_ISA_ROWS
#undef TCONST_ISA_GROUP
