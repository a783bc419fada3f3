// One instruction set's few-row product over BF16 or Q8 weights (SPEC §6.1), out[n, o] (+)=
// in[n, k] W[o, k]^T (+ bias): rows_gemm.inl's scheme (each weight row read once against every
// input row while it is in registers), with each vector of weights widened to float as it is
// loaded: BF16 shifted into the upper half, Q8 sign-extended to int32, converted and multiplied by
// its block's scale, which is SPEC §6.1's float32 product, so the kernel multiplies exactly the
// dequantized matrix. Widening a vector takes 3 instructions on the ports that run the FMAs (2 for
// BF16), so the register block spreads it: each widened Q8 vector serves 8 input rows where there
// are 8 or more and the lanes are 16 (kWideGroup), and a Q8 row's scale is broadcast once per
// block, not per vector. One input row over Q8 (a cache-hit step's GEMV, where nothing shares the
// widening) takes qgemv instead: each block's products of the unscaled weights summed, then
// multiplied by the scale once (2 widening instructions per vector; the result differs from the
// dequantized matrix's product by rounding, within SPEC §6.1's tolerance). Also the widening of a
// strip of weight rows for the packed product (quant_gemm.inl). Part of isa.inl, after simd.inl.

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {
namespace TCONST_ISA_NS {

/// kLanes BF16 weights at p, widened.
inline V widen_bf16(const uint16_t* p) {
#if TCONST_ISA_LANES == 16
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#else
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#endif
}

/// kLanes Q8 weights at p as floats, unscaled (the first `head` of them when head > 0, the rest 0).
inline V widen_q8_raw(const int8_t* p, int head) {
  int8_t tmp[16] = {};
  if (head > 0) {
    std::memcpy(tmp, p, static_cast<size_t>(head));
    p = tmp;
  }
#if TCONST_ISA_LANES == 16
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
#else
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
#endif
}

/// kLanes Q8 weights at p times `scale` (one float32 multiplication each, SPEC §6.1).
inline V widen_q8(const int8_t* p, V scale) {
  return vmul(scale, widen_q8_raw(p, 0));
}

/// The weights [c, c + kLanes) of one row (row points at its column 0; q8: `scale` is the
/// scale of the block that holds them, broadcast), widened; with head > 0 only the first `head`
/// are read, the rest 0. A vector lies in one block: blocks are multiples of 16 columns, and
/// vectors start on multiples of kLanes.
template <WeightFormat F>
inline V widen(const void* row, V scale, Index c, int head) {
  if constexpr (F == WeightFormat::bf16) {
    (void)scale;
    const uint16_t* p = static_cast<const uint16_t*>(row) + c;
    if (head == 0) return widen_bf16(p);
    uint16_t tmp[kLanes] = {};
    std::memcpy(tmp, p, sizeof(uint16_t) * static_cast<size_t>(head));
    return widen_bf16(tmp);
  } else {
    return vmul(scale, widen_q8_raw(static_cast<const int8_t*>(row) + c, head));
  }
}

/// The weight matrix as the few-row kernel walks it.
struct QuantRows {
  const void* data;     // row 0
  const float* scales;  // q8: row 0's first scale
  Index k;              // columns
  Index blocks;         // q8: scales per row
  int shift;            // q8: log2 of the block size
  size_t elem;          // bytes per weight

  const void* row(Index r) const { return static_cast<const char*>(data) + elem * r * k; }
  const float* scale_row(Index r) const {
    return scales != nullptr ? scales + r * blocks : nullptr;
  }
};

/// acc[r][g] += W[r, c..c+L) * in[g, c..c+L) over one vector of columns (`head` > 0: only the
/// first `head` columns are there) for the R rows at rows[r] (column 0), q8 with the scales
/// `scale[r]` of the block that holds column c; with Fetch, the same columns of the rows `ahead`
/// bytes on are fetched.
template <WeightFormat F, int R, int G, bool Fetch>
inline void qaccumulate(V (&acc)[R][G], const char* const (&rows)[R], const V (&scale)[R],
                        size_t elem, size_t ahead, const float* in, Index ld_in, Index c,
                        int head) {
  V x[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    x[g] = head > 0 ? vload_head(in + g * ld_in + c, head) : vload(in + g * ld_in + c);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const V w = widen<F>(rows[r], scale[r], c, head);
    // The same columns of the next R rows, once per 64-byte line of them.
    if constexpr (Fetch) {
      const size_t at = elem * static_cast<size_t>(c);
      if (at % 64 == 0) _mm_prefetch(rows[r] + ahead + at, _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[r][g] = vfma(w, x[g], acc[r][g]);
  }
}

/// out[g * ld_out + r] (+)= the sum of acc[r][g]'s lanes (+ bias[r]).
template <int R, int G>
inline void qstore(V (&acc)[R][G], const float* bias, float* out, Index ld_out, bool accumulate) {
  if constexpr (R * G == kLanes && !(R == kRows && G == kGroup)) {
    // One vector of sums (lane_sums: a tree of shuffles, not kLanes reductions); lane r + R g
    // is acc[r][g]'s.
    V a[kLanes];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) a[r + R * g] = acc[r][g];
    }
    alignas(64) float sums[kLanes];
    vstore(sums, lane_sums(a));
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const float y = sums[r + R * g] + (bias != nullptr ? bias[r] : 0.0f);
        float& o = out[g * ld_out + r];
        o = accumulate ? o + y : y;
      }
    }
    return;
  }
  if (!accumulate) {
    store_sums<R, G>(acc, bias, out, ld_out);
    return;
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const float b = bias != nullptr ? bias[r] : 0.0f;
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) out[g * ld_out + r] += vsum(acc[r][g]) + b;
  }
}

