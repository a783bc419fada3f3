#pragma once
// ContextPath: the O(N) resync (SPEC §4 context stream, SPEC §5).
//
// Over the history t[0..Lc) it runs, block by block, the compress layer (every context row's
// query, key and value; the last Z rows' queries attend to all Lc keys), the hidden layers over the
// Z compressed rows, and the restore layer, whose context queries (the compress layer's Qc) attend
// to the compressed keys to give the context entering the next block. It stores every hidden and
// restore layer's rotated Kz, Vz in the fixed cache.
//
// Memory is bounded by processing the context in row chunks: the compress layer's attention over
// all Lc keys uses a running softmax, so keys and values exist one chunk at a time. What a resync
// keeps at once is the context stream C [Lc, d], the compress queries Qc [Lc, d] (only when a later
// block needs them) and O(R * (4d + 2f) + R^2) scalars of chunk buffers, R = max(256, Hh).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tconst/detail/growing_kv.hpp"
#include "tconst/detail/layers.hpp"
#include "tconst/detail/ops.hpp"
#include "tconst/model.hpp"
#include "tconst/tconstformer/kv_cache.hpp"

namespace tconst {

namespace detail {

/// Context rows per chunk of the resync.
constexpr Index kResyncChunk = 256;

/// Buffers of a resync. They grow to the largest history seen and are then reused.
template <typename S>
struct ContextScratch {
  std::vector<S> C;       // [Lc, d] context stream entering the current block
  std::vector<S> Qc;      // [Lc, d] rotated compress queries (kept only for a following restore)
  std::vector<S> zq;      // [Z, d] rotated compress queries of the history rows hs..Lc
  std::vector<S> zkv;     // [Z, 2d] rotated compress keys | values of rows hs..Lc
  std::vector<S> Zc;      // [Z, d] compressed stream
  std::vector<S> xn;      // [R, d]
  std::vector<S> qkv;     // [R, 3d]
  std::vector<S> att;     // [R, d]
  std::vector<S> h1, h3;  // [R, f]
  std::vector<S> scores;  // [R * R]
  OnlineAttention<S> online;

  /// Frees the buffers whose size grows with the history (C, Qc); the chunk buffers stay.
  void release_stream() {
    std::vector<S>().swap(C);
    std::vector<S>().swap(Qc);
  }

