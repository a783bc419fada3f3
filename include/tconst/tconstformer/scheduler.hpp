#pragma once
// Scheduler<Scalar>: runs the cache-hit steps and triggers the O(N) resync every W tokens (SPEC §5:
// token p resyncs when p mod W == 0 and p > 0), over the FixedKVCache that the context path and
// the generation path share. It rebuilds the cache from the token log after a failed call, and does
// nothing else: the session that owns it keeps the log, the logits and the snapshot.
//
// A token's state is a pure function of the log before it, so the Scheduler is handed the log on
// every call and keeps none of it. It owns the scratch of both paths: the window pass's buffers,
// allocated at construction (hit steps allocate nothing), and the resync's, which grow with the
// history and are freed after each resync unless SessionOptions::keep_resync_buffers.
// SessionOptions::bounded_resync chooses whether a resync recomputes or keeps context rows.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/growing_kv.hpp"
#include "tconst/session_base.hpp"
#include "tconst/tconstformer/context_path.hpp"
#include "tconst/tconstformer/generation_path.hpp"
#include "tconst/tconstformer/kv_cache.hpp"

namespace tconst {
inline namespace TCONST_ABI {

template <typename Scalar>
class Scheduler;

namespace detail {

/// The streams of one joint step (Scheduler::joint_step) and the buffers it reuses.
template <typename Scalar>
struct JointStep {
  std::vector<Scheduler<Scalar>*> schedulers;
  std::vector<const int32_t*> logs;  // each stream's token log
  std::vector<int64_t> positions;    // tokens each stream has consumed before this step
  std::vector<int32_t> tokens;       // this step's token of each stream
  std::vector<FixedKVCache<Scalar>*> caches;
  std::vector<const GrowingKV<Scalar>*> contexts;
  WindowScratch<Scalar> scratch;  // [S, ...] rows of the joint pass

  void clear() {
    schedulers.clear();
    logs.clear();
    positions.clear();
    tokens.clear();
  }
};

}  // namespace detail

template <typename Scalar>
class Scheduler {
 public:
  using Index = Eigen::Index;

  /// Runs over `cache` and, for TLinFormer, `context` (nullptr for TConstFormer); both outlive it.
  Scheduler(const Model<Scalar>& model, FixedKVCache<Scalar>& cache,
            detail::GrowingKV<Scalar>* context, const SessionOptions& options)
      : model_(&model), cache_(&cache), context_(context), options_(options) {
    const ModelConfig& c = model.config();
    ws_.reserve(c.generate_window, std::max(c.generate_window, c.history_window), c.n_embd,
                c.ffn_hidden, c.n_head);
    detail::reserve_compute(model, 1, ws_.gemm);
  }
  /// A copy of `o`'s counters and scratch running over another cache (a copied session's).
  Scheduler(const Scheduler& o, FixedKVCache<Scalar>& cache, detail::GrowingKV<Scalar>* context)
      : model_(o.model_),
        cache_(&cache),
        context_(context),
        options_(o.options_),
        ws_(o.ws_),
        resyncs_(o.resyncs_),
        stale_(o.stale_) {}
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  /// W: the window, and the resync period.
  int64_t period() const { return model_->config().generate_window; }
  /// Whether token p starts with a resync (SPEC §5).
  bool resync_due(int64_t p) const { return p > 0 && p % period() == 0; }
  /// The context length of token p: the multiple of W at or below p - 1 (0 for p = 0).
  int64_t context_of(int64_t p) const { return p > 0 ? (p - 1) / period() * period() : 0; }

  /// Token log[p] through the model, after a resync over log[0..p) when one is due. LN_f of its
  /// row is left in final_rows(). On an exception the cache is marked stale (rebuilt by the next
  /// ensure_fresh()) and the exception propagates.
  void step(const int32_t* log, int64_t p) {
    guarded([&] {
      if (resync_due(p)) resync(log, p);
      GenerationPath<Scalar>::run(*model_, *cache_, context_, log + p, 1, ws_);
    });
  }

  /// Tokens log[first..end) through the model, window segment by window segment, each after the
  /// resync that starts it; `on_pass(a, rows)` after each segment [a, a + rows), whose LN_f rows
  /// are then in final_rows(). With only_last, only the segment holding end - 1 is run (the state
  /// after a prompt needs no earlier window). Marks the cache stale on an exception.
  template <typename OnPass>
  void run(const int32_t* log, int64_t first, int64_t end, bool only_last, const OnPass& on_pass) {
    guarded([&] {
      const int64_t W = period();
      for (int64_t a = only_last ? std::max(first, context_of(end)) : first; a < end;) {
        const int64_t Lc = a / W * W;  // context length for token a
        const int64_t e = std::min(end, Lc + W);
        if (cache_->context_length() != Lc) {
          if (Lc > 0) {
            resync(log, Lc);
          } else {
            clear();
          }
        }
        const Index rows = static_cast<Index>(e - a);
        GenerationPath<Scalar>::run(*model_, *cache_, context_, log + a, rows, ws_);
        on_pass(a, rows);
        a = e;
      }
    });
  }

  /// Whether a failed call left the cache out of step with the log.
  bool stale() const { return stale_; }
  /// Rebuilds the cache from the n tokens of the log when stale; returns whether it did (the
  /// last token's LN_f row is then the last row of final_rows()). Throws (still stale) on failure.
  template <typename OnPass>
  bool ensure_fresh(const int32_t* log, int64_t n, const OnPass& on_pass) {
    if (!stale_) return false;
    stale_ = false;
    clear();
    run(log, 0, n, true, on_pass);
    return true;
  }

  /// One step for each stream of `j` at once: stream r's token j.tokens[r] after its log
  /// j.logs[r][0..j.positions[r]). Resyncs that are due run first, each stream on its own; then
  /// the cache-hit steps run together, reading every weight once for all streams. LN_f rows in
  /// j.scratch.xn. On an exception every stream's cache is marked stale.
  static void joint_step(detail::JointStep<Scalar>& j) {
    const Index S = static_cast<Index>(j.schedulers.size());
    try {
      j.caches.clear();
      j.contexts.clear();
      const ModelConfig& c = j.schedulers[0]->model_->config();
      Index keys = std::max(c.generate_window, c.history_window);
      for (Index r = 0; r < S; ++r) {
        Scheduler& s = *j.schedulers[r];
        if (s.resync_due(j.positions[r])) s.resync(j.logs[r], j.positions[r]);
        j.caches.push_back(s.cache_);
        j.contexts.push_back(s.context_);
        if (s.context_) keys = std::max(keys, s.context_->rows());
      }
      j.scratch.reserve(S, keys, c.n_embd, c.ffn_hidden, c.n_head);
      detail::reserve_compute(*j.schedulers[0]->model_, S, j.scratch.gemm);
      GenerationPath<Scalar>::run_streams(*j.schedulers[0]->model_, j.caches.data(),
                                          j.contexts.data(), j.tokens.data(), S, j.scratch);
    } catch (...) {
      for (Scheduler* s : j.schedulers) s->stale_ = true;
      throw;
    }
  }

  /// LN_f of the rows of the last pass, [rows, d].
  const Scalar* final_rows() const { return ws_.xn.data(); }
  /// Forgets the context and the window (the cache keeps its storage).
  void clear() noexcept {
    cache_->clear();
    if (context_) context_->set_rows(0);
  }
  /// Resyncs run so far.
  int64_t resync_count() const { return resyncs_; }
  /// Restores the counters of a snapshot (the cache is restored by its owner).
  void restore(int64_t resyncs) noexcept {
    resyncs_ = resyncs;
    stale_ = false;
  }
  void reset() noexcept {
    clear();
    resyncs_ = 0;
    stale_ = false;
  }
  /// Makes room in the window pass's buffers for attending to `keys` keys (a restored TLinFormer
  /// context).
  void reserve_keys(Index keys) {
    const ModelConfig& c = model_->config();
    ws_.reserve(c.generate_window, std::max({c.generate_window, c.history_window, keys}), c.n_embd,
                c.ffn_hidden, c.n_head);
  }
  /// Bytes held now by the resync's buffers (0 between resyncs unless keep_resync_buffers).
  size_t resync_buffer_bytes() const { return cs_.bytes(); }
  /// Bytes of the window pass's buffers (allocated at construction; a prefill may grow them).
  size_t window_buffer_bytes() const { return ws_.bytes(); }

 private:
  template <typename F>
  void guarded(const F& f) {
    try {
      f();
    } catch (...) {
      stale_ = true;
      throw;
    }
  }

  // The resync of SPEC §5 over the context log[0..Lc).
  void resync(const int32_t* log, int64_t Lc) {
    reserve_keys(context_ ? static_cast<Index>(Lc) : Index{0});
    ContextPath<Scalar>::resync(*model_, log, Lc, *cache_, context_, cs_, !options_.bounded_resync);
    ++resyncs_;
    if (!options_.keep_resync_buffers) cs_.release_stream();
  }

  const Model<Scalar>* model_;
  FixedKVCache<Scalar>* cache_;         // shared by both paths; owned by the session
  detail::GrowingKV<Scalar>* context_;  // TLinFormer only: [Lc, d] Kc, Vc per block
  SessionOptions options_;
  detail::WindowScratch<Scalar> ws_;   // [W, ...] window pass buffers
  detail::ContextScratch<Scalar> cs_;  // resync buffers, grown to the longest history
  int64_t resyncs_ = 0;
  bool stale_ = false;
};

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class Scheduler<float>;
extern template class Scheduler<double>;
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
