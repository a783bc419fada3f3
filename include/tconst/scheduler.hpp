#pragma once
// Scheduler<Scalar>: the TConstFormer (and TLinFormer) session.
//
// It keeps the token log, decides for every token between a cache-hit step and a resync (SPEC §5:
// token p resyncs when p mod W == 0 and p > 0), and owns the one FixedKVCache that the context and
// generation paths share. Everything a cache-hit step touches is allocated when the session is
// made (the token log is reserved a window ahead at every resync), so hit steps allocate nothing.
//
// The state is a pure function of the token log. A call that fails part-way (an allocation failure
// inside a resync) restores the log and marks the cache stale; the next call rebuilds it from the
// log, so no failure leaves a session that disagrees with the tokens it reports.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "tconst/context_path.hpp"
#include "tconst/generation_path.hpp"
#include "tconst/kv_cache.hpp"
#include "tconst/session.hpp"
#include "tconst/snapshot.hpp"

namespace tconst {

template <typename Scalar>
class Scheduler final : public Session<Scalar> {
 public:
  using Index = Eigen::Index;
  using typename Session<Scalar>::Logits;
  using typename Session<Scalar>::RowCallback;
  using Session<Scalar>::prefill;

  explicit Scheduler(std::shared_ptr<const Model<Scalar>> model, SessionOptions options = {})
      : model_(checked(std::move(model))),
        options_(options),
        cache_(model_->config()),
        logits_(model_->config().vocab_size) {
    const ModelConfig& c = model_->config();
    if (c.arch == Architecture::kTLinFormer) {
      context_kv_ = std::make_unique<GrowingKV<Scalar>>(c.n_block, c.n_embd);
    }
    ws_.reserve(c.generate_window, std::max(c.generate_window, c.history_window), c.n_embd,
                c.ffn_hidden, c.n_head);
    log_.reserve(static_cast<size_t>(c.generate_window));
  }

  const Logits& feed(int32_t token) override {
    ensure_fresh();
    const ModelConfig& c = model_->config();
    detail::check_ids(c, options_, position(), &token, 1);
    const int64_t p = position();
    const bool resync_now = p > 0 && p % c.generate_window == 0;
    if (resync_now) reserve_log(p + c.generate_window);
    log_.push_back(token);
    try {
      if (resync_now) resync(p);
      GenerationPath<Scalar>::run(*model_, cache_, context_kv_.get(), &log_[p], 1, ws_);
    } catch (...) {
      log_.pop_back();
      stale_ = true;
      throw;
    }
    detail::head_logits(*model_, ws_.xn.data(), logits_.data());
    return logits_;
  }

  const Logits& prefill(const int32_t* ids, size_t n) override {
    consume(ids, n, nullptr);
    return logits();
  }

  void score(const int32_t* ids, size_t n, const RowCallback& on_row) override {
    consume(ids, n, on_row ? &on_row : nullptr);
  }

  const Logits& logits() const override { return position() > 0 ? logits_ : empty_; }
  int64_t position() const override { return static_cast<int64_t>(log_.size()); }
  const std::vector<int32_t>& tokens() const override { return log_; }
  size_t cache_bytes() const override {
    return cache_.bytes() + (context_kv_ ? context_kv_->bytes() : 0);
  }
  int64_t resync_count() const override { return resyncs_; }
  void reset() override {
    log_.clear();
    cache_.clear();
    if (context_kv_) context_kv_->set_rows(0);
    resyncs_ = 0;
    stale_ = false;
  }
  std::unique_ptr<Session<Scalar>> copy() const override {
    return std::unique_ptr<Session<Scalar>>(new Scheduler(*this, 0));
  }
  const Model<Scalar>& model() const override { return *model_; }
  const SessionOptions& options() const override { return options_; }