/// out[g, r0 + r] (+)= in[g, :] . W[r0 + r, :] (+ bias[r]) for R weight rows and G input rows:
/// q8 block by block, each row's scale broadcast once per block.
template <WeightFormat F, int R, int G, bool Fetch>
inline void qblock(const QuantRows& W, Index r0, const float* in, Index ld_in, const float* bias,
                   float* out, Index ld_out, bool accumulate) {
  V acc[R][G];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[r][g] = vzero();
  }
  const Index k = W.k;
  const char* rows[R];
  const float* scales[R];  // q8
  V scale[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    rows[r] = static_cast<const char*>(W.row(r0 + r));
    scales[r] = W.scale_row(r0 + r);
    scale[r] = vzero();
  }
  const size_t ahead = W.elem * static_cast<size_t>(R * k);
  // Columns [c0, c1) share one scale per row (q8: one block; bf16: the whole row).
  const Index span = F == WeightFormat::q8 ? Index{1} << W.shift : k;
  for (Index c0 = 0; c0 < k; c0 += span) {
    const Index c1 = std::min(k, c0 + span);
    if constexpr (F == WeightFormat::q8) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) scale[r] = vset(scales[r][c0 >> W.shift]);
    }
    Index c = c0;
    for (; c + kLanes <= c1; c += kLanes) {
      qaccumulate<F, R, G, Fetch>(acc, rows, scale, W.elem, ahead, in, ld_in, c, 0);
    }
    if (c < c1) {
      qaccumulate<F, R, G, Fetch>(acc, rows, scale, W.elem, ahead, in, ld_in, c,
                                  static_cast<int>(c1 - c));
    }
  }
  qstore<R, G>(acc, bias, out, ld_out, accumulate);
}

/// qblock for the last `rem` (< kGroup) input rows, G counting down to rem.
template <WeightFormat F, int R, int G>
inline void qlast_group(Index rem, const QuantRows& W, Index r0, const float* in, Index ld_in,
                        const float* bias, float* out, Index ld_out, bool accumulate, bool fetch) {
  if constexpr (G > 0) {
    if (rem == G && fetch) {
      qblock<F, R, G, true>(W, r0, in, ld_in, bias, out, ld_out, accumulate);
    } else if (rem == G) {
      qblock<F, R, G, false>(W, r0, in, ld_in, bias, out, ld_out, accumulate);
    } else {
      qlast_group<F, R, G - 1>(rem, W, r0, in, ld_in, bias, out, ld_out, accumulate, fetch);
    }
  }
}

/// Every group of up to Group input rows against R weight rows (as rows_gemm.inl's row_block).
template <WeightFormat F, int R, int Group = kGroup>
inline void qrow_block(const QuantRows& W, Index r0, const float* in, Index ld_in, Index n,
                       const float* bias, float* out, Index ld_out, bool accumulate) {
  Index g0 = 0;
  for (; g0 + Group <= n; g0 += Group) {
    if (n <= Group || g0 == Group) {
      qblock<F, R, Group, true>(W, r0, in + g0 * ld_in, ld_in, bias, out + g0 * ld_out, ld_out,
                                accumulate);
    } else {
      qblock<F, R, Group, false>(W, r0, in + g0 * ld_in, ld_in, bias, out + g0 * ld_out, ld_out,
                                 accumulate);
    }
  }
  qlast_group<F, R, Group - 1>(n - g0, W, r0, in + g0 * ld_in, ld_in, bias, out + g0 * ld_out,
                               ld_out, accumulate, n <= Group || g0 == Group);
}

/// t = sum over the block's columns [c0, c1) of W[row, c] x[c], unscaled: VB whole vectors, or
/// (VB = 0) as many as the block holds, the last one partial if need be.
template <int VB>
inline V qgemv_block(const int8_t* row, const float* x, Index c0, Index c1) {
  if constexpr (VB > 0) {
    V t = vmul(widen_q8_raw(row + c0, 0), vload(x + c0));
#pragma GCC unroll 16
    for (int v = 1; v < VB; ++v) {
      const Index c = c0 + v * kLanes;
      t = vfma(widen_q8_raw(row + c, 0), vload(x + c), t);
    }
    return t;
  } else {
    V t = vzero();
    for (Index c = c0; c < c1; c += kLanes) {
      const int head = c + kLanes <= c1 ? 0 : static_cast<int>(c1 - c);
      t = vfma(widen_q8_raw(row + c, head), head > 0 ? vload_head(x + c, head) : vload(x + c), t);
    }
    return t;
  }
}

/// out[r0 + r] (+)= x . W[r0 + r, :] (+ bias[r]) for R (at most kLanes) Q8 weight rows and one
/// input row: each block's unscaled sum t of q * x, then acc += scale * t (the scale multiplies
/// once per block and row rather than once per weight: 2 instructions widen a vector, where the
/// float32 product of each weight's scale would be a third on the FMA ports; the result differs
/// from the dequantized matrix's product by rounding only, as SPEC §6.1 allows). Each row's lanes
/// are summed by lane_sums, the same tree for every row whatever R. Blocks of VB whole vectors (VB
/// = 0: any). With Fetch, the same columns of the next R rows are fetched meanwhile.
template <int R, int VB, bool Fetch>
inline void qgemv(const QuantRows& W, Index r0, const float* x, const float* bias, float* out,
                  bool accumulate) {
  V acc[kLanes];
#pragma GCC unroll 16
  for (int r = 0; r < kLanes; ++r) acc[r] = vzero();
  const Index k = W.k, nb = W.blocks, span = Index{1} << W.shift;
  const int8_t* base = static_cast<const int8_t*>(W.row(r0));
  const float* sbase = W.scale_row(r0);
  const Index full = VB > 0 ? k / span * span : 0;  // columns in whole blocks of VB vectors
  Index c0 = 0, b = 0;
  for (; c0 < full; c0 += span, ++b) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const int8_t* row = base + r * k;
      if constexpr (Fetch) {
        if (c0 % 64 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(row + R * k + c0), _MM_HINT_T0);
      }
      acc[r] = vfma(vset(sbase[r * nb + b]), qgemv_block<VB>(row, x, c0, c0 + span), acc[r]);
    }
  }
  for (; c0 < k; c0 += span, ++b) {  // the last block, partial (or every block when VB = 0)
    const Index c1 = std::min(k, c0 + span);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const int8_t* row = base + r * k;
      if constexpr (Fetch) {
        for (Index c = c0; c < c1; c += kLanes) {
          if (c % 64 == 0) {
            _mm_prefetch(reinterpret_cast<const char*>(row + R * k + c), _MM_HINT_T0);
          }
        }
      }
      acc[r] = vfma(vset(sbase[r * nb + b]), qgemv_block<0>(row, x, c0, c1), acc[r]);
    }
  }
  alignas(64) float sums[kLanes];
  vstore(sums, lane_sums(acc));
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const float y = sums[r] + (bias != nullptr ? bias[r] : 0.0f);
    out[r] = accumulate ? out[r] + y : y;
  }
}

