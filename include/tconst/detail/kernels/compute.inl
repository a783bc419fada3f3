// One instruction set's kernels of the compute modes (compute_linear.hpp): products whose input
// rows are first rounded to BF16 (bf16 mode, over BF16 weights) or quantized per block to int8
// (int8 mode, over Q8 weights), so that the CPU's dot-product instructions can multiply them.
// After simd.inl and gemm.inl (store_tile), with, besides the set's parameters:
//   TCONST_CK_BF16   0: no bf16 kernels here; 1: BF16 widened to float, FMA; 2: vdpbf16ps
//   TCONST_CK_INT8   0: no int8 kernels here; 1: exact int16 pair products (AVX2
//                    vpmaddubsw/vpmaddwd with the sign trick); 2: vpdpbusd (AVX-VNNI or
//                    AVX512-VNNI)
//
// The packed product's scheme is gemm.inl's: the register tile is out^T, M weight rows (read in
// place, 32 bits broadcast at a time: two adjacent BF16 or four adjacent int8, which lie
// contiguous in a row-major W) by NV vectors of input rows (a packed panel: for each 32-bit unit
// of columns, the units of NV * kLanes consecutive input rows). So the weights are never copied.
//
// int8: vpdpbusd multiplies unsigned by signed bytes, so the panel holds q + 128 (unsigned) and the
// weights are the signed operand; a block's sum is then D + 128 * (the sum of the weights' q over
// the block), and the accumulator starts at -128 times that sum (`sums`), which leaves D exactly.
// Without VNNI the panel's bytes are turned back into q and multiplied by the sign trick: |w| times
// q with w's sign, pairs of which fit int16 (|q|, |w| <= 127). Either way D is exact in int32; per
// block it is converted to float once and multiplied by (s_x * s_w).

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {
namespace TCONST_ISA_NS {

/// Vectors of input rows per panel of the compute modes' tiles.
constexpr int kCNv = 2;
constexpr int kCNr = kCNv * kLanes;

#if TCONST_ISA_LANES == 16
using VI = __m512i;
inline VI vi_load(const void* p) {
  return _mm512_loadu_si512(p);
}
inline VI vi_set1(int32_t a) {
  return _mm512_set1_epi32(a);
}
inline V vi_to_float(VI a) {
  return _mm512_cvtepi32_ps(a);
}
inline VI vi_or(VI a, VI b) {
  return _mm512_or_si512(a, b);
}
inline void vi_store(void* p, VI a) {
  _mm512_storeu_si512(p, a);
}
inline VI vi_shift_up16(VI a) {
  return _mm512_slli_epi32(a, 16);
}
#else
using VI = __m256i;
inline VI vi_load(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}
inline VI vi_set1(int32_t a) {
  return _mm256_set1_epi32(a);
}
inline V vi_to_float(VI a) {
  return _mm256_cvtepi32_ps(a);
}
inline VI vi_or(VI a, VI b) {
  return _mm256_or_si256(a, b);
}
inline void vi_store(void* p, VI a) {
  _mm256_storeu_si256(static_cast<__m256i*>(p), a);
}
inline VI vi_shift_up16(VI a) {
  return _mm256_slli_epi32(a, 16);
}
#endif

/// The 32 bits at p (any alignment).
inline int32_t load_unit(const void* p) {
  int32_t u;
  std::memcpy(&u, p, sizeof u);
  return u;
}

/// The first `bytes` (< 4) bytes at p in a unit, the rest 0: reads nothing past p + bytes.
inline int32_t load_unit_head(const void* p, Index bytes) {
  int32_t u = 0;
  std::memcpy(&u, p, static_cast<size_t>(bytes));
  return u;
}

/// The first `bytes` (< 4 kLanes) bytes at p in a vector, the rest 0: reads nothing past
/// p + bytes.
inline VI vi_load_bytes(const void* p, Index bytes) {
  const Index units = bytes / 4;
#if TCONST_ISA_LANES == 16
  VI v = _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << units) - 1u), p);
#else
  VI v = _mm256_maskload_epi32(static_cast<const int*>(p),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(units)),
                                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
#endif
  if (bytes % 4 != 0) {
    alignas(64) int32_t part[kLanes] = {};
    part[units] = load_unit_head(static_cast<const char*>(p) + 4 * units, bytes % 4);
    v = vi_or(v, vi_load(part));
  }
  return v;
}

/// Transposes 32-bit units: dst[u * width + r] = src[r * ld + u0 + u] for r < rows (<= kCNr), u <
/// ku, 0 for r in [rows, width), width = rows rounded up to whole vectors. Returns the width.
inline Index unit_pack(const uint32_t* src, Index ld, Index rows, Index u0, Index ku,
                       uint32_t* dst) {
  const Index width = (rows + kLanes - 1) / kLanes * kLanes;
  const uint32_t* s = src + u0;
  Index r = 0;
  // 8 rows by 8 units at a time, transposed in registers.
  for (; r + 8 <= rows; r += 8) {
    Index c = 0;
    for (; c + 8 <= ku; c += 8) {
      __m256i a[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        a[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + (r + i) * ld + c));
      }
      const __m256i t0 = _mm256_unpacklo_epi32(a[0], a[1]), t1 = _mm256_unpackhi_epi32(a[0], a[1]);
      const __m256i t2 = _mm256_unpacklo_epi32(a[2], a[3]), t3 = _mm256_unpackhi_epi32(a[2], a[3]);
      const __m256i t4 = _mm256_unpacklo_epi32(a[4], a[5]), t5 = _mm256_unpackhi_epi32(a[4], a[5]);
      const __m256i t6 = _mm256_unpacklo_epi32(a[6], a[7]), t7 = _mm256_unpackhi_epi32(a[6], a[7]);
      const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
      const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
      const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
      const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
      uint32_t* d = dst + c * width + r;
      auto put = [&](Index j, __m256i v) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j * width), v);
      };
      put(0, _mm256_permute2x128_si256(u0, u4, 0x20));
      put(1, _mm256_permute2x128_si256(u1, u5, 0x20));
      put(2, _mm256_permute2x128_si256(u2, u6, 0x20));
      put(3, _mm256_permute2x128_si256(u3, u7, 0x20));
      put(4, _mm256_permute2x128_si256(u0, u4, 0x31));
      put(5, _mm256_permute2x128_si256(u1, u5, 0x31));
      put(6, _mm256_permute2x128_si256(u2, u6, 0x31));
      put(7, _mm256_permute2x128_si256(u3, u7, 0x31));
    }
    for (; c < ku; ++c) {
      for (Index i = 0; i < 8; ++i) dst[c * width + r + i] = s[(r + i) * ld + c];
    }
  }
  for (Index c = 0; c < ku; ++c) {
    for (Index i = r; i < rows; ++i) dst[c * width + i] = s[i * ld + c];
    for (Index i = rows; i < width; ++i) dst[c * width + i] = 0;
  }
  return width;
}

/// The tiles of weight rows [o0, o1) over every panel of `rows` packed input rows: M weight rows
/// per tile (M1 where a panel has one vector of rows: few rows leave registers for more weight
/// rows), the last few by 4 and then 1. tile(m_tag, nv_tag, o, j0, r) runs one tile; the tags
/// carry M and NV as std::integral_constant.
template <int M, int M1, typename Tile>
inline void for_tiles(Index o0, Index o1, Index rows, const Tile& tile) {
  auto with_nv = [&](auto m, Index o, Index j0, Index r) {
    const int nv = static_cast<int>((r + kLanes - 1) / kLanes);
    if constexpr (kCNv == 2) {
      if (nv == 2) return tile(m, std::integral_constant<int, 2>{}, o, j0, r);
    }
    return tile(m, std::integral_constant<int, 1>{}, o, j0, r);
  };
  for (Index j0 = 0; j0 < rows; j0 += kCNr) {
    const Index r = std::min<Index>(kCNr, rows - j0);
    Index o = o0;
    if (r <= kLanes && M1 != M) {
      for (; o + M1 <= o1; o += M1) {
        tile(std::integral_constant<int, M1>{}, std::integral_constant<int, 1>{}, o, j0, r);
      }
    }
    for (; o + M <= o1; o += M) with_nv(std::integral_constant<int, M>{}, o, j0, r);
    if constexpr (M > 4) {
      for (; o + 4 <= o1; o += 4) with_nv(std::integral_constant<int, 4>{}, o, j0, r);
    }
    for (; o < o1; ++o) with_nv(std::integral_constant<int, 1>{}, o, j0, r);
  }
}

/// Adds bias[i] to tile column i.
template <int M, int NV>
inline void add_bias(V (&acc)[M][NV], const float* bias) {
  if (bias == nullptr) return;
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    const V b = vset(bias[i]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vadd(acc[i][v], b);
  }
}

// ---- bf16 mode -------------------------------------------------------------------------------
#if TCONST_CK_BF16

/// The BF16 bits nearest each lane, ties to even; a NaN stays a quiet NaN (model/quantize.hpp's
/// float_to_bf16), in the low 16 bits of each 32-bit lane.
inline VI round_bf16(V x) {
#if TCONST_ISA_LANES == 16
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_blend_epi32(nan, r, q);
#else
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  // |u| > infinity's bits as signed int32: |u| < 2^31.
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  return _mm256_blendv_epi8(r, q, nan);
#endif
}

/// Rounds input rows to BF16 (Bf16PrepareFn): row g's columns as uint16 at dst + g * ld_dst units,
/// a zero after an odd k.
inline void bf16_prepare(const float* in, Index ld_in, Index n, Index k, uint32_t* dst,
                         Index ld_dst) {
  for (Index g = 0; g < n; ++g) {
    const float* x = in + g * ld_in;
    uint16_t* d = reinterpret_cast<uint16_t*>(dst + g * ld_dst);
    Index c = 0;
    for (; c + kLanes <= k; c += kLanes) {
#if TCONST_ISA_LANES == 16
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + c),
                          _mm512_cvtepi32_epi16(round_bf16(vload(x + c))));
#else
      const __m256i r = round_bf16(vload(x + c));  // each value <= 0xffff: packus keeps it
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d + c), _mm256_castsi256_si128(p));
#endif
    }
#if TCONST_ISA_LANES == 16
    if (c < k) {  // the last k - c < 16 columns, masked
      const __mmask16 m = static_cast<__mmask16>((1u << (k - c)) - 1u);
      _mm512_mask_cvtepi32_storeu_epi16(d + c, m, round_bf16(_mm512_maskz_loadu_ps(m, x + c)));
    }
#else
    for (; c < k; ++c) d[c] = float_to_bf16_bits(x[c]);
#endif
    if (k % 2 != 0) d[k] = 0;
  }
}

/// acc += the products of the BF16 pairs of x and w (vectors of units), pair by pair: the odd
/// column's product added first, then the even one's, each exact and added with one rounding, as
/// vdpbf16ps does (by Intel's description), so that every level gives the same bits.
inline V dot_bf16(V acc, VI x, VI w) {
#if TCONST_CK_BF16 == 2
  return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w);
#elif TCONST_ISA_LANES == 16
  const __m512i high = _mm512_set1_epi32(-65536);
  const V x_lo = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
  const V x_hi = _mm512_castsi512_ps(_mm512_and_si512(x, high));
  const V w_lo = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  const V w_hi = _mm512_castsi512_ps(_mm512_and_si512(w, high));
  return vfma(x_lo, w_lo, vfma(x_hi, w_hi, acc));
#else
  const __m256i high = _mm256_set1_epi32(-65536);
  const V x_lo = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  const V x_hi = _mm256_castsi256_ps(_mm256_and_si256(x, high));
  const V w_lo = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  const V w_hi = _mm256_castsi256_ps(_mm256_and_si256(w, high));
  return vfma(x_lo, w_lo, vfma(x_hi, w_hi, acc));
#endif
}