  void write_state(std::string& out) const override {
    const_cast<Scheduler*>(this)->ensure_fresh();
    const ModelConfig& c = model_->config();
    detail::ByteWriter w(out);
    w.put<uint64_t>(log_.size());
    w.put_array(log_.data(), log_.size());
    w.put<int64_t>(resyncs_);
    w.put<int64_t>(cache_.context_length());
    w.put<int64_t>(cache_.z_rows());
    w.put<int64_t>(cache_.window_rows());
    w.put<uint64_t>(static_cast<uint64_t>(c.fixed_cache_scalars()));
    w.put_array(cache_.data(), static_cast<size_t>(c.fixed_cache_scalars()));
    const Index ctx_rows = context_kv_ ? context_kv_->rows() : 0;
    w.put<uint64_t>(static_cast<uint64_t>(ctx_rows));
    for (Index b = 0; ctx_rows > 0 && b < c.n_block; ++b) {
      w.put_array(context_kv_->keys(b), static_cast<size_t>(ctx_rows * c.n_embd));
      w.put_array(context_kv_->values(b), static_cast<size_t>(ctx_rows * c.n_embd));
    }
    const uint64_t nl = position() > 0 ? static_cast<uint64_t>(logits_.size()) : 0;
    w.put<uint64_t>(nl);
    w.put_array(logits_.data(), static_cast<size_t>(nl));
  }

  void read_state(const uint8_t* data, size_t size) override {
    const ModelConfig& c = model_->config();
    const Index d = c.n_embd, W = c.generate_window;
    detail::ByteReader r(data, size);
    std::vector<int32_t> log = detail::read_token_log(r, c, options_);
    const uint64_t n = log.size();
    const int64_t resyncs = r.get<int64_t>("state");
    const int64_t Lc = r.get<int64_t>("state");
    const int64_t z = r.get<int64_t>("state");
    const int64_t wrows = r.get<int64_t>("state");
    const int64_t expect_lc = n > 0 ? (static_cast<int64_t>(n) - 1) / W * W : 0;
    if (Lc != expect_lc || z != std::min<int64_t>(Lc, c.history_window) ||
        wrows != static_cast<int64_t>(n) - Lc || resyncs < 0) {
      throw Error("snapshot cache state disagrees with its token log");
    }
    if (r.get<uint64_t>("cache") != static_cast<uint64_t>(c.fixed_cache_scalars())) {
      throw Error("snapshot cache size disagrees with the model");
    }
    const uint8_t* cache = r.span<Scalar>(static_cast<uint64_t>(c.fixed_cache_scalars()), "cache");
    const uint64_t ctx_rows = r.get<uint64_t>("context cache");
    if (ctx_rows != (context_kv_ ? static_cast<uint64_t>(Lc) : 0)) {
      throw Error("snapshot context cache disagrees with its token log");
    }
    std::vector<const uint8_t*> ctx;
    for (Index b = 0; ctx_rows > 0 && b < c.n_block; ++b) {
      ctx.push_back(r.span<Scalar>(ctx_rows * d, "context cache"));
      ctx.push_back(r.span<Scalar>(ctx_rows * d, "context cache"));
    }
    uint64_t nl = 0;
    const uint8_t* logits = detail::read_logits_tail<Scalar>(r, c, n, &nl);

    // Everything checked; allocate what may grow, then commit (nothing below throws).
    reserve_log(expect_lc + W);
    log.reserve(log_.capacity());
    if (context_kv_) context_kv_->reserve(static_cast<Index>(ctx_rows));
    // The window pass attends to every restored context row (TLinFormer).
    ws_.reserve(W, std::max({W, c.history_window, static_cast<Index>(ctx_rows)}), d, c.ffn_hidden,
                c.n_head);
    log_.swap(log);
    std::memcpy(cache_.data(), cache, cache_.bytes());
    cache_.set_context(Lc, static_cast<Index>(z));
    cache_.set_window_rows(static_cast<Index>(wrows));
    for (Index b = 0; ctx_rows > 0 && b < c.n_block; ++b) {
      std::memcpy(context_kv_->keys(b), ctx[2 * b], ctx_rows * d * sizeof(Scalar));
      std::memcpy(context_kv_->values(b), ctx[2 * b + 1], ctx_rows * d * sizeof(Scalar));
    }
    if (context_kv_) context_kv_->set_rows(static_cast<Index>(ctx_rows));
    if (nl > 0) std::memcpy(logits_.data(), logits, nl * sizeof(Scalar));
    resyncs_ = resyncs;
    stale_ = false;
  }

  /// Advances several sessions of one model by one token each, reading the weights once for all
  /// of them: equivalent to sessions[i]->feed(tokens[i]) for every i (logits identical up to
  /// rounding). Sessions due a resync run it first, each on its own. All ids are checked before
  /// any session changes. `scratch` is reused across calls (it grows to the largest batch).
  static void feed_streams(const std::vector<Scheduler*>& sessions,
                           const std::vector<int32_t>& tokens,
                           detail::WindowScratch<Scalar>& scratch) {
    if (sessions.size() != tokens.size()) {
      throw Error("feed_streams: " + std::to_string(sessions.size()) + " sessions but " +
                  std::to_string(tokens.size()) + " tokens");
    }
    if (sessions.empty()) return;
    const Model<Scalar>& m = *sessions[0]->model_;
    const ModelConfig& c = m.config();
    for (size_t i = 0; i < sessions.size(); ++i) {
      Scheduler& s = *sessions[i];
      if (&s.model() != &m) throw Error("feed_streams: the sessions use different models");
      for (size_t k = 0; k < i; ++k) {
        if (sessions[k] == sessions[i]) throw Error("feed_streams: a session appears twice");
      }
      s.ensure_fresh();
      detail::check_ids(c, s.options_, s.position(), &tokens[i], 1);
    }
    std::vector<FixedKVCache<Scalar>*> caches;
    std::vector<const GrowingKV<Scalar>*> contexts;
    Index keys = std::max(c.generate_window, c.history_window);
    const Index S = static_cast<Index>(sessions.size());
    const Index V = c.vocab_size;
    try {
      for (Scheduler* s : sessions) {
        const int64_t p = s->position();
        if (p > 0 && p % c.generate_window == 0) {
          s->reserve_log(p + c.generate_window);
          s->resync(p);  // context t[0..p): the log before this token
        }
        caches.push_back(&s->cache_);
        contexts.push_back(s->context_kv_.get());
        if (s->context_kv_) keys = std::max(keys, s->context_kv_->rows());
      }
      scratch.reserve(S, keys, c.n_embd, c.ffn_hidden, c.n_head);
      if (static_cast<Index>(scratch.batch_logits.size()) < S * V) {
        scratch.batch_logits.resize(static_cast<size_t>(S * V));
      }
      GenerationPath<Scalar>::run_streams(m, caches.data(), contexts.data(), tokens.data(), S,
                                          scratch);
    } catch (...) {
      // Whatever was half done is rebuilt from each session's (unchanged) token log.
      for (Scheduler* s : sessions) s->stale_ = true;
      throw;
    }
    // logits[S, V] = LN_f(x) E^T: the head, too, is read once for all streams.
    detail::linear<Scalar>(scratch.xn.data(), c.n_embd, S, m.lm_head().mat(), nullptr,
                           scratch.batch_logits.data(), V);
    for (Index r = 0; r < S; ++r) {
      Scheduler& s = *sessions[static_cast<size_t>(r)];
      s.log_.push_back(tokens[static_cast<size_t>(r)]);
      std::memcpy(s.logits_.data(), scratch.batch_logits.data() + r * V, sizeof(Scalar) * V);
    }
  }

  /// The fixed cache (read-only: its size and storage never change).
  const FixedKVCache<Scalar>& cache() const { return cache_; }
  /// TLinFormer's growing context keys and values; nullptr for TConstFormer.
  const GrowingKV<Scalar>* context_cache() const { return context_kv_.get(); }
  /// Bytes held now by the resync's buffers (0 between resyncs unless keep_resync_buffers).
  size_t resync_buffer_bytes() const { return cs_.bytes(); }

 private:
  static std::shared_ptr<const Model<Scalar>> checked(std::shared_ptr<const Model<Scalar>> m) {
    if (!m) throw Error("Scheduler needs a model");
    if (m->config().is_baseline()) {
      throw Error(
          "a transformer model has no fixed cache; use make_session() or TransformerSession");
    }
    return m;
  }

  // Deep copy for copy().
  Scheduler(const Scheduler& o, int)
      : model_(o.model_),
        options_(o.options_),
        cache_(o.cache_.copy()),
        context_kv_(o.context_kv_ ? std::make_unique<GrowingKV<Scalar>>(*o.context_kv_) : nullptr),
        ws_(o.ws_),
        log_(o.log_),
        logits_(o.logits_),
        resyncs_(o.resyncs_),
        stale_(o.stale_) {
    log_.reserve(o.log_.capacity());
  }

  void reserve_log(int64_t n) {
    if (static_cast<int64_t>(log_.capacity()) < n) {
      log_.reserve(std::max<size_t>(static_cast<size_t>(n), log_.capacity() * 3 / 2));
    }
  }

  void resync(int64_t Lc) {
    const ModelConfig& c = model_->config();
    const Index keys = std::max(
        {c.generate_window, c.history_window, context_kv_ ? static_cast<Index>(Lc) : Index{0}});
    ws_.reserve(c.generate_window, keys, c.n_embd, c.ffn_hidden, c.n_head);
    ContextPath<Scalar>::resync(*model_, log_.data(), Lc, cache_, context_kv_.get(), cs_);
    ++resyncs_;
    if (!options_.keep_resync_buffers) cs_.release_stream();
  }

  // Consumes ids[0..n): the window segments from `first` on, each after the resync that starts it.
  // With on_row every token's logits are produced; without it only the last window is run.
  void consume(const int32_t* ids, size_t n, const RowCallback* on_row) {
    ensure_fresh();
    const ModelConfig& c = model_->config();
    detail::check_ids(c, options_, position(), ids, n);
    if (n == 0) return;
    const int64_t W = c.generate_window;
    const int64_t start = position(), end = start + static_cast<int64_t>(n);
    reserve_log((end - 1) / W * W + W);
    log_.insert(log_.end(), ids, ids + n);
    try {
      const int64_t first = on_row ? start : std::max(start, (end - 1) / W * W);
      for (int64_t a = first; a < end;) {
        const int64_t ws = a / W * W;  // context length for token a
        const int64_t e = std::min(end, ws + W);
        if (cache_.context_length() != ws) {
          if (ws > 0) {
            resync(ws);
          } else {
            cache_.clear();
          }
        }
        const Index rows = static_cast<Index>(e - a);
        GenerationPath<Scalar>::run(*model_, cache_, context_kv_.get(), &log_[a], rows, ws_);
        const Index d = c.n_embd;
        if (on_row) {
          for (Index r = 0; r < rows; ++r) {
            detail::head_logits(*model_, ws_.xn.data() + r * d, logits_.data());
            (*on_row)(static_cast<size_t>(a + r - start), logits_);
          }
        } else if (e == end) {
          detail::head_logits(*model_, ws_.xn.data() + (rows - 1) * d, logits_.data());
        }
        a = e;
      }
    } catch (...) {
      log_.resize(static_cast<size_t>(start));
      stale_ = true;
      throw;
    }
  }

  // Rebuilds cache and logits from the token log after a failed call.
  void ensure_fresh() {
    if (!stale_) return;
    cache_.clear();
    if (context_kv_) context_kv_->set_rows(0);
    const int64_t n = position();
    if (n > 0) {
      const int64_t W = model_->config().generate_window;
      const int64_t ws = (n - 1) / W * W;
      if (ws > 0) resync(ws);
      GenerationPath<Scalar>::run(*model_, cache_, context_kv_.get(), &log_[ws],
                                  static_cast<Index>(n - ws), ws_);
      detail::head_logits(*model_, ws_.xn.data() + (n - ws - 1) * model_->config().n_embd,
                          logits_.data());
    }
    stale_ = false;
  }

  std::shared_ptr<const Model<Scalar>> model_;
  SessionOptions options_;
  FixedKVCache<Scalar> cache_;
  std::unique_ptr<GrowingKV<Scalar>> context_kv_;  // TLinFormer only: [Lc, d] Kc, Vc per block
  detail::WindowScratch<Scalar> ws_;               // [W, ...] window pass buffers
  detail::ContextScratch<Scalar> cs_;              // resync buffers, grown to the longest history
  std::vector<int32_t> log_;                       // every token consumed, position order
  Logits logits_;                                  // [V] after the last token
  Logits empty_;
  int64_t resyncs_ = 0;
  bool stale_ = false;
};

}  // namespace tconst
