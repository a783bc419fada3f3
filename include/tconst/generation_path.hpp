#pragma once
// GenerationPath: window tokens through every layer (SPEC §4 window stream, SPEC §5 cache-hit
// step).
//
// A pass over n new window rows (n = 1 for a cache-hit step, up to W for a batched prefill)
// projects each row once per layer, appends its rotated key and its value to that layer's window
// cache, attends causally to the window cache and, where SPEC §4 says so, to the layer's frozen
// compressed Kz, Vz (and, for TLinFormer's compress layer, to the whole context's Kc, Vc). The
// path holds no state: the cache and the scratch are passed in.

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tconst/kv_cache.hpp"
#include "tconst/ops.hpp"
#include "tconst/weights.hpp"

namespace tconst {
namespace detail {

/// Scores per attention call are bounded by processing query rows in blocks of at most this many
/// scores (or one row, when a row alone has more keys).
constexpr Index kScoreBudget = Index{1} << 16;

/// Threads an OpenMP parallel region would use now (1 without OpenMP).
inline Index max_threads() noexcept {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Working buffers of a window pass, sized once for `rows` rows and `keys` attended keys.
template <typename S>
struct WindowScratch {
  Index rows = 0, keys = 0;
  // Rows of d floats start on cache lines when d is a multiple of 16 (LineVector).
  detail::LineVector<S> x;       // [rows, d] residual stream
  detail::LineVector<S> xn;      // [rows, d] normalised stream; after a pass, LN_f of every row
  detail::LineVector<S> qkv;     // [rows, 3d] q | k | v, q and k rotated
  detail::LineVector<S> att;     // [rows, d] attention output
  detail::LineVector<S> h1, h3;  // [rows, f] FFN hidden
  detail::LineVector<S> scores;  // attention scores of one query block
  detail::LineVector<S> batch_logits;  // [streams, V], only for several streams stepped together

  void reserve(Index n_rows, Index n_keys, Index d, Index f, Index heads) {
    if (n_rows > rows) {
      rows = n_rows;
      x.resize(static_cast<size_t>(rows * d));
      xn.resize(static_cast<size_t>(rows * d));
      qkv.resize(static_cast<size_t>(rows * 3 * d));
      att.resize(static_cast<size_t>(rows * d));
      h1.resize(static_cast<size_t>(rows * f));
      h3.resize(static_cast<size_t>(rows * f));
    }
    keys = std::max(keys, n_keys);
    // One query row needs heads * keys (all heads at once); a block of rows, one head at a time;
    // several streams stepped together, heads * keys for each thread attending at once.
    const Index lanes = std::min<Index>(rows, max_threads());
    const Index need = std::max(lanes * heads * keys, std::min(rows * keys, kScoreBudget));
    if (static_cast<Index>(scores.size()) < need) scores.resize(static_cast<size_t>(need));
  }
};

/// Where a layer's new rows go: rows [rows_before, rows_before + n) of K and V ([*, d], stride ld).
template <typename S>
struct SelfKV {
  S* K;
  S* V;
  Index ld;
  Index rows_before;
};

/// Frozen keys and values a layer also attends to, with its own softmax.
template <typename S>
struct CrossKV {
  const S* K;
  const S* V;
  Index ld;
  Index rows;
};

/// Attention of nq query rows in blocks that keep the score buffer within its budget.
template <typename S>
void attend_blocked(const S* Q, Index ld_q, Index nq, const S* K, const S* V, Index ld_kv, Index nk,
                    Index heads, Index dh, Index causal_base, S* out, Index ld_out, bool accumulate,
                    S* scores) {
  const Index block =
      std::max<Index>(1, std::min<Index>(nq, kScoreBudget / std::max<Index>(nk, 1)));
  for (Index r0 = 0; r0 < nq; r0 += block) {
    const Index n = std::min(block, nq - r0);
    attend_rows(Q + r0 * ld_q, ld_q, n, K, V, ld_kv, nk, heads, dh,
                causal_base >= 0 ? causal_base + r0 : -1, out + r0 * ld_out, ld_out, accumulate,
                scores);
  }
}

/// One inner layer over n window rows x[n, d] at positions pos0.. (SPEC §4 window stream):
/// x += out(Attn_causal(self) + sum Attn(cross)); x += FFN(LN2(x)).
template <typename S>
void layer_forward(const Model<S>& m, const LayerWeights<S>& L, S* x, Index n, int64_t pos0,
                   const SelfKV<S>& self, const CrossKV<S>* cross, int n_cross,
                   WindowScratch<S>& s) {
  const ModelConfig& c = m.config();
  const Index d = c.n_embd, heads = c.n_head, dh = c.head_dim();
  S* xn = s.xn.data();
  S* qkv = s.qkv.data();
  S* att = s.att.data();
  layer_norm(x, d, xn, d, n, d, L.norm1_w, L.norm1_b, c.norm_eps);
  linear<S>(xn, d, n, L.qkv_w.mat(), L.qkv_b.data, qkv, 3 * d);
  rope(qkv, 3 * d, n, 2 * d, dh, pos0, m.rope_theta());
  for (Index r = 0; r < n; ++r) {
    std::memcpy(self.K + (self.rows_before + r) * self.ld, qkv + r * 3 * d + d, sizeof(S) * d);
    std::memcpy(self.V + (self.rows_before + r) * self.ld, qkv + r * 3 * d + 2 * d, sizeof(S) * d);
  }
  attend_blocked(qkv, 3 * d, n, self.K, self.V, self.ld, self.rows_before + n, heads, dh,
                 self.rows_before, att, d, false, s.scores.data());
  for (int i = 0; i < n_cross; ++i) {
    if (cross[i].rows == 0) continue;
    attend_blocked(qkv, 3 * d, n, cross[i].K, cross[i].V, cross[i].ld, cross[i].rows, heads, dh,
                   Index{-1}, att, d, true, s.scores.data());
  }
  linear<S>(att, d, n, L.out_w.mat(), L.out_b.data, xn, d);
  RowsMap<S>(x, n, d, Eigen::OuterStride<>(d)) +=
      ConstRowsMap<S>(xn, n, d, Eigen::OuterStride<>(d));
  ffn_residual(x, d, n, L, c.norm_eps, xn, s.h1.data(), s.h3.data());
}

/// x[n, d] = embedding rows of the tokens (already validated to lie in [0, V)).
template <typename S>
void embed(const Model<S>& m, const int32_t* tokens, Index n, S* x) noexcept {
  const Index d = m.config().n_embd;
  for (Index r = 0; r < n; ++r) {
    std::memcpy(x + r * d, m.embedding().data + static_cast<Index>(tokens[r]) * d, sizeof(S) * d);
  }
}

/// s.xn[n, d] = LN_f(x) after the last layer.
template <typename S>
void final_norm(const Model<S>& m, Index n, WindowScratch<S>& s) noexcept {
  const Index d = m.config().n_embd;
  layer_norm(s.x.data(), d, s.xn.data(), d, n, d, m.norm_w(), m.norm_b(), m.config().norm_eps);
}

/// logits[V] = head * h, h one row of final-normalised hidden state.
template <typename S>
void head_logits(const Model<S>& m, const S* h, S* logits) noexcept {
  gemv<S>(m.lm_head().mat(), h, nullptr, logits);
}

}  // namespace detail

/// The generation path of TConstFormer and TLinFormer. Stateless over the model's weights.
template <typename Scalar>
class GenerationPath {
 public:
  using Index = Eigen::Index;

