#pragma once
// GenerationPath: window tokens through every layer (SPEC §4 window stream, SPEC §5 cache-hit
// step).
//
// A pass over n new window rows (n = 1 for a cache-hit step, up to W for a batched prefill)
// projects each row once per layer, appends its rotated key and its value to that layer's window
// cache, attends causally to the window cache and, where SPEC §4 says so (cross_keys), to the
// layer's frozen compressed Kz, Vz (and, for TLinFormer's compress layer, to the whole context's
// Kc, Vc). The same layer body serves one stream of n rows and S streams of one row each; only the
// attention differs. The path holds no state: the cache and the scratch are passed in.

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <cstring>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/growing_kv.hpp"
#include "tconst/detail/layers.hpp"
#include "tconst/tconstformer/kv_cache.hpp"

namespace tconst {
inline namespace TCONST_ABI {

/// The generation path of TConstFormer and TLinFormer. Stateless over the model's weights.
template <typename Scalar>
class GenerationPath {
 public:
  using Index = Eigen::Index;

  /// What layer j of block b attends to beyond its own window (SPEC §4), with a softmax of its
  /// own: hidden and restore layers (j >= 1) the compressed Kz, Vz of their input; TLinFormer's
  /// compress layer (j = 0, `context` given) the whole context's Kc, Vc; TConstFormer's compress
  /// layer nothing. No rows before the first resync.
  static detail::CrossKV<Scalar> cross_keys(const FixedKVCache<Scalar>& cache,
                                            const detail::GrowingKV<Scalar>* context, Index b,
                                            Index j) {
    const Index d = cache.width();
    if (j >= 1) return {cache.z_keys(b, j), cache.z_values(b, j), d, cache.z_rows()};
    if (context != nullptr) return {context->keys(b), context->values(b), d, context->rows()};
    return {};
  }

  /// Runs tokens[0..n) as window rows cache.window_rows() .. + n - 1 (positions Lc + row) through
  /// every block, appending their keys and values to the window caches. `context` holds
  /// TLinFormer's per-block compress-layer context keys and values (nullptr for TConstFormer).
  /// Leaves LN_f of every row in scratch.xn. Requires window_rows() + n <= W and scratch reserved
  /// for n rows. With n = 1 nothing is allocated.
  static void run(const Model<Scalar>& m, FixedKVCache<Scalar>& cache,
                  const detail::GrowingKV<Scalar>* context, const int32_t* tokens, Index n,
                  detail::WindowScratch<Scalar>& s) {
    const Index d = m.config().n_embd;
    const Index i0 = cache.window_rows();  // first new window row
    const int64_t pos0 = cache.context_length() + i0;
    assert(i0 + n <= cache.window_capacity() && n <= s.rows);
    assert(m.config().n_head *
               std::max({i0 + n, cache.z_rows(), context ? context->rows() : Index{0}}) <=
           static_cast<Index>(s.scores.size()));
    through_layers(m, tokens, n, s, [&](Index b, Index j, Scalar* qkv, Scalar* att) {
      const detail::SelfKV<Scalar> self{cache.window_keys(b, j), cache.window_values(b, j), d, i0};
      detail::attend_consecutive_rows(m, qkv, n, pos0, self, cross_keys(cache, context, b, j), att,
                                      s.scores.data());
    });
    cache.set_window_rows(i0 + n);
  }

  /// One cache-hit step for each of S independent streams at once: row r of `tokens` goes to
  /// caches[r] (contexts[r] for TLinFormer, else nullptr). Every weight matrix is read once for
  /// all S rows (matrix-matrix products); each row attends only to its own stream's caches, the
  /// streams split over threads. Requires caches[r]->window_rows() < W and scratch reserved for S
  /// rows. Leaves LN_f of every row in scratch.xn.
  static void run_streams(const Model<Scalar>& m, FixedKVCache<Scalar>* const* caches,
                          const detail::GrowingKV<Scalar>* const* contexts, const int32_t* tokens,
                          Index S, detail::WindowScratch<Scalar>& s) {
    const ModelConfig& c = m.config();
    const Index d = c.n_embd, heads = c.n_head;
    assert(S <= s.rows);
    // Scores of one stream's attention: heads * its most keys. As many threads attend at once as
    // the score buffer has room for (reserve() made room for the thread count of that time).
    Index per_worker = 0;
    for (Index r = 0; r < S; ++r) {
      assert(caches[r]->window_rows() < caches[r]->window_capacity());
      per_worker =
          std::max(per_worker, heads * std::max({caches[r]->window_rows() + 1, caches[r]->z_rows(),
                                                 contexts[r] ? contexts[r]->rows() : 0}));
    }
    assert(per_worker <= static_cast<Index>(s.scores.size()));
    const Index workers = std::max<Index>(
        1, std::min({S, detail::max_workers(), static_cast<Index>(s.scores.size()) / per_worker}));
    through_layers(m, tokens, S, s, [&](Index b, Index j, Scalar* qkv, Scalar* att) {
      detail::parallel_for(S, workers, [&](Index r, Index worker) {
        FixedKVCache<Scalar>& cache = *caches[r];
        const Index i = cache.window_rows();
        const detail::SelfKV<Scalar> self{cache.window_keys(b, j), cache.window_values(b, j), d, i};
        detail::attend_consecutive_rows(m, qkv + r * 3 * d, 1, cache.context_length() + i, self,
                                        cross_keys(cache, contexts[r], b, j), att + r * d,
                                        s.scores.data() + worker * per_worker);
      });
    });
    for (Index r = 0; r < S; ++r) caches[r]->set_window_rows(caches[r]->window_rows() + 1);
  }

 private:
  // Embeds n tokens, runs them through every block's layers with attend(b, j, qkv, att) as each
  // layer's attention, and leaves LN_f of every row in s.xn.
  template <typename Attend>
  static void through_layers(const Model<Scalar>& m, const int32_t* tokens, Index n,
                             detail::WindowScratch<Scalar>& s, const Attend& attend) {
    const ModelConfig& c = m.config();
    Scalar* x = s.x.data();
    detail::embed(m, tokens, n, x);
    for (Index b = 0; b < c.n_block; ++b) {
      for (Index j = 0; j < c.inner_depth; ++j) {
        detail::layer_body(m, m.layer(b, j), x, n, s,
                           [&](Scalar* qkv, Scalar* att) { attend(b, j, qkv, att); });
      }
    }
    detail::final_norm(m, n, s);
  }
};

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class GenerationPath<float>;
extern template class GenerationPath<double>;
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
