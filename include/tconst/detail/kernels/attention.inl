// One instruction set's attention of one query row over a cache of keys and values, every head:
// the cache-hit step's attention (attend_one_portable in ops.hpp is its portable form). Part of
// isa.inl, after simd.inl.

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {
namespace TCONST_ISA_NS {

using Eigen::Index;

/// Rows are fetched this many rows (27 KB at d = 432) ahead of their use: memory's prefetchers
/// do not follow a block's kLanes rows read a few columns at a time. Further ahead, the rows
/// fetched would no longer fit in L1 beside the block in use (a prefetch past the last row is
/// harmless).
constexpr Index kFetchAhead = 16;

/// The columns [c * kLanes, ...) of one head's dh columns at p: a whole vector, or the last chunk's
/// `tail` columns.
inline V load_head_cols(const float* p, Index c, Index chunks, int tail) {
  return c + 1 < chunks || tail == kLanes ? vload(p) : vload_head(p, tail);
}

/// scores[h * nk + j] = scale * q_h . K[j, h] for every head h and key j < nk: kLanes keys per
/// block, each head's dot products summed across lanes at once, so a block of key rows is read
/// from memory once for all heads.
inline void attention_scores(const float* q, const float* K, Index ld, Index nk, Index heads,
                             Index dh, float scale, float* scores) {
  const Index chunks = (dh + kLanes - 1) / kLanes;
  const int tail = static_cast<int>(dh - (chunks - 1) * kLanes);  // columns in the last chunk
  for (Index j0 = 0; j0 < nk; j0 += kLanes) {
    const Index jn = std::min<Index>(kLanes, nk - j0);
    for (Index h = 0; h < heads; ++h) {
      V acc[kLanes];
#pragma GCC unroll 16
      for (int t = 0; t < kLanes; ++t) acc[t] = vzero();
      for (Index c = 0; c < chunks; ++c) {
        const Index col = h * dh + c * kLanes;
        const V qc = load_head_cols(q + col, c, chunks, tail);
#pragma GCC unroll 16
        for (int t = 0; t < kLanes; ++t) {
          // A short last block repeats its last key; those lanes are not stored.
          const Index j = j0 + std::min<Index>(t, jn - 1);
          acc[t] = vfma(qc, load_head_cols(K + j * ld + col, c, chunks, tail), acc[t]);
          _mm_prefetch(reinterpret_cast<const char*>(K + (j + kFetchAhead) * ld + col),
                       _MM_HINT_T0);
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
}

/// The largest of p[0..n), n >= 1.
inline float max_of(const float* p, Index n) {
  const Index whole = n / kLanes * kLanes;
  V m = vset(-std::numeric_limits<float>::infinity());
  for (Index j = 0; j < whole; j += kLanes) m = vmax(m, vload(p + j));
  float mx = vmax_lanes(m);
  for (Index j = whole; j < n; ++j) mx = std::max(mx, p[j]);
  return mx;
}

/// p[j] = e^(p[j] - shift) for j < n, shift >= every p[j]; returns their sum.
inline float exp_sum(float* p, Index n, float shift) {
  const Index whole = n / kLanes * kLanes;
  const int rest = static_cast<int>(n - whole);
  V sum = vzero();
  for (Index j = 0; j < whole; j += kLanes) {
    const V e = vexp_nonpositive(vadd(vload(p + j), vset(-shift)));
    vstore(p + j, e);
    sum = vadd(sum, e);
  }
  if (rest > 0) {
    const V e = vexp_nonpositive(vadd(vload_head(p + whole, rest), vset(-shift)));
    vstore_head(p + whole, e, rest);
    sum = vadd(sum, vload_head(p + whole, rest));
  }
  return vsum(sum);
}

/// p[0..n) = softmax(p[0..n)) in place, shifted by the maximum so that no exponent is positive
/// (softmax_portable in ops.hpp is the portable form).
inline void softmax(float* p, Index n) {
  const float inv = 1.0f / exp_sum(p, n, max_of(p, n));
  const Index whole = n / kLanes * kLanes;
  for (Index j = 0; j < whole; j += kLanes) vstore(p + j, vmul(vload(p + j), vset(inv)));
  for (Index j = whole; j < n; ++j) p[j] *= inv;
}

/// out[h * dh, (h + 1) * dh) += sum_j p_h[j] V[j, h] for every head, p_h = probs + h * nk:
/// kLanes value rows per block, each head's output columns gathering the block's rows.
inline void attention_values(const float* probs, const float* Vv, Index ld, Index nk, Index heads,
                             Index dh, float* out) {
  const Index chunks = (dh + kLanes - 1) / kLanes;
  const int tail = static_cast<int>(dh - (chunks - 1) * kLanes);
  for (Index j0 = 0; j0 < nk; j0 += kLanes) {
    const Index j1 = std::min<Index>(nk, j0 + kLanes);
    for (Index h = 0; h < heads; ++h) {
      const float* p = probs + h * nk;
      for (Index c = 0; c < chunks; ++c) {
        const Index col = h * dh + c * kLanes;
        V acc = load_head_cols(out + col, c, chunks, tail);
        for (Index j = j0; j < j1; ++j) {
          acc = vfma(vset(p[j]), load_head_cols(Vv + j * ld + col, c, chunks, tail), acc);
          _mm_prefetch(reinterpret_cast<const char*>(Vv + (j + kFetchAhead) * ld + col),
                       _MM_HINT_T0);
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

/// One query row against nk key rows, every head: out[h*dh, (h+1)*dh) (+)=
/// softmax_j(scale q_h . K[j, h]) V[j, h] (as ops.hpp's attend_one). `scores` holds heads * nk
/// floats. Keys and values are each read once from memory, a block of kLanes rows at a time that
/// every head then uses from L1. Allocates nothing.
inline void attend_one(const float* q, const float* K, const float* Vv, Index ld, Index nk,
                       Index heads, Index dh, float* scores, float* out, bool accumulate) {
  attention_scores(q, K, ld, nk, heads, dh, 1.0f / std::sqrt(static_cast<float>(dh)), scores);
  for (Index h = 0; h < heads; ++h) softmax(scores + h * nk, nk);
  if (!accumulate) std::memset(out, 0, sizeof(float) * static_cast<size_t>(heads * dh));
  attention_values(scores, Vv, ld, nk, heads, dh, out);
}

}  // namespace TCONST_ISA_NS
}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