  /// Runs tokens[0..n) as window rows cache.window_rows() .. + n - 1 (positions Lc + row) through
  /// every block, appending their keys and values to the window caches. `context_kv` holds
  /// TLinFormer's per-block compress-layer context keys and values (nullptr for TConstFormer).
  /// Leaves LN_f of every row in scratch.xn. Requires window_rows() + n <= W and scratch reserved
  /// for n rows. With n = 1 nothing is allocated.
  static void run(const Model<Scalar>& m, FixedKVCache<Scalar>& cache,
                  const GrowingKV<Scalar>* context_kv, const int32_t* tokens, Index n,
                  detail::WindowScratch<Scalar>& s) {
    const ModelConfig& c = m.config();
    const Index d = c.n_embd, D = c.inner_depth;
    const Index i0 = cache.window_rows();  // first new window row
    const int64_t pos0 = cache.context_length() + i0;
    assert(i0 + n <= cache.window_capacity() && n <= s.rows);
    assert(c.n_head * std::max({i0 + n, cache.z_rows(), context_kv ? context_kv->rows() : 0}) <=
           static_cast<Index>(s.scores.size()));
    Scalar* x = s.x.data();
    detail::embed(m, tokens, n, x);
    for (Index b = 0; b < c.n_block; ++b) {
      for (Index j = 0; j < D; ++j) {
        const detail::SelfKV<Scalar> self{cache.window_keys(b, j), cache.window_values(b, j), d,
                                          i0};
        detail::CrossKV<Scalar> cross[1];
        int n_cross = 0;
        if (j >= 1 && cache.z_rows() > 0) {
          // Hidden and restore layers: the compressed Kz, Vz of this layer's input (SPEC §4).
          cross[n_cross++] = {cache.z_keys(b, j), cache.z_values(b, j), d, cache.z_rows()};
        } else if (j == 0 && context_kv != nullptr && context_kv->rows() > 0) {
          // TLinFormer's compress layer: the whole context's Kc, Vc.
          cross[n_cross++] = {context_kv->keys(b), context_kv->values(b), d, context_kv->rows()};
        }
        detail::layer_forward(m, m.layer(b, j), x, n, pos0, self, cross, n_cross, s);
      }
    }
    cache.set_window_rows(i0 + n);
    detail::final_norm(m, n, s);
  }

