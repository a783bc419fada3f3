// One instruction set's vector type and the operations the kernels build on: loads and stores
// (whole vectors and a first few lanes), arithmetic, horizontal sums, e^x for x <= 0. The first
// part of isa.inl; TCONST_ISA_LANES (16: AVX-512, 8: AVX2 + FMA) selects the type.

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {
namespace TCONST_ISA_NS {

using Eigen::Index;

#if TCONST_ISA_LANES == 16
using V = __m512;
inline V vzero() {
  return _mm512_setzero_ps();
}
inline V vload(const float* p) {
  return _mm512_loadu_ps(p);
}
/// The first m (< 16) floats at p, the rest zero; reads nothing past p + m.
inline V vload_head(const float* p, int m) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << m) - 1u), p);
}
inline V vfma(V a, V b, V c) {
  return _mm512_fmadd_ps(a, b, c);
}
inline float vsum(V a) {
  return _mm512_reduce_add_ps(a);
}
inline V vset(float a) {
  return _mm512_set1_ps(a);
}
inline V vmul(V a, V b) {
  return _mm512_mul_ps(a, b);
}
inline V vadd(V a, V b) {
  return _mm512_add_ps(a, b);
}
inline V vmax(V a, V b) {
  return _mm512_max_ps(a, b);
}
inline float vmax_lanes(V a) {
  return _mm512_reduce_max_ps(a);
}
inline void vstore(float* p, V a) {
  _mm512_storeu_ps(p, a);
}
inline V vround(V a) {
  return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline V vceil(V a) {
  return _mm512_roundscale_ps(a, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
}
/// a * 2^n for integral n in [-127, 0].
inline V vscale2(V a, V n) {
  return _mm512_scalef_ps(a, n);
}
inline V vdiv(V a, V b) {
  return _mm512_div_ps(a, b);
}
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
inline V vzero() {
  return _mm256_setzero_ps();
}
inline V vload(const float* p) {
  return _mm256_loadu_ps(p);
}
inline V vload_head(const float* p, int m) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(m), lane));
}
inline V vfma(V a, V b, V c) {
  return _mm256_fmadd_ps(a, b, c);
}
inline float vsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline V vset(float a) {
  return _mm256_set1_ps(a);
}
inline V vmul(V a, V b) {
  return _mm256_mul_ps(a, b);
}
inline V vadd(V a, V b) {
  return _mm256_add_ps(a, b);
}
inline V vmax(V a, V b) {
  return _mm256_max_ps(a, b);
}
inline float vmax_lanes(V a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline void vstore(float* p, V a) {
  _mm256_storeu_ps(p, a);
}
inline V vround(V a) {
  return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline V vceil(V a) {
  return _mm256_round_ps(a, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
}
inline V vscale2(V a, V n) {
  // 2^n built in the exponent field: n + 127 >= 0 is a normal number's exponent, or 0 (then the
  // product is 0, as a result below 2^-126 is flushed here).
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256i e = _mm256_slli_epi32(biased, 23);
  return _mm256_mul_ps(a, _mm256_castsi256_ps(e));
}
inline V vdiv(V a, V b) {
  return _mm256_div_ps(a, b);
}
inline V vneg_abs(V a) {
  return _mm256_or_ps(a, _mm256_set1_ps(-0.0f));
}
inline V vselect_negative(V a, V nonneg, V neg) {
  return _mm256_blendv_ps(nonneg, neg, _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_LT_OQ));
}
#endif

constexpr int kLanes = TCONST_ISA_LANES;
constexpr int kRows = TCONST_ISA_ROWS;
constexpr int kGroup = TCONST_ISA_GROUP;

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
  return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}
#endif

// Interleaving and lane extraction, for the packed product's transposes (gemm.inl).
#if TCONST_ISA_LANES == 16
inline V unpacklo(V a, V b) {
  return _mm512_unpacklo_ps(a, b);
}
inline V unpackhi(V a, V b) {
  return _mm512_unpackhi_ps(a, b);
}
inline V unpacklo2(V a, V b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
inline V unpackhi2(V a, V b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
/// The four 128-bit lanes of a.
inline void quarters(V a, __m128 (&q)[kLanes / 4]) {
  q[0] = _mm512_castps512_ps128(a);
  q[1] = _mm512_extractf32x4_ps(a, 1);
  q[2] = _mm512_extractf32x4_ps(a, 2);
  q[3] = _mm512_extractf32x4_ps(a, 3);
}
#else
inline V unpacklo(V a, V b) {
  return _mm256_unpacklo_ps(a, b);
}
inline V unpackhi(V a, V b) {
  return _mm256_unpackhi_ps(a, b);
}
inline V unpacklo2(V a, V b) {
  return _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(a), _mm256_castps_pd(b)));
}
inline V unpackhi2(V a, V b) {
  return _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(a), _mm256_castps_pd(b)));
}
inline void quarters(V a, __m128 (&q)[kLanes / 4]) {
  q[0] = _mm256_castps256_ps128(a);
  q[1] = _mm256_extractf128_ps(a, 1);
}
#endif

/// The mask of _mm_maskload_ps / _mm_maskstore_ps for the first m (1..3) of 4 floats.
inline __m128i head_mask(int m) {
  return _mm_cmpgt_epi32(_mm_set1_epi32(m), _mm_setr_epi32(0, 1, 2, 3));
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

}  // namespace TCONST_ISA_NS
}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