/// acc += the products of the BF16 pairs of x (a vector of units) and the broadcast pair w.
inline V dot_bf16(V acc, VI x, int32_t w) {
#if TCONST_CK_BF16 == 2
  return dot_bf16(acc, x, vi_set1(w));
#else
  const uint32_t wu = static_cast<uint32_t>(w);
  const V w_lo = vset(bf16_bits_to_float(static_cast<uint16_t>(wu & 0xffffu)));
  const V w_hi = vset(bf16_bits_to_float(static_cast<uint16_t>(wu >> 16)));
#if TCONST_ISA_LANES == 16
  const V x_lo = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
  const V x_hi = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(-65536)));
#else
  const V x_lo = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  const V x_hi = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(-65536)));
#endif
  return vfma(x_lo, w_lo, vfma(x_hi, w_hi, acc));
#endif
}

/// out[o] (+)= x . W[o, :] (+ bias[o]) for o in [o0, o1) and one prepared input row x (BF16, k
/// columns): a GEMV, kLanes weight rows at a time, each a vector of sums along k (2 kLanes columns
/// per step, weights and activations both read as they lie), summed across lanes at the end
/// (lane_sums: the same tree for every row).
inline void bf16_gemv(const WeightMatrix& W, Index o0, Index o1, const uint32_t* x,
                      const float* bias, float* out, bool accumulate) {
  constexpr Index kStep = 2 * kLanes;
  const Index k = W.cols, full = k / kStep * kStep;
  const uint16_t* base = static_cast<const uint16_t*>(W.data);
  const uint16_t* xs = reinterpret_cast<const uint16_t*>(x);
  alignas(64) uint16_t x_tail[kStep] = {};
  std::memcpy(x_tail, xs + full, sizeof(uint16_t) * static_cast<size_t>(k - full));
  for (Index o = o0; o < o1; o += kLanes) {
    const Index m = std::min<Index>(kLanes, o1 - o);
    const uint16_t* rows[kLanes];
#pragma GCC unroll 16
    for (int r = 0; r < kLanes; ++r) rows[r] = base + std::min<Index>(o + r, o1 - 1) * k;
    V acc[kLanes];
#pragma GCC unroll 16
    for (int r = 0; r < kLanes; ++r) acc[r] = vzero();
    for (Index c = 0; c < full; c += kStep) {
      const VI xv = vi_load(xs + c);
#pragma GCC unroll 16
      for (int r = 0; r < kLanes; ++r) acc[r] = dot_bf16(acc[r], xv, vi_load(rows[r] + c));
    }
    if (full < k) {
      const VI xv = vi_load(x_tail);
#pragma GCC unroll 16
      for (int r = 0; r < kLanes; ++r) {
        acc[r] = dot_bf16(acc[r], xv, vi_load_bytes(rows[r] + full, 2 * (k - full)));
      }
    }
    alignas(64) float sums[kLanes];
    vstore(sums, lane_sums(acc));
    for (Index r = 0; r < m; ++r) {
      const float y = sums[r] + (bias != nullptr ? bias[o + r] : 0.0f);
      out[o + r] = accumulate ? out[o + r] + y : y;
    }
  }
}

/// Weight rows per bf16 tile (by kCNv vectors).
constexpr int kB16Mr = TCONST_CK_BF16 == 2 ? 12 : (kLanes == 16 ? 8 : 4);

/// One bf16 tile: out[j, i] (+)= sum_c x[j, c] W[i, c] (+ bias[i]) over `cols` columns for i < M,
/// j < rows; w: weight row 0 at the pass's first column, rows ldw apart.
template <int M, int NV>
inline void bf16_tile(const uint16_t* w, Index ldw, Index cols, const uint32_t* panel,
                      const float* bias, float* out, Index ld_out, Index rows, bool load_out) {
  V acc[M][NV];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vzero();
  }
  const Index full = cols / 2;
  for (Index u = 0; u < full; ++u) {
    VI x[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) x[v] = vi_load(panel + (u * NV + v) * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const int32_t wu = load_unit(w + i * ldw + 2 * u);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = dot_bf16(acc[i][v], x[v], wu);
    }
  }
  if (cols % 2 != 0) {  // the row's last column alone: the next one is not this row's
    VI x[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) x[v] = vi_load(panel + (full * NV + v) * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const int32_t wu = load_unit_head(w + i * ldw + 2 * full, 2);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = dot_bf16(acc[i][v], x[v], wu);
    }
  }
  add_bias<M, NV>(acc, bias);
  store_tile<M, NV>(acc, out, ld_out, rows, load_out);
}

/// The bf16 tiles over weight rows [o0, o1) and the packed rows (Bf16ComputeFn).
template <int M1>
inline void bf16_run(const WeightMatrix& W, Index o0, Index o1, Index p0, Index kc,
                     const uint32_t* packed, Index rows, const float* bias, float* out,
                     Index ld_out, bool load_out) {
  const uint16_t* base = static_cast<const uint16_t*>(W.data) + p0;
  const Index ku = (kc + 1) / 2;
  for_tiles<kB16Mr, M1>(o0, o1, rows, [&](auto m, auto nv, Index o, Index j0, Index r) {
    bf16_tile<decltype(m)::value, decltype(nv)::value>(
        base + o * W.cols, W.cols, kc, packed + j0 * ku, bias != nullptr ? bias + o : nullptr,
        out + j0 * ld_out + o, ld_out, r, load_out);
  });
}

/// Weight rows and input rows of the few-row bf16 block (bf16_rows): one vector of sums each.
constexpr int kB16BlockRows = 4;
constexpr int kB16BlockInputs = kLanes / kB16BlockRows;

/// out[g, o] (+)= x_g . W[o, :] (+ bias[o]) for g < n (n > 1) prepared input rows (ld units apart)
/// and o in [o0, o1): rows_gemm.inl's scheme, kB16BlockRows weight rows read once against every
/// group of kB16BlockInputs input rows while they are in L1, each pair's products a vector of sums
/// along k (weights and activations read as they lie), summed across lanes at the end (lane_sums:
/// the same tree for every pair). The last rows of a block repeat the last ones (not stored).
inline void bf16_rows_blocks(const WeightMatrix& W, Index o0, Index o1, const uint32_t* prepared,
                             Index ld, Index n, const float* bias, float* out, Index ld_out,
                             bool accumulate) {
  constexpr int R = kB16BlockRows, G = kB16BlockInputs;
  constexpr Index kStep = 2 * kLanes;
  const Index k = W.cols, full = k / kStep * kStep;
  const uint16_t* base = static_cast<const uint16_t*>(W.data);
  const uint16_t* xs = reinterpret_cast<const uint16_t*>(prepared);
  for (Index o = o0; o < o1; o += R) {
    const Index m = std::min<Index>(R, o1 - o);
    const uint16_t* wr[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wr[r] = base + std::min<Index>(o + r, o1 - 1) * k;
    for (Index g0 = 0; g0 < n; g0 += G) {
      const Index gm = std::min<Index>(G, n - g0);
      const uint16_t* xr[G];
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) xr[g] = xs + std::min<Index>(g0 + g, n - 1) * 2 * ld;
      V acc[kLanes];  // acc[r + R g]
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) acc[i] = vzero();
      for (Index c = 0; c < full; c += kStep) {
        VI xv[G];
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) xv[g] = vi_load(xr[g] + c);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const VI wv = vi_load(wr[r] + c);
#pragma GCC unroll 4
          for (int g = 0; g < G; ++g) acc[r + R * g] = dot_bf16(acc[r + R * g], xv[g], wv);
        }
      }
      if (full < k) {
        const Index bytes = 2 * (k - full);
        VI xv[G];
        for (int g = 0; g < G; ++g) xv[g] = vi_load_bytes(xr[g] + full, bytes);
        for (int r = 0; r < R; ++r) {
          const VI wv = vi_load_bytes(wr[r] + full, bytes);
          for (int g = 0; g < G; ++g) acc[r + R * g] = dot_bf16(acc[r + R * g], xv[g], wv);
        }
      }
      alignas(64) float sums[kLanes];
      vstore(sums, lane_sums(acc));
      for (Index g = 0; g < gm; ++g) {
        float* y = out + (g0 + g) * ld_out + o;
        for (Index r = 0; r < m; ++r) {
          const float v = sums[r + R * g] + (bias != nullptr ? bias[o + r] : 0.0f);
          y[r] = accumulate ? y[r] + v : v;
        }
      }
    }
  }
}

inline void bf16_rows(const WeightMatrix& W, Index o0, Index o1, const uint32_t* prepared,
                      Index rows, const float* bias, float* out, Index ld_out, bool load_out) {
  if (rows == 1) {
    bf16_gemv(W, o0, o1, prepared, bias, out, load_out);
    return;
  }
  bf16_rows_blocks(W, o0, o1, prepared, (W.cols + 1) / 2, rows, bias, out, ld_out, load_out);
}

inline void bf16_compute(const WeightMatrix& W, Index o0, Index o1, Index p0, Index kc,
                         const uint32_t* packed, Index rows, const float* bias, float* out,
                         Index ld_out, bool load_out) {
  bf16_run<kB16Mr>(W, o0, o1, p0, kc, packed, rows, bias, out, ld_out, load_out);
}

// ---- bf16 mode: one head of the resync's attention (SPEC §6.3) ---------------------------------
//
// gemm.inl's attend_panels with BF16 inputs: the queries, keys and values rounded to BF16, and the
// softmax's weights too, but taken against a shift k ln 2 with k an integer (SPEC §6.3): then a
// weight is e^s rounded to BF16 and scaled by an exact power of two, so that the online softmax's
// rescaling (by 2^(k - k')) and the final division leave every rounding where a one-pass softmax
// would have it.

/// The sums of one bf16 attention tile: acc[i][v] = sum over units u < ku of the BF16 pairs of the
/// panel's vector (u * NV + v) with w's unit (i, u), read at w[i * ldw + u] (Columns false: a key's
/// row) or w[u * ldw + i] (Columns true: the values, pairs of rows interleaved per column).
template <int M, int NV, bool Columns>
inline void bf16_unit_sums(const uint32_t* w, Index ldw, const uint32_t* panel, Index ku,
                           V (&acc)[M][NV]) {
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vzero();
  }
  for (Index u = 0; u < ku; ++u) {
    VI x[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) x[v] = vi_load(panel + (u * NV + v) * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const int32_t wu = static_cast<int32_t>(Columns ? w[u * ldw + i] : w[i * ldw + u]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = dot_bf16(acc[i][v], x[v], wu);
    }
  }
}

/// f(M, c0) over [0, n) in steps of M, then 4, then 1 (M as std::integral_constant).
template <int M, typename F>
inline void for_unit_tiles(Index n, const F& f) {
  Index c = 0;
  for (; c + M <= n; c += M) f(std::integral_constant<int, M>{}, c);
  if constexpr (M > 4) {
    for (; c + 4 <= n; c += 4) f(std::integral_constant<int, 4>{}, c);
  }
  for (; c < n; ++c) f(std::integral_constant<int, 1>{}, c);
}

/// Per lane, lo and hi rounded to BF16 (ties to even) in one unit: lo in the low half.
inline VI bf16_pair(V lo, V hi) {
#if TCONST_CK_BF16 == 2
  // vcvtne2ps2bf16 rounds as round_bf16 does (these weights are normal numbers, which its
  // flushing of subnormal inputs leaves alone), giving lo's 16 lanes and then hi's; one permute
  // of 16-bit words interleaves them.
  alignas(64) static constexpr uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
  return _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), both);
#else
  return vi_or(round_bf16(lo), vi_shift_up16(round_bf16(hi)));
#endif
}

