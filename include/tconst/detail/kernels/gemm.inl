// One instruction set's pieces of the packed matrix product (gemm.hpp's driver): packing a panel
// of input rows, the register tile, and one attention head of many query rows through the same
// tile. Part of isa.inl, after simd.inl; TCONST_ISA_MR (weight rows per register tile) and
// TCONST_ISA_NV (vectors of input rows per register tile) give the tile.
//
// The register tile is out^T: MR output columns (weight rows, read in place and broadcast one
// float at a time) by NV vectors of input rows (read from a packed panel, the input's transpose:
// for each k, NV * LANES consecutive input rows). So the weights need no packed copy, and only the
// input, which every weight row reuses, is packed. The tile is transposed in registers when it is
// stored, 4 output columns at a time.

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {
namespace TCONST_ISA_NS {

constexpr int kMr = TCONST_ISA_MR;
constexpr int kNv = TCONST_ISA_NV;
constexpr int kNr = kNv * kLanes;  // input rows in a full panel

/// Packs input rows [0, rows) (rows <= kNr), columns [p0, p0 + kc), into a panel of
/// width = ceil(rows / kLanes) * kLanes floats per column: dst[c * width + r] = in[r, p0 + c],
/// zero for r >= rows. Returns the width.
inline Index pack_panel(const float* in, Index ld_in, Index rows, Index p0, Index kc, float* dst) {
  const Index width = (rows + kLanes - 1) / kLanes * kLanes;
  const float* src = in + p0;
  Index r = 0;
  // 8 rows by 8 columns at a time, transposed in registers.
  for (; r + 8 <= rows; r += 8) {
    Index c = 0;
    for (; c + 8 <= kc; c += 8) {
      __m256 a[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) a[i] = _mm256_loadu_ps(src + (r + i) * ld_in + c);
      const __m256 t0 = _mm256_unpacklo_ps(a[0], a[1]), t1 = _mm256_unpackhi_ps(a[0], a[1]);
      const __m256 t2 = _mm256_unpacklo_ps(a[2], a[3]), t3 = _mm256_unpackhi_ps(a[2], a[3]);
      const __m256 t4 = _mm256_unpacklo_ps(a[4], a[5]), t5 = _mm256_unpackhi_ps(a[4], a[5]);
      const __m256 t6 = _mm256_unpacklo_ps(a[6], a[7]), t7 = _mm256_unpackhi_ps(a[6], a[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* d = dst + c * width + r;
      _mm256_storeu_ps(d + 0 * width, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d + 1 * width, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d + 2 * width, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d + 3 * width, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d + 4 * width, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d + 5 * width, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d + 6 * width, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d + 7 * width, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (; c < kc; ++c) {
      for (Index i = 0; i < 8; ++i) dst[c * width + r + i] = src[(r + i) * ld_in + c];
    }
  }
  for (Index c = 0; c < kc; ++c) {
    for (Index i = r; i < rows; ++i) dst[c * width + i] = src[i * ld_in + c];
    for (Index i = rows; i < width; ++i) dst[c * width + i] = 0.0f;
  }
  return width;
}

/// Stores (or adds to) out the transposed tile: out[j, i] (+)= acc[i][v] lane j - v * kLanes, for
/// output columns i < M and input rows j < rows.
template <int M, int NV>
inline void store_tile(V (&acc)[M][NV], float* out, Index ld_out, Index rows, bool load_out) {
  constexpr int kQ = kLanes / 4;
#pragma GCC unroll 4
  for (int g = 0; g < (M + 3) / 4; ++g) {
    const int m = M - 4 * g < 4 ? M - 4 * g : 4;  // columns in this group
    const __m128i mask = head_mask(m);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const V a0 = acc[4 * g][v];
      const V a1 = 4 * g + 1 < M ? acc[4 * g + 1][v] : vzero();
      const V a2 = 4 * g + 2 < M ? acc[4 * g + 2][v] : vzero();
      const V a3 = 4 * g + 3 < M ? acc[4 * g + 3][v] : vzero();
      const V t0 = unpacklo(a0, a1), t1 = unpackhi(a0, a1);
      const V t2 = unpacklo(a2, a3), t3 = unpackhi(a2, a3);
      // u[c]'s 128-bit lane q: columns 4g..4g+3 of input row v * kLanes + 4q + c.
      __m128 u[4][kQ];
      quarters(unpacklo2(t0, t2), u[0]);
      quarters(unpackhi2(t0, t2), u[1]);
      quarters(unpacklo2(t1, t3), u[2]);
      quarters(unpackhi2(t1, t3), u[3]);
#pragma GCC unroll 4
      for (int q = 0; q < kQ; ++q) {
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          const Index j = v * kLanes + 4 * q + c;
          if (j >= rows) break;  // a short last panel
          float* p = out + j * ld_out + 4 * g;
          __m128 x = u[c][q];
          if (m == 4) {
            if (load_out) x = _mm_add_ps(_mm_loadu_ps(p), x);
            _mm_storeu_ps(p, x);
          } else {
            if (load_out) x = _mm_add_ps(_mm_maskload_ps(p, mask), x);
            _mm_maskstore_ps(p, mask, x);
          }
        }
      }
    }
  }
}

/// How a register tile reads its weights and where it puts its sums.
enum class TileKind {
  rows,    // weight i's column c at w[i * ldw + c]; out[j, i] (+)= sums, transposed, plus bias
  panel,   // as rows, but the sums stored as they lie, in panel layout: out[i * NV * kLanes + j]
  columns  // weight i's column c at w[c * ldw + i] (the weights' transpose); stored as rows
};

/// acc[i][v] = sum_c w(i, c) * panel[c * NV * kLanes + v * kLanes ...] over kc columns, w(i, c) as
/// TileKind K reads it.
template <int M, int NV, TileKind K>
inline void tile_sums(const float* w, Index ldw, const float* panel, Index kc, V (&acc)[M][NV]) {
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vzero();
  }
  for (Index c = 0; c < kc; ++c) {
    V x[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) x[v] = vload(panel + c * (NV * kLanes) + v * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const V s = vset(K == TileKind::columns ? w[c * ldw + i] : w[i * ldw + c]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = vfma(s, x[v], acc[i][v]);
    }
  }
}

/// One register tile over kc columns: out[j, i] (+)= sum_c w(i, c) * panel[c * NV * kLanes + j]
/// (+ bias[i]) for i < M, j < rows, w(i, c) as TileKind K reads it; `w` is the first weight at its
/// first column. TileKind::panel stores all NV * kLanes sums of each i (bias, ld_out, rows and
/// load_out unused).
template <int M, int NV, TileKind K = TileKind::rows>
void tile(const float* w, Index ldw, const float* panel, Index kc, const float* bias, float* out,
          Index ld_out, Index rows, bool load_out) {
  V acc[M][NV];
  tile_sums<M, NV, K>(w, ldw, panel, kc, acc);
  if constexpr (K == TileKind::panel) {
    (void)bias, (void)ld_out, (void)rows, (void)load_out;
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) vstore(out + (i * NV + v) * kLanes, acc[i][v]);
    }
    return;
  }
  if (bias != nullptr) {
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const V b = vset(bias[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = vadd(acc[i][v], b);
    }
  }
  store_tile<M, NV>(acc, out, ld_out, rows, load_out);
}

using TileFn = void (*)(const float*, Index, const float*, Index, const float*, float*, Index,
                        Index, bool);

template <TileKind K, int M, int NV = kNv>
inline TileFn tile_for_nv(int nv) {
  if constexpr (NV == 0) {
    return nullptr;
  } else {
    return nv == NV ? &tile<M, NV, K> : tile_for_nv<K, M, NV - 1>(nv);
  }
}

/// The tile of kind K of m (1..kMr) weights by nv (1..kNv) vectors.
template <TileKind K = TileKind::rows, int M = kMr>
inline TileFn tile_for(int m, int nv) {
  if constexpr (M == 0) {
    return nullptr;
  } else {
    return m == M ? tile_for_nv<K, M>(nv) : tile_for<K, M - 1>(m, nv);
  }
}

/// out[j, o] (+)= in[j, p0:p0+kc] . W[o, p0:p0+kc] (+ bias[o]) for o in [o0, o1) and the `rows`
/// input rows packed panel after panel (pack_panel) in `packed`; out points at input row 0's
/// output row. W is read in place, rows ldw apart.
inline void compute(const float* W, Index ldw, Index o0, Index o1, Index p0, Index kc,
                    const float* packed, Index rows, const float* bias, float* out, Index ld_out,
                    bool load_out) {
  for (Index op = o0; op < o1; op += kMr) {
    const int m = static_cast<int>(std::min<Index>(kMr, o1 - op));
    const float* w = W + op * ldw + p0;
    const float* b = bias != nullptr ? bias + op : nullptr;
    for (Index j0 = 0; j0 < rows; j0 += kNr) {
      const Index r = std::min<Index>(kNr, rows - j0);
      const int nv = static_cast<int>((r + kLanes - 1) / kLanes);
      const TileFn fn = m == kMr && nv == kNv ? &tile<kMr, kNv> : tile_for(m, nv);
      fn(w, ldw, packed + j0 * kc, kc, b, out + j0 * ld_out + op, ld_out, r, load_out);
    }
  }
}

// ---- one attention head: scores, softmax and values a panel of query rows at a time ----------
//
// A panel of queries' scores over nk keys is kept in panel layout: key c's scores of the panel's
// queries at c * width (width = the panel's rows rounded up to whole vectors): the layout
// pack_panel gives input rows over kc = nk columns. So the scores' tiles are stored as they lie (no
// transpose), the softmax of a query row runs down a lane (kLanes rows at once, no horizontal
// operation), and the product with the values reads the probabilities as its packed input (no
// packing), all while the panel's scores (kNr * nk floats) are still in L1.

/// The softmax of every query row of one panel of scores (width lanes, nk >= 1 keys), each score s
/// taken as scale * s (scale > 0), in place. Normalised when mx is nullptr: e^(s - m) / sum_c
/// e^(s - m), m the row's maximum. Otherwise one step of an online softmax with the rows' running
/// maximum mx and sum (64-byte aligned, one per lane): m' = max(mx, max_c s), e^(s - m'),
/// rescale = e^(mx - m'), sum = sum * rescale + sum_c e^(s - m'), mx = m'.
inline void softmax_panel(float* panel, Index width, Index nk, float scale, float* mx, float* sum,
                          float* rescale) {
  const V vscale = vset(scale), minus = vset(-1.0f);
  for (Index v = 0; v < width; v += kLanes) {
    float* col = panel + v;
    V top = vload(col);
    for (Index c = 1; c < nk; ++c) top = vmax(top, vload(col + c * width));
    V shift = vmul(top, vscale);
    V step = vzero();
    if (mx != nullptr) {
      const V old = vload(mx + v);
      shift = vmax(old, shift);
      step = vexp_nonpositive(vfma(shift, minus, old));
    }
    const V neg = vmul(shift, minus);
    V total = vzero();
    for (Index c = 0; c < nk; ++c) {
      const V e = vexp_nonpositive(vfma(vload(col + c * width), vscale, neg));
      vstore(col + c * width, e);
      total = vadd(total, e);
    }
    if (mx != nullptr) {
      vstore(mx + v, shift);
      vstore(rescale + v, step);
      vstore(sum + v, vfma(vload(sum + v), step, total));
    } else {
      const V inv = vdiv(vset(1.0f), total);
      for (Index c = 0; c < nk; ++c)
        vstore(col + c * width, vmul(vload(col + c * width), inv));
    }
  }
}

/// One head's attention of nq query rows, packed by pack_panel over dh columns at qp (panel j0 at
/// qp + j0 * dh), to nk >= 1 keys K and values V (rows ld_kv apart, read in place), a panel of
/// queries at a time through `pp` (kNr * nk floats, 64-byte aligned): out[j, 0..dh) (+)= sum_c
/// p(j, c) V[c], p the softmax of scale * (q_j . k_c) over the keys. Normalised when mx is nullptr
/// (added to out when load_out). Otherwise one step of an online softmax (softmax_panel) with the
/// rows' running maximum mx and sum (64-byte aligned, a whole vector per panel's last rows): out's
/// rows are first rescaled by e^(mx - m'), then the chunk's e^(s - m') V added.
inline void attend_panels(const float* K, const float* Vv, Index ld_kv, Index nk, const float* qp,
                          Index nq, Index dh, float scale, float* pp, float* mx, float* sum,
                          float* out, Index ld_out, bool load_out) {
  alignas(64) float rescale[kNr];
  for (Index j0 = 0; j0 < nq; j0 += kNr) {
    const Index rows = std::min<Index>(kNr, nq - j0);
    const int nv = static_cast<int>((rows + kLanes - 1) / kLanes);
    const Index width = nv * kLanes;
    for (Index c0 = 0; c0 < nk; c0 += kMr) {
      const int m = static_cast<int>(std::min<Index>(kMr, nk - c0));
      const TileFn fn = m == kMr && nv == kNv ? &tile<kMr, kNv, TileKind::panel>
                                              : tile_for<TileKind::panel>(m, nv);
      fn(K + c0 * ld_kv, ld_kv, qp + j0 * dh, dh, nullptr, pp + c0 * width, 0, 0, false);
    }
    const bool online = mx != nullptr;
    softmax_panel(pp, width, nk, scale, online ? mx + j0 : nullptr, online ? sum + j0 : nullptr,
                  rescale);
    float* o = out + j0 * ld_out;
    if (online) {
      for (Index r = 0; r < rows; ++r) {
        for (Index e = 0; e < dh; ++e) o[r * ld_out + e] *= rescale[r];
      }
    }
    for (Index e0 = 0; e0 < dh; e0 += kMr) {
      const int m = static_cast<int>(std::min<Index>(kMr, dh - e0));
      const TileFn fn = m == kMr && nv == kNv ? &tile<kMr, kNv, TileKind::columns>
                                              : tile_for<TileKind::columns>(m, nv);
      fn(Vv + e0, ld_kv, pp, nk, nullptr, o + e0, ld_out, rows, online || load_out);
    }
  }
}

}  // namespace TCONST_ISA_NS
}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst

