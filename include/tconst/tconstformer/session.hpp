#pragma once
// TConstSession<Scalar>: the session of a TConstFormer (or TLinFormer) model.
//
// It owns the one FixedKVCache that the context and generation paths share (and, for TLinFormer,
// the compress layers' context keys and values, which grow with the stream by that architecture's
// design), the Scheduler that runs them, and what every session keeps (SessionBase: token log,
// logits, snapshot framing). Everything a cache-hit step touches is allocated when the session is
// made and the token log is reserved a window ahead at every resync, so hit steps allocate nothing.
//
// The state is a pure function of the token log. A call that fails part-way (an allocation failure
// inside a resync) restores the log and leaves the cache stale; the next call rebuilds it from the
// log, so no failure leaves a session that disagrees with the tokens it reports.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/growing_kv.hpp"
#include "tconst/session_base.hpp"
#include "tconst/tconstformer/kv_cache.hpp"
#include "tconst/tconstformer/scheduler.hpp"

namespace tconst {
inline namespace TCONST_ABI {

template <typename Scalar>
class StreamBatch;

template <typename Scalar>
class TConstSession final : public SessionBase<Scalar> {
 public:
  using Index = Eigen::Index;
  using typename Session<Scalar>::Logits;
  using typename Session<Scalar>::RowCallback;

  explicit TConstSession(std::shared_ptr<const Model<Scalar>> model, SessionOptions options = {})
      : SessionBase<Scalar>(checked(std::move(model)), options),
        cache_(this->model_->config()),
        context_(this->model_->config().arch == Architecture::kTLinFormer
                     ? std::make_unique<detail::GrowingKV<Scalar>>(this->model_->config().n_block,
                                                                   this->model_->config().n_embd)
                     : nullptr),
        scheduler_(*this->model_, cache_, context_.get(), options) {
    this->log_.reserve(static_cast<size_t>(this->model_->config().generate_window));
  }

  const Logits& feed(int32_t token) override {
    const detail::WorkerLimit workers(this->options_.threads);
    ensure_fresh();
    this->check(&token, 1);
    const int64_t p = this->position();
    if (scheduler_.resync_due(p)) this->reserve_log(p + scheduler_.period());
    this->log_.push_back(token);
    try {
      scheduler_.step(this->log_.data(), p);
    } catch (...) {
      this->log_.pop_back();
      throw;
    }
    this->emit_logits(scheduler_.final_rows(), 1, nullptr, 0);
    return this->logits_;
  }

  size_t cache_bytes() const override {
    return cache_.bytes() + (context_ ? context_->bytes() : 0);
  }
  int64_t resync_count() const override { return scheduler_.resync_count(); }
  void reset() override {
    this->log_.clear();
    scheduler_.reset();
  }
  std::unique_ptr<Session<Scalar>> copy() const override {
    return std::unique_ptr<Session<Scalar>>(new TConstSession(*this));
  }

  /// The fixed cache (read-only: its size and storage never change).
  const FixedKVCache<Scalar>& cache() const { return cache_; }
  /// Bytes held now by the resync's buffers (0 between resyncs unless keep_resync_buffers).
  size_t resync_buffer_bytes() const { return scheduler_.resync_buffer_bytes(); }
  /// Bytes of the buffers a step's (and a prefill's) window pass uses, held for the session's life.
  size_t window_buffer_bytes() const { return scheduler_.window_buffer_bytes(); }

 protected:
  void write_caches(detail::ByteWriter& w) const override {
    if (scheduler_.stale()) {
      // A failed call left the cache out of step with the log: write the state a fresh copy
      // rebuilds (the copy is a new object, so this session stays as it is).
      TConstSession fresh(*this);
      fresh.ensure_fresh();
      fresh.write_caches(w);
      return;
    }
    const ModelConfig& c = this->model_->config();
    w.put<int64_t>(scheduler_.resync_count());
    w.put<int64_t>(cache_.context_length());
    w.put<int64_t>(cache_.z_rows());
    w.put<int64_t>(cache_.window_rows());
    w.put<uint64_t>(static_cast<uint64_t>(c.fixed_cache_scalars()));
    w.put_array(cache_.data(), static_cast<size_t>(c.fixed_cache_scalars()));
    const Index ctx_rows = context_ ? context_->rows() : 0;
    w.put<uint64_t>(static_cast<uint64_t>(ctx_rows));
    for (Index b = 0; ctx_rows > 0 && b < c.n_block; ++b) {
      w.put_array(context_->keys(b), static_cast<size_t>(ctx_rows * c.n_embd));
      w.put_array(context_->values(b), static_cast<size_t>(ctx_rows * c.n_embd));
    }
  }

  std::function<void()> read_caches(detail::ByteReader& r, int64_t n) override {
    const ModelConfig& c = this->model_->config();
    const Index d = c.n_embd;
    const int64_t resyncs = r.get<int64_t>("state");
    const int64_t Lc = r.get<int64_t>("state");
    const int64_t z = r.get<int64_t>("state");
    const int64_t wrows = r.get<int64_t>("state");
    const int64_t expect_lc = scheduler_.context_of(n);
    if (Lc != expect_lc || z != std::min<int64_t>(Lc, c.history_window) || wrows != n - Lc ||
        resyncs < 0) {
      throw Error("snapshot cache state disagrees with its token log");
    }
    if (r.get<uint64_t>("cache") != static_cast<uint64_t>(c.fixed_cache_scalars())) {
      throw Error("snapshot cache size disagrees with the model");
    }
    const uint8_t* cache = r.span<Scalar>(static_cast<uint64_t>(c.fixed_cache_scalars()), "cache");
    const uint64_t ctx_rows = r.get<uint64_t>("context cache");
    if (ctx_rows != (context_ ? static_cast<uint64_t>(Lc) : 0)) {
      throw Error("snapshot context cache disagrees with its token log");
    }
    std::vector<const uint8_t*> ctx;
    for (Index b = 0; ctx_rows > 0 && b < c.n_block; ++b) {
      ctx.push_back(r.span<Scalar>(ctx_rows * d, "context cache"));
      ctx.push_back(r.span<Scalar>(ctx_rows * d, "context cache"));
    }
    // Allocate what may grow; the commit below only copies.
    if (context_) context_->reserve(static_cast<Index>(ctx_rows));
    // The window pass attends to every restored context row (TLinFormer).
    scheduler_.reserve_keys(static_cast<Index>(ctx_rows));
    return [this, cache, ctx, ctx_rows, Lc, z, wrows, resyncs, d, &c] {
      std::memcpy(cache_.data(), cache, cache_.bytes());
      cache_.set_context(Lc, static_cast<Index>(z));
      cache_.set_window_rows(static_cast<Index>(wrows));
      for (Index b = 0; ctx_rows > 0 && b < c.n_block; ++b) {
        std::memcpy(context_->keys(b), ctx[2 * b], ctx_rows * d * sizeof(Scalar));
        std::memcpy(context_->values(b), ctx[2 * b + 1], ctx_rows * d * sizeof(Scalar));
      }
      if (context_) context_->set_rows(static_cast<Index>(ctx_rows));
      scheduler_.restore(resyncs);
    };
  }

  size_t log_capacity(int64_t n) const override {
    return static_cast<size_t>(scheduler_.context_of(n) + scheduler_.period());
  }

 private:
  friend class StreamBatch<Scalar>;

  static std::shared_ptr<const Model<Scalar>> checked(std::shared_ptr<const Model<Scalar>> m) {
    if (!m) throw Error("TConstSession needs a model");
    if (m->config().is_baseline()) {
      throw Error(
          "a transformer model has no fixed cache; use make_session() or TransformerSession");
    }
    return m;
  }

  // Deep copy for copy(): the cache's contents are copied, its storage is new.
  TConstSession(const TConstSession& o)
      : SessionBase<Scalar>(o),
        cache_(o.cache_.copy()),
        context_(o.context_ ? std::make_unique<detail::GrowingKV<Scalar>>(*o.context_) : nullptr),
        scheduler_(o.scheduler_, cache_, context_.get()) {}

  // Consumes ids[0..n): with on_row every token's logits are produced; without it only the
  // window holding the last token is run.
  void consume(const int32_t* ids, size_t n, const RowCallback* on_row) override {
    ensure_fresh();
    this->check(ids, n);
    if (n == 0) return;
    const int64_t start = this->position(), end = start + static_cast<int64_t>(n);
    this->reserve_log(scheduler_.context_of(end) + scheduler_.period());
    this->log_.insert(this->log_.end(), ids, ids + n);
    try {
      scheduler_.run(this->log_.data(), start, end, on_row == nullptr, [&](int64_t a, Index rows) {
        if (on_row != nullptr || a + rows == end) {
          this->emit_logits(scheduler_.final_rows(), rows, on_row, static_cast<size_t>(a - start));
        }
      });
    } catch (...) {
      this->log_.resize(static_cast<size_t>(start));
      throw;
    }
  }

  // Rebuilds cache and logits from the token log after a failed call.
  void ensure_fresh() {
    const int64_t n = this->position();
    scheduler_.ensure_fresh(this->log_.data(), n, [&](int64_t a, Index rows) {
      if (a + rows == n) this->emit_logits(scheduler_.final_rows(), rows, nullptr, 0);
    });
  }

  FixedKVCache<Scalar> cache_;  // shared by the context and generation paths
  std::unique_ptr<detail::GrowingKV<Scalar>> context_;  // TLinFormer only: [Lc, d] Kc, Vc per block
  Scheduler<Scalar> scheduler_;                         // over cache_ and context_
};

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class TConstSession<float>;
extern template class TConstSession<double>;
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