/// Pairs of rows rounded to BF16 (Bf16PairRowsFn): dst[u * k + e] = bf16(in[2u, e]) in the low
/// half, bf16(in[2u + 1, e]) in the high half (0 past the last of n rows), for u < ceil(n / 2).
inline void bf16_pair_rows(const float* in, Index ld_in, Index n, Index k, uint32_t* dst) {
  for (Index u = 0; u < (n + 1) / 2; ++u) {
    const float* lo = in + 2 * u * ld_in;
    const float* hi = 2 * u + 1 < n ? lo + ld_in : nullptr;
    uint32_t* d = dst + u * k;
    Index e = 0;
    for (; e + kLanes <= k; e += kLanes) {
      vi_store(d + e, bf16_pair(vload(lo + e), hi != nullptr ? vload(hi + e) : vzero()));
    }
    for (; e < k; ++e) {
      const uint32_t h = hi != nullptr ? float_to_bf16_bits(hi[e]) : 0u;
      d[e] = float_to_bf16_bits(lo[e]) | h << 16;
    }
  }
}

/// The softmax of one panel of scores (floats at c * width, width lanes, nk >= 1 keys), each score
/// s taken as scale * s, turned in place into BF16 weights in units: unit u at u * width holds the
/// weights of keys 2u (low half) and 2u + 1 (high half, 0 past nk). The weight of s is
/// bf16(e^(scale s - k ln 2)), k = ceil(max scale s / ln 2) over the panel row's keys (and, online,
/// the running k in mx: k' = max(mx, k), factor = 2^(mx - k'), sum = sum * factor + the chunk's
/// sum, mx = k'). Normalised (mx nullptr): factor = 1 / the sum. The sums are of the weights
/// before rounding.
inline void bf16_softmax_panel(float* pp, Index width, Index nk, float scale, float* mx, float* sum,
                               float* factor) {
  const V vscale = vset(scale), to_log2 = vset(1.44269504088896341f);
  const V minus_ln2 = vset(-0.693147180559945309f);
  const Index nu = (nk + 1) / 2;
  for (Index v = 0; v < width; v += kLanes) {
    const float* col = pp + v;
    V top = vload(col);
    for (Index c = 1; c < nk; ++c) top = vmax(top, vload(col + c * width));
    V k = vceil(vmul(vmul(top, vscale), to_log2));
    V step = vzero();
    if (mx != nullptr) {
      const V old = vload(mx + v);
      k = vmax(old, k);
      // 2^(old - k), exact; 0 before the first chunk (old = -inf).
      step = vscale2(vset(1.0f), vmax(vset(-127.0f), vfma(k, vset(-1.0f), old)));
    }
    const V neg = vmul(k, minus_ln2);
    V total = vzero();
    uint32_t* units = reinterpret_cast<uint32_t*>(pp) + v;
    for (Index u = 0; u < nu; ++u) {
      // Reads rows 2u and 2u + 1 before unit row u (<= 2u) is written over them.
      const V e0 = vexp_nonpositive(vfma(vload(col + 2 * u * width), vscale, neg));
      total = vadd(total, e0);
      V e1 = vzero();
      if (2 * u + 1 < nk) {
        e1 = vexp_nonpositive(vfma(vload(col + (2 * u + 1) * width), vscale, neg));
        total = vadd(total, e1);
      }
      vi_store(units + u * width, bf16_pair(e0, e1));
    }
    if (mx != nullptr) {
      vstore(mx + v, k);
      vstore(factor + v, step);
      vstore(sum + v, vfma(vload(sum + v), step, total));
    } else {
      vstore(factor + v, vdiv(vset(1.0f), total));
    }
  }
}

/// One head of the resync's attention in bf16 (AttendBf16Fn): nq queries packed in unit panels at
/// qp (panel j0 at qp + j0 * du, du = ceil(dh / 2) units of BF16 pairs), nk keys K [nk, du] and the
/// values Vp [ceil(nk / 2), dh] (unit (u, e): V[2u, e] low, V[2u + 1, e] high), a panel at a time
/// through pp (kCNr * nk floats, 64-byte aligned): out[j, 0..dh) = sum_c w(j, c) V[c] / sum_c
/// e(j, c) (mx nullptr), or one online step (bf16_softmax_panel): out's rows scaled by the factor,
/// then the chunk's weighted values added.
inline void bf16_attend(const uint32_t* K, const uint32_t* Vp, Index nk, const uint32_t* qp,
                        Index nq, Index dh, float scale, float* pp, float* mx, float* sum,
                        float* out, Index ld_out) {
  alignas(64) float factor[kCNr];
  const Index du = (dh + 1) / 2, nu = (nk + 1) / 2;
  const bool online = mx != nullptr;
  for (Index j0 = 0; j0 < nq; j0 += kCNr) {
    const Index rows = std::min<Index>(kCNr, nq - j0);
    const int nv = static_cast<int>((rows + kLanes - 1) / kLanes);
    const Index width = nv * kLanes;
    const uint32_t* q = qp + j0 * du;
    float* o = out + j0 * ld_out;
    auto panel = [&](auto nv_tag) {
      constexpr int NV = decltype(nv_tag)::value;
      for_unit_tiles<kB16Mr>(nk, [&](auto m_tag, Index c0) {
        constexpr int M = decltype(m_tag)::value;
        V acc[M][NV];
        bf16_unit_sums<M, NV, false>(K + c0 * du, du, q, du, acc);
        float* dst = pp + c0 * width;
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i) {
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) vstore(dst + (i * NV + v) * kLanes, acc[i][v]);
        }
      });
      bf16_softmax_panel(pp, width, nk, scale, online ? mx + j0 : nullptr,
                         online ? sum + j0 : nullptr, factor);
      if (online) {
        for (Index r = 0; r < rows; ++r) {
          for (Index e = 0; e < dh; ++e) o[r * ld_out + e] *= factor[r];
        }
      }
      const uint32_t* weights = reinterpret_cast<const uint32_t*>(pp);
      for_unit_tiles<kB16Mr>(dh, [&](auto m_tag, Index e0) {
        constexpr int M = decltype(m_tag)::value;
        V acc[M][NV];
        bf16_unit_sums<M, NV, true>(Vp + e0, dh, weights, nu, acc);
        store_tile<M, NV>(acc, o + e0, ld_out, rows, online);
      });
      if (!online) {
        for (Index r = 0; r < rows; ++r) {
          for (Index e = 0; e < dh; ++e) o[r * ld_out + e] *= factor[r];
        }
      }
    };
    static_assert(kCNv == 2, "the panels below are of one or two vectors");
    if (nv == 2) {
      panel(std::integral_constant<int, 2>{});
    } else {
      panel(std::integral_constant<int, 1>{});
    }
  }
}
#endif  // TCONST_CK_BF16