/// Weight rows per group of the Q8 GEMV: 8 (16 and 4 measured slower or no faster,
/// BM_QuantLinear; docs/benchmarks.md, "Choices measured").
constexpr int kGemvRows = 8;

/// qgemv over rows [o, o1): groups of kGemvRows rows, then one row at a time.
template <int VB>
inline void qgemv_rows(const QuantRows& W, Index o, Index o1, const float* x, const float* bias,
                       float* out, bool accumulate) {
  auto b = [&](Index r) { return bias != nullptr ? bias + r : nullptr; };
  for (; o + kGemvRows <= o1; o += kGemvRows) {
    qgemv<kGemvRows, VB, true>(W, o, x, b(o), out + o, accumulate);
  }
  for (; o < o1; ++o) qgemv<1, VB, false>(W, o, x, b(o), out + o, accumulate);
}

/// Input rows per group and weight rows per block of the wide register block, for 8 rows or more
/// over Q8: each widened vector of weights then serves 8 input rows (kGroup's serve 4 on AVX-512,
/// so the widening, 3 instructions on the FMA ports, would be repeated for every 4 rows). BF16's
/// widening is cheaper (2): its 8-row products keep kGroup (BM_QuantLinear; docs/benchmarks.md,
/// "Choices measured").
constexpr int kWideGroup = kLanes == 16 ? 8 : kGroup;
constexpr int kWideRows = kLanes == 16 ? 2 : kRows;

/// out[g, o] (+)= in[g, :] . W[o, :] (+ bias[o]) for g < n (<= 16 for speed; any n works),
/// o in [o0, o1); W in format F.
template <WeightFormat F>
inline void quant_rows_format(const QuantRows& W, Index o0, Index o1, const float* in, Index ld_in,
                              Index n, const float* bias, float* out, Index ld_out,
                              bool accumulate) {
  Index o = o0;
  auto b = [&](Index r) { return bias != nullptr ? bias + r : nullptr; };
  if constexpr (F == WeightFormat::q8) {
    if (n == 1) {  // a GEMV, blocks of whole vectors unrolled
      switch ((Index{1} << W.shift) / kLanes) {
        case 1:
          qgemv_rows<1>(W, o, o1, in, bias, out, accumulate);
          return;
        case 2:
          qgemv_rows<2>(W, o, o1, in, bias, out, accumulate);
          return;
        case 4:
          qgemv_rows<4>(W, o, o1, in, bias, out, accumulate);
          return;
        case 8:
          qgemv_rows<8>(W, o, o1, in, bias, out, accumulate);
          return;
        default:
          qgemv_rows<0>(W, o, o1, in, bias, out, accumulate);
          return;
      }
    }
  }
  if (n == 1) {  // a GEMV: more rows in flight keep more of memory's bandwidth busy
    for (; o + 8 <= o1; o += 8) {
      qblock<F, 8, 1, true>(W, o, in, ld_in, b(o), out + o, ld_out, accumulate);
    }
  }
  if (F == WeightFormat::q8 && n >= kWideGroup && kWideGroup != kGroup) {
    for (; o + kWideRows <= o1; o += kWideRows) {
      qrow_block<F, kWideRows, kWideGroup>(W, o, in, ld_in, n, b(o), out + o, ld_out, accumulate);
    }
  }
  for (; o + kRows <= o1; o += kRows) {
    qrow_block<F, kRows>(W, o, in, ld_in, n, b(o), out + o, ld_out, accumulate);
  }
  for (; o < o1; ++o) qrow_block<F, 1>(W, o, in, ld_in, n, b(o), out + o, ld_out, accumulate);
}