  /// One cache-hit step for each of S independent streams at once: row r of `tokens` goes to
  /// caches[r] (context_kv[r] for TLinFormer, else nullptr). Every weight matrix is read once for
  /// all S rows (matrix-matrix products); each row attends only to its own stream's caches.
  /// Requires caches[r]->window_rows() < W and scratch reserved for S rows. Leaves LN_f of every
  /// row in scratch.xn.
  static void run_streams(const Model<Scalar>& m, FixedKVCache<Scalar>* const* caches,
                          const GrowingKV<Scalar>* const* context_kv, const int32_t* tokens,
                          Index S, detail::WindowScratch<Scalar>& s) {
    const ModelConfig& c = m.config();
    const Index d = c.n_embd, D = c.inner_depth, heads = c.n_head, dh = c.head_dim();
    Scalar* x = s.x.data();
    Scalar* xn = s.xn.data();
    Scalar* qkv = s.qkv.data();
    Scalar* att = s.att.data();
    assert(S <= s.rows);
    // Scores of one stream's attention: heads * its most keys. As many threads attend at once as
    // the score buffer has room for (reserve() made room for the thread count of that time).
    Index per_lane = 0;
    for (Index r = 0; r < S; ++r) {
      assert(caches[r]->window_rows() < caches[r]->window_capacity());
      per_lane =
          std::max(per_lane, heads * std::max({caches[r]->window_rows() + 1, caches[r]->z_rows(),
                                               context_kv[r] ? context_kv[r]->rows() : 0}));
    }
    assert(per_lane <= static_cast<Index>(s.scores.size()));
#ifdef _OPENMP
    const Index lanes = std::max<Index>(
        1, std::min({S, detail::max_threads(), static_cast<Index>(s.scores.size()) / per_lane}));
#endif
    detail::embed(m, tokens, S, x);
    for (Index b = 0; b < c.n_block; ++b) {
      for (Index j = 0; j < D; ++j) {
        const LayerWeights<Scalar>& L = m.layer(b, j);
        detail::layer_norm(x, d, xn, d, S, d, L.norm1_w, L.norm1_b, c.norm_eps);
        detail::linear<Scalar>(xn, d, S, L.qkv_w.mat(), L.qkv_b.data, qkv, 3 * d);
        // Each stream attends to its own caches: the streams are split over threads.
#ifdef _OPENMP
#pragma omp parallel for num_threads(static_cast <int>(lanes)) schedule(static) if (lanes > 1)
#endif
        for (Index r = 0; r < S; ++r) {
#ifdef _OPENMP
          Scalar* scores = s.scores.data() + omp_get_thread_num() * per_lane;
#else
          Scalar* scores = s.scores.data();
#endif
          FixedKVCache<Scalar>& cache = *caches[r];
          const Index i = cache.window_rows();
          Scalar* row = qkv + r * 3 * d;
          detail::rope(row, 3 * d, 1, 2 * d, dh, cache.context_length() + i, m.rope_theta());
          Scalar* K = cache.window_keys(b, j);
          Scalar* V = cache.window_values(b, j);
          std::memcpy(K + i * d, row + d, sizeof(Scalar) * d);
          std::memcpy(V + i * d, row + 2 * d, sizeof(Scalar) * d);
          Scalar* out = att + r * d;
          detail::attend_one(row, K, V, d, i + 1, heads, dh, scores, out, false);
          if (j >= 1 && cache.z_rows() > 0) {
            detail::attend_one(row, cache.z_keys(b, j), cache.z_values(b, j), d, cache.z_rows(),
                               heads, dh, scores, out, true);
          } else if (j == 0 && context_kv[r] != nullptr && context_kv[r]->rows() > 0) {
            detail::attend_one(row, context_kv[r]->keys(b), context_kv[r]->values(b), d,
                               context_kv[r]->rows(), heads, dh, scores, out, true);
          }
        }
        detail::linear<Scalar>(att, d, S, L.out_w.mat(), L.out_b.data, xn, d);
        detail::RowsMap<Scalar>(x, S, d, Eigen::OuterStride<>(d)) +=
            detail::ConstRowsMap<Scalar>(xn, S, d, Eigen::OuterStride<>(d));
        detail::ffn_residual(x, d, S, L, c.norm_eps, xn, s.h1.data(), s.h3.data());
      }
    }
    for (Index r = 0; r < S; ++r) caches[r]->set_window_rows(caches[r]->window_rows() + 1);
    detail::final_norm(m, S, s);
  }
};

}  // namespace tconst