// ---- int8 mode -------------------------------------------------------------------------------
#if TCONST_CK_INT8

/// The bits of |x| of each lane as int32: ordered as the magnitudes are, and above 0x7f800000 for
/// a NaN, at it for an infinity.
inline VI abs_bits(V x) {
#if TCONST_ISA_LANES == 16
  return _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff));
#else
  return _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fffffff));
#endif
}

/// q + 128 as bytes, q = round(x / s) (ties to even) clamped to [-127, 127], for the first `m`
/// lanes (m = kLanes: all) at dst.
inline void quantize_lanes(V x, V s, uint8_t* dst, int m) {
  V q = vround(vdiv(x, s));
  q = vmax(vset(-127.0f), q);
#if TCONST_ISA_LANES == 16
  q = _mm512_min_ps(q, vset(127.0f));
  const __m512i u = _mm512_add_epi32(_mm512_cvtps_epi32(q), _mm512_set1_epi32(128));
  const __m128i b = _mm512_cvtepi32_epi8(u);
  if (m == kLanes) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), b);
    return;
  }
  alignas(16) uint8_t tmp[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(tmp), b);
#else
  q = _mm256_min_ps(q, vset(127.0f));
  const __m256i u = _mm256_add_epi32(_mm256_cvtps_epi32(q), _mm256_set1_epi32(128));
  const __m256i w = _mm256_packus_epi32(u, u);  // 1 .. 255: no saturation
  const __m256i b = _mm256_packus_epi16(w, w);
  const __m128i lo = _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
  if (m == kLanes) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), lo);
    return;
  }
  alignas(16) uint8_t tmp[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(tmp), lo);
#endif
  std::memcpy(dst, tmp, static_cast<size_t>(m));
}

/// Quantizes input rows per block (Int8PrepareFn): SPEC §6.1's reference quantizer, s = max|x| /
/// 127 in float32, q = round(x / s); a block with s = 0 stores q = 0, and one with a NaN or an
/// infinity stores q = 0 and s = NaN. Row g: bytes q + 128 at dst + g * ld_dst units (128 up to a
/// whole unit), scales at scales + g * ld_s.
inline void int8_prepare(const float* in, Index ld_in, Index n, Index k, Index block, uint32_t* dst,
                         Index ld_dst, float* scales, Index ld_s) {
  const Index blocks = (k + block - 1) / block;
  for (Index g = 0; g < n; ++g) {
    const float* x = in + g * ld_in;
    uint8_t* d = reinterpret_cast<uint8_t*>(dst + g * ld_dst);
    for (Index b = 0; b < blocks; ++b) {
      const Index c0 = b * block, c1 = std::min(k, c0 + block);
      // A block is a multiple of kLanes columns but the last; its partial vector is zero-filled.
      VI top = vi_set1(0);
      for (Index c = c0; c < c1; c += kLanes) {
        const int m = static_cast<int>(std::min<Index>(kLanes, c1 - c));
        const VI a = abs_bits(m == kLanes ? vload(x + c) : vload_head(x + c, m));
#if TCONST_ISA_LANES == 16
        top = _mm512_max_epi32(top, a);
#else
        top = _mm256_max_epi32(top, a);
#endif
      }
      alignas(64) int32_t lanes[kLanes];
#if TCONST_ISA_LANES == 16
      _mm512_store_si512(lanes, top);
#else
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), top);
#endif
      int32_t most = 0;
      for (int i = 0; i < kLanes; ++i) most = std::max(most, lanes[i]);
      float s;
      if (most >= 0x7f800000) {
        s = std::numeric_limits<float>::quiet_NaN();
      } else {
        float amax;
        std::memcpy(&amax, &most, sizeof amax);
        s = amax / 127.0f;
      }
      scales[g * ld_s + b] = s;
      if (s > 0.0f) {  // false for NaN too
        const V vs = vset(s);
        for (Index c = c0; c < c1; c += kLanes) {
          const int m = static_cast<int>(std::min<Index>(kLanes, c1 - c));
          quantize_lanes(m == kLanes ? vload(x + c) : vload_head(x + c, m), vs, d + c, m);
        }
      } else {
        std::memset(d + c0, 128, static_cast<size_t>(c1 - c0));
      }
    }
    for (Index c = k; c % 4 != 0; ++c) d[c] = 128;
  }
}

/// Weight rows per int8 tile (by kCNv vectors: two accumulators each, int32 and float), and per
/// tile of a one-vector panel.
constexpr int kI8Mr = TCONST_CK_INT8 == 2 ? (kLanes == 16 ? 6 : 3) : 2;
constexpr int kI8Mr1 = kLanes == 16 ? 12 : kI8Mr;

/// acc += the sums of the four products of x's bytes (q + 128) and the broadcast weights w, less
/// 128 times w's sum where the accumulator starts from that (VNNI); q * w summed exactly otherwise.
inline VI dot_i8(VI acc, VI x, int32_t w) {
#if TCONST_CK_INT8 == 2
  // In assembly: GCC 12 copies the accumulator to another register and back around each
  // vpdpbusd of its intrinsic inside a loop.
  const VI wv = vi_set1(w);
#if TCONST_ISA_LANES == 16
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(wv));
#else
  asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(x), "x"(wv));
#endif
  return acc;
#else
  // x holds q + 128; |w| times q with w's sign: the pairs' sums fit int16.
  const __m256i wv = _mm256_set1_epi32(w);
  const __m256i q = _mm256_xor_si256(x, _mm256_set1_epi8(static_cast<char>(0x80)));
  const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(q, wv));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

/// One int8 tile over the blocks of `cols` columns (from a block's start): out[j, i] (+)= sum_b
/// float(D_b) (s_x[j, b] s_w[i, b]) (+ bias[i]) for i < M, j < rows. w: weight row 0 at the pass's
/// first column, rows ldw apart; ws, wsum: its scales and block sums at the pass's first block, nb
/// per row; sx: the panel's input scales at that block, NV * kLanes per block.
template <int M, int NV>
inline void int8_tile(const int8_t* w, Index ldw, const float* ws, const int32_t* wsum, Index nb,
                      Index block, Index cols, const uint32_t* panel, const float* sx,
                      const float* bias, float* out, Index ld_out, Index rows, bool load_out) {
  V acc[M][NV];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vzero();
  }
  for (Index c0 = 0, b = 0; c0 < cols; c0 += block, ++b) {
    const Index n = std::min(block, cols - c0);
    const Index u0 = c0 / 4, u1 = u0 + n / 4;
    VI d[M][NV];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
#if TCONST_CK_INT8 == 2
      const VI start = vi_set1(-128 * wsum[i * nb + b]);
#else
      (void)wsum;
      const VI start = vi_set1(0);
#endif
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) d[i][v] = start;
    }
    for (Index u = u0; u < u1; ++u) {
      VI x[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) x[v] = vi_load(panel + (u * NV + v) * kLanes);
#pragma GCC unroll 16
      for (int i = 0; i < M; ++i) {
        const int32_t wu = load_unit(w + i * ldw + 4 * u);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) d[i][v] = dot_i8(d[i][v], x[v], wu);
      }
    }
    if (n % 4 != 0) {  // the row's last columns: the bytes after them are not this row's
      VI x[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) x[v] = vi_load(panel + (u1 * NV + v) * kLanes);
#pragma GCC unroll 16
      for (int i = 0; i < M; ++i) {
        const int32_t wu = load_unit_head(w + i * ldw + 4 * u1, n % 4);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) d[i][v] = dot_i8(d[i][v], x[v], wu);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const V s = vset(ws[i * nb + b]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const V t = vmul(vload(sx + (b * NV + v) * kLanes), s);
        acc[i][v] = vfma(vi_to_float(d[i][v]), t, acc[i][v]);
      }
    }
  }
  add_bias<M, NV>(acc, bias);
  store_tile<M, NV>(acc, out, ld_out, rows, load_out);
}

/// The int8 tiles over weight rows [o0, o1) and the packed rows (Int8ComputeFn).
template <int M1>
inline void int8_run(const WeightMatrix& W, const int32_t* sums, Index o0, Index o1, Index p0,
                     Index kc, const uint32_t* packed, const float* sx, Index rows,
                     const float* bias, float* out, Index ld_out, bool load_out) {
  const Index nb = W.blocks(), b0 = p0 / W.block, ku = (kc + 3) / 4;
  const int8_t* base = static_cast<const int8_t*>(W.data) + p0;
  for_tiles<kI8Mr, M1>(o0, o1, rows, [&](auto m, auto nv, Index o, Index j0, Index r) {
    constexpr int NV = decltype(nv)::value;
    int8_tile<decltype(m)::value, NV>(
        base + o * W.cols, W.cols, W.scales + o * nb + b0, sums + o * nb + b0, nb, W.block, kc,
        packed + j0 * ku, sx + j0 * nb + b0 * NV * kLanes, bias != nullptr ? bias + o : nullptr,
        out + j0 * ld_out + o, ld_out, r, load_out);
  });
}

/// acc += the sums of four products of x's bytes (q + 128) and w's (signed) in each 32-bit lane,
/// 8 lanes (less 128 times w's sum where the accumulator starts from that, VNNI); q . w exactly
/// otherwise.
inline __m256i dot_i8_256(__m256i acc, __m256i x, __m256i w) {
#if TCONST_CK_INT8 == 2 && TCONST_ISA_LANES == 16
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));  // as in dot_i8
  return acc;
#elif TCONST_CK_INT8 == 2
  asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(x), "x"(w));
  return acc;
#else
  const __m256i q = _mm256_xor_si256(x, _mm256_set1_epi8(static_cast<char>(0x80)));
  const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(q, w));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

/// Lane r of the result is the sum of a[r]'s lanes (exact: int32).
inline __m256i lane_sums_i8x(const __m256i (&a)[8]) {
  const __m256i h01 = _mm256_hadd_epi32(a[0], a[1]), h23 = _mm256_hadd_epi32(a[2], a[3]);
  const __m256i h45 = _mm256_hadd_epi32(a[4], a[5]), h67 = _mm256_hadd_epi32(a[6], a[7]);
  const __m256i lo = _mm256_hadd_epi32(h01, h23), hi = _mm256_hadd_epi32(h45, h67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20),
                          _mm256_permute2x128_si256(lo, hi, 0x31));
}