  size_t bytes() const {
    return sizeof(S) * (C.capacity() + Qc.capacity() + zq.capacity() + zkv.capacity() +
                        Zc.capacity() + xn.capacity() + qkv.capacity() + att.capacity() +
                        h1.capacity() + h3.capacity() + scores.capacity());
  }
};

template <typename S>
void grow(std::vector<S>& v, Index n) {
  if (static_cast<Index>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace detail

/// The context path of TConstFormer and TLinFormer. Stateless over the model's weights.
template <typename Scalar>
class ContextPath {
 public:
  using Index = Eigen::Index;

  /// Resync over the history tokens[0..Lc), Lc > 0: fills every block's compressed Kz, Vz and
  /// clears the window caches. With `context_kv` (TLinFormer) it also stores every block's rotated
  /// compress keys and values of all Lc rows there. Buffers are sized before the cache is first
  /// written; should anything still throw part-way, the cache is inconsistent and the caller
  /// (Scheduler) rebuilds it from its token log.
  static void resync(const Model<Scalar>& m, const int32_t* tokens, int64_t Lc,
                     FixedKVCache<Scalar>& cache, detail::GrowingKV<Scalar>* context_kv,
                     detail::ContextScratch<Scalar>& s) {
    using detail::grow;
    const ModelConfig& c = m.config();
    const Index d = c.n_embd, f = c.ffn_hidden, heads = c.n_head, dh = c.head_dim();
    const Index B = c.n_block, D = c.inner_depth;
    const Index N = static_cast<Index>(Lc);
    const Index hs = std::max<Index>(0, N - c.history_window);
    const Index Z = N - hs;
    const Index R = std::max<Index>(detail::kResyncChunk, Z);
    const double eps = c.norm_eps;
    const auto& theta = m.rope_theta();

    grow(s.C, N * d);
    if (B > 1) grow(s.Qc, N * d);
    grow(s.zq, Z * d);
    grow(s.zkv, Z * 2 * d);
    grow(s.Zc, Z * d);
    grow(s.xn, R * d);
    grow(s.qkv, R * 3 * d);
    grow(s.att, R * d);
    grow(s.h1, R * f);
    grow(s.h3, R * f);
    grow(s.scores, std::max(R * R, heads * R));
    s.online.reset(s.zq.data(), d, Z, heads, dh);  // sizes its accumulators
    if (context_kv != nullptr) context_kv->reserve(N);

    Scalar* C = s.C.data();
    Scalar* xn = s.xn.data();
    Scalar* qkv = s.qkv.data();
    Scalar* att = s.att.data();
    Scalar* Zc = s.Zc.data();
    detail::embed(m, tokens, N, C);

    for (Index b = 0; b < B; ++b) {
      const bool last = b == B - 1;
      const LayerWeights<Scalar>& P0 = m.layer(b, 0);

      // Compress layer, context rows [r0, r0 + n): (Qc, Kc, Vc) = qkv0(LN1_0(C)), q and k rotated
      // at their positions, left in qkv [n, 3d].
      auto project = [&](Index r0, Index n) {
        detail::layer_norm(C + r0 * d, d, xn, d, n, d, P0.norm1_w, P0.norm1_b, eps);
        detail::linear<Scalar>(xn, d, n, P0.qkv_w.mat(), P0.qkv_b.data, qkv, 3 * d);
        detail::rope(qkv, 3 * d, n, 2 * d, dh, r0, theta);
        for (Index r = 0; r < n; ++r) {
          const Scalar* row = qkv + r * 3 * d;
          if (!last) std::memcpy(s.Qc.data() + (r0 + r) * d, row, sizeof(Scalar) * d);
          if (context_kv != nullptr) {
            std::memcpy(context_kv->keys(b) + (r0 + r) * d, row + d, sizeof(Scalar) * d);
            std::memcpy(context_kv->values(b) + (r0 + r) * d, row + 2 * d, sizeof(Scalar) * d);
          }
        }
      };

      // The history rows first: their queries must be known before any key is folded in.
      for (Index r0 = hs; r0 < N; r0 += detail::kResyncChunk) {
        const Index n = std::min(detail::kResyncChunk, N - r0);
        project(r0, n);
        for (Index r = 0; r < n; ++r) {
          const Scalar* row = qkv + r * 3 * d;
          std::memcpy(s.zq.data() + (r0 - hs + r) * d, row, sizeof(Scalar) * d);
          std::memcpy(s.zkv.data() + (r0 - hs + r) * 2 * d, row + d, sizeof(Scalar) * 2 * d);
        }
      }
      // A = Attn(Qc[hs:], Kc, Vc), non-causal over all Lc keys, folded chunk by chunk.
      s.online.reset(s.zq.data(), d, Z, heads, dh);
      s.online.add(s.zkv.data(), s.zkv.data() + d, 2 * d, Z, s.scores.data());
      for (Index r0 = 0; r0 < hs; r0 += detail::kResyncChunk) {
        const Index n = std::min(detail::kResyncChunk, hs - r0);
        project(r0, n);
        s.online.add(qkv + d, qkv + 2 * d, 3 * d, n, s.scores.data());
      }
      s.online.finish(att, d);
      // Zc = C[hs:] + out0(A); Zc += FFN0(LN2_0(Zc)).
      detail::linear<Scalar>(att, d, Z, P0.out_w.mat(), P0.out_b.data, Zc, d);
      Eigen::Map<Vector<Scalar>>(Zc, Z * d) += Eigen::Map<const Vector<Scalar>>(C + hs * d, Z * d);
      detail::ffn_residual(Zc, d, Z, P0, eps, xn, s.h1.data(), s.h3.data());

      // Hidden layers over the Z compressed rows at positions hs..; Kz, Vz of each layer's input
      // go to the cache for the window's cross-attention.
      for (Index j = 1; j + 1 < D; ++j) {
        const LayerWeights<Scalar>& Pj = m.layer(b, j);
        detail::layer_norm(Zc, d, xn, d, Z, d, Pj.norm1_w, Pj.norm1_b, eps);
        detail::linear<Scalar>(xn, d, Z, Pj.qkv_w.mat(), Pj.qkv_b.data, qkv, 3 * d);
        detail::rope(qkv, 3 * d, Z, 2 * d, dh, hs, theta);
        store_z(cache, b, j, qkv + d, qkv + 2 * d, 3 * d, Z, d);
        detail::attend_rows(qkv, 3 * d, Z, qkv + d, qkv + 2 * d, 3 * d, Z, heads, dh, Index{-1},
                            att, d, false, s.scores.data());
        detail::linear<Scalar>(att, d, Z, Pj.out_w.mat(), Pj.out_b.data, xn, d);
        Eigen::Map<Vector<Scalar>>(Zc, Z * d) += Eigen::Map<const Vector<Scalar>>(xn, Z * d);
        detail::ffn_residual(Zc, d, Z, Pj, eps, xn, s.h1.data(), s.h3.data());
      }

      // Restore layer: only k and v of its input are needed; q comes from the compress layer.
      const LayerWeights<Scalar>& PR = m.layer(b, D - 1);
      detail::layer_norm(Zc, d, xn, d, Z, d, PR.norm1_w, PR.norm1_b, eps);
      detail::linear<Scalar>(xn, d, Z, PR.qkv_w.row_block(d, 2 * d), PR.qkv_b.data + d, qkv, 2 * d);
      detail::rope(qkv, 2 * d, Z, d, dh, hs, theta);
      store_z(cache, b, D - 1, qkv, qkv + d, 2 * d, Z, d);
      if (last) continue;  // the last block's C' is never used (SPEC §4)

      // C' = C + out_R(Attn(Qc, Kz, Vz)); C' += FFN_R(LN2_R(C')), in place, chunk by chunk.
      const Scalar* Kz = cache.z_keys(b, D - 1);
      const Scalar* Vz = cache.z_values(b, D - 1);
      for (Index r0 = 0; r0 < N; r0 += detail::kResyncChunk) {
        const Index n = std::min(detail::kResyncChunk, N - r0);
        Scalar* Cr = C + r0 * d;
        detail::attend_rows(s.Qc.data() + r0 * d, d, n, Kz, Vz, d, Z, heads, dh, Index{-1}, att, d,
                            false, s.scores.data());
        detail::linear<Scalar>(att, d, n, PR.out_w.mat(), PR.out_b.data, xn, d);
        Eigen::Map<Vector<Scalar>>(Cr, n * d) += Eigen::Map<const Vector<Scalar>>(xn, n * d);
        detail::ffn_residual(Cr, d, n, PR, eps, xn, s.h1.data(), s.h3.data());
      }
    }
    if (context_kv != nullptr) context_kv->set_rows(N);
    cache.set_context(Lc, Z);
  }

 private:
  // Copies Z rows of rotated keys k and values v (row stride ld) into the cache's Kz, Vz.
  static void store_z(FixedKVCache<Scalar>& cache, Index b, Index j, const Scalar* k,
                      const Scalar* v, Index ld, Index Z, Index d) {
    Scalar* K = cache.z_keys(b, j);
    Scalar* V = cache.z_values(b, j);
    for (Index r = 0; r < Z; ++r) {
      std::memcpy(K + r * d, k + r * ld, sizeof(Scalar) * d);
      std::memcpy(V + r * d, v + r * ld, sizeof(Scalar) * d);
    }
  }
};

}  // namespace tconst