/// quant_rows_format for W's format (bf16 or q8).
inline void quant_rows(const WeightMatrix& W, Index o0, Index o1, const float* in, Index ld_in,
                       Index n, const float* bias, float* out, Index ld_out, bool accumulate) {
  int shift = 0;
  while (W.block > (Index{1} << shift)) ++shift;
  const bool q8 = W.format == WeightFormat::q8;
  const QuantRows rows{W.data, q8 ? W.scales : nullptr,   W.cols, q8 ? W.blocks() : 0,
                       shift,  q8 ? size_t{1} : size_t{2}};
  if (q8) {
    quant_rows_format<WeightFormat::q8>(rows, o0, o1, in, ld_in, n, bias, out, ld_out, accumulate);
  } else {
    quant_rows_format<WeightFormat::bf16>(rows, o0, o1, in, ld_in, n, bias, out, ld_out,
                                          accumulate);
  }
}

/// Fetches into L2 what widen_strip(W, r0, m, p0, kc, ...) will read (weights and q8 scales).
inline void fetch_strip(const WeightMatrix& W, Index r0, Index m, Index p0, Index kc) {
  const size_t elem = W.format == WeightFormat::bf16 ? 2 : 1;
  for (Index i = 0; i < m; ++i) {
    const char* p =
        static_cast<const char*>(W.data) + elem * static_cast<size_t>((r0 + i) * W.cols + p0);
    for (size_t at = 0; at < elem * static_cast<size_t>(kc); at += 64)
      _mm_prefetch(p + at, _MM_HINT_T1);
    if (W.format == WeightFormat::q8) {
      _mm_prefetch(reinterpret_cast<const char*>(W.scales + (r0 + i) * W.blocks() + p0 / W.block),
                   _MM_HINT_T1);
    }
  }
}

/// dst[i * kc + c] = W[r0 + i, p0 + c] for i < m, c < kc: a strip of weight rows widened to float
/// (the same values as dequantize_row), for the packed product's register tile. For q8, p0 is a
/// multiple of the block (the product's passes are whole blocks).
inline void widen_strip(const WeightMatrix& W, Index r0, Index m, Index p0, Index kc, float* dst) {
  if (W.format == WeightFormat::bf16) {
    for (Index i = 0; i < m; ++i) {
      const uint16_t* p = static_cast<const uint16_t*>(W.data) + (r0 + i) * W.cols + p0;
      float* d = dst + i * kc;
      Index c = 0;
      for (; c + kLanes <= kc; c += kLanes) vstore(d + c, widen_bf16(p + c));
      for (; c < kc; ++c) d[c] = bf16_bits_to_float(p[c]);
    }
    return;
  }
  int shift = 0;  // the block is a power of two
  while ((Index{1} << shift) < W.block) ++shift;
  const Index nb = W.blocks();
  for (Index i = 0; i < m; ++i) {
    const int8_t* p = static_cast<const int8_t*>(W.data) + (r0 + i) * W.cols + p0;
    const float* s = W.scales + (r0 + i) * nb;
    float* d = dst + i * kc;
    // p0 starts a block, so every vector lies in one block: one scale each, no test per block.
    Index c = 0;
    for (; c + kLanes <= kc; c += kLanes) {
      vstore(d + c, widen_q8(p + c, vset(s[(p0 + c) >> shift])));
    }
    for (; c < kc; ++c) d[c] = s[(p0 + c) >> shift] * static_cast<float>(p[c]);
  }
}

}  // namespace TCONST_ISA_NS
}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