/// t[j] lane i = the 32-bit value at p[i] + j, for 8 pointers and j < 8 (8 x 8 transposed).
inline void gather8x8(const int32_t* const (&p)[8], __m256i (&t)[8]) {
  __m256i a[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) a[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[i]));
  const __m256i t0 = _mm256_unpacklo_epi32(a[0], a[1]), t1 = _mm256_unpackhi_epi32(a[0], a[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(a[2], a[3]), t3 = _mm256_unpackhi_epi32(a[2], a[3]);
  const __m256i t4 = _mm256_unpacklo_epi32(a[4], a[5]), t5 = _mm256_unpackhi_epi32(a[4], a[5]);
  const __m256i t6 = _mm256_unpacklo_epi32(a[6], a[7]), t7 = _mm256_unpackhi_epi32(a[6], a[7]);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
  const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
  t[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
  t[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
  t[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
  t[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
  t[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
  t[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
  t[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
  t[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

/// out[o] (+)= the int8 mode's product of one prepared input row x (bytes q + 128, its block
/// scales sx) and W's rows [o0, o1) (+ bias[o]), for blocks of 32 columns or more: a GEMV along k,
/// 8 weight rows at a time, each block's 32-column vectors multiplied as they lie and summed in
/// int32 lanes, then across lanes exactly (lane_sums_i8x) into D_b, so that every output goes
/// through the same operations as in int8_tile.
inline void int8_gemv(const WeightMatrix& W, const int32_t* sums, Index o0, Index o1,
                      const uint32_t* x, const float* sx, const float* bias, float* out,
                      bool accumulate) {
  const Index k = W.cols, nb = W.blocks(), block = W.block;
  const int8_t* base = static_cast<const int8_t*>(W.data);
  const uint8_t* xb = reinterpret_cast<const uint8_t*>(x);
  // x's columns after the last whole 32 (the last block's tail), zero-filled.
  alignas(32) uint8_t x_tail[32] = {};
  const Index last = (nb - 1) * block, x_full = last + (k - last) / 32 * 32;
  std::memcpy(x_tail, xb + x_full, static_cast<size_t>(k - x_full));
  for (Index o = o0; o < o1; o += 8) {
    const Index m = std::min<Index>(8, o1 - o);
    Index row[8];
    for (int r = 0; r < 8; ++r) row[r] = std::min<Index>(o + r, o1 - 1);
    __m256 acc = _mm256_setzero_ps();
    // The 8 rows' scales and block sums of 8 blocks at a time, transposed: lane r of sw[j] is row
    // r's scale of block b0 + j.
    __m256i sw[8], ws[8];
    for (Index b = 0, c0 = 0; b < nb; ++b, c0 += block) {
      const Index j = b % 8;
      if (j == 0) {
        const int32_t* ps[8];
        const int32_t* pw[8];
        if (b + 8 <= nb) {
          for (int r = 0; r < 8; ++r) {
            ps[r] = reinterpret_cast<const int32_t*>(W.scales + row[r] * nb + b);
            pw[r] = sums + row[r] * nb + b;
          }
          gather8x8(ps, sw);
          gather8x8(pw, ws);
        } else {  // the last blocks: fewer than 8
          alignas(32) int32_t tmp_s[8][8] = {}, tmp_w[8][8] = {};
          for (int r = 0; r < 8; ++r) {
            for (Index i = 0; i < nb - b; ++i) {
              std::memcpy(&tmp_s[r][i], W.scales + row[r] * nb + b + i, sizeof(float));
              tmp_w[r][i] = sums[row[r] * nb + b + i];
            }
            ps[r] = tmp_s[r];
            pw[r] = tmp_w[r];
          }
          gather8x8(ps, sw);
          gather8x8(pw, ws);
        }
      }
      const Index cols = std::min(block, k - c0), full = c0 + cols / 32 * 32;
      __m256i d[8];
      for (int r = 0; r < 8; ++r) d[r] = _mm256_setzero_si256();
      for (Index c = c0; c < full; c += 32) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + c));
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) {
          const __m256i wv =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + row[r] * k + c));
          d[r] = dot_i8_256(d[r], xv, wv);
        }
      }
      if (full < c0 + cols) {  // the row's last columns: nothing after them is read
        const Index rem = c0 + cols - full;
        const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(x_tail));
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem / 4)),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int r = 0; r < 8; ++r) {
          const int8_t* p = base + row[r] * k + full;
          __m256i wv = _mm256_maskload_epi32(reinterpret_cast<const int*>(p), mask);
          if (rem % 4 != 0) {  // the last unit's first rem % 4 bytes
            alignas(32) int32_t part[8] = {};
            part[rem / 4] = load_unit_head(p + rem / 4 * 4, rem % 4);
            wv = _mm256_or_si256(wv, _mm256_load_si256(reinterpret_cast<const __m256i*>(part)));
          }
          d[r] = dot_i8_256(d[r], xv, wv);
        }
      }
      __m256i dsum = lane_sums_i8x(d);
#if TCONST_CK_INT8 == 2
      // Less 128 times the rows' sums of the block's weights (the activations carry + 128).
      dsum = _mm256_sub_epi32(dsum, _mm256_slli_epi32(ws[j], 7));
#endif
      const __m256 t = _mm256_mul_ps(_mm256_castsi256_ps(sw[j]), _mm256_set1_ps(sx[b]));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dsum), t, acc);
    }
    alignas(32) float y[8];
    _mm256_store_ps(y, acc);
    for (Index r = 0; r < m; ++r) {
      const float v = y[r] + (bias != nullptr ? bias[o + r] : 0.0f);
      out[o + r] = accumulate ? out[o + r] + v : v;
    }
  }
}

inline void int8_rows(const WeightMatrix& W, const int32_t* sums, Index o0, Index o1,
                      const uint32_t* prepared, const float* scales, const uint32_t* packed,
                      const float* sx, Index rows, const float* bias, float* out, Index ld_out,
                      bool load_out) {
  if (rows == 1 && W.block >= 32) {
    int8_gemv(W, sums, o0, o1, prepared, scales, bias, out, load_out);
    return;
  }
  int8_run<kI8Mr1>(W, sums, o0, o1, 0, W.cols, packed, sx, rows, bias, out, ld_out, load_out);
}

inline void int8_compute(const WeightMatrix& W, const int32_t* sums, Index o0, Index o1, Index p0,
                         Index kc, const uint32_t* packed, const float* sx, Index rows,
                         const float* bias, float* out, Index ld_out, bool load_out) {
  int8_run<kI8Mr>(W, sums, o0, o1, p0, kc, packed, sx, rows, bias, out, ld_out, load_out);
}

#endif  // TCONST_CK_INT8

/// Puts this set's compute-mode kernels in t (those it compiles; the others stay as they are).
inline void fill_compute(KernelTable& t) {
  t.cnr = kCNr;
  t.clanes = kLanes;
  t.unit_pack = &unit_pack;
#if TCONST_CK_BF16
  t.bf16_prepare = &bf16_prepare;
  t.bf16_rows = &bf16_rows;
  t.bf16_compute = &bf16_compute;
  t.attend_bf16 = &bf16_attend;
  t.bf16_pair_rows = &bf16_pair_rows;
#endif
#if TCONST_CK_INT8
  t.int8_prepare = &int8_prepare;
  t.int8_rows = &int8_rows;
  t.int8_compute = &int8_compute;
#endif
}

}  // namespace TCONST_ISA_NS
}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
