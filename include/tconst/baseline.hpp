#pragma once
// TransformerSession<Scalar>: the standard Transformer baseline (SPEC §4), whose key/value cache
// grows by one row per token and layer. Same public interface as the Scheduler, so programs and
// benchmarks swap architectures by model file. make_session() picks the session for a model.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "tconst/generation_path.hpp"
#include "tconst/kv_cache.hpp"
#include "tconst/scheduler.hpp"
#include "tconst/session.hpp"

namespace tconst {

template <typename Scalar>
class TransformerSession final : public Session<Scalar> {
 public:
  using Index = Eigen::Index;
  using typename Session<Scalar>::Logits;
  using typename Session<Scalar>::RowCallback;
  using Session<Scalar>::prefill;

  /// Rows of a prompt run through the layers together (bounds the batched pass's buffers).
  static constexpr Index kPrefillChunk = 256;

  explicit TransformerSession(std::shared_ptr<const Model<Scalar>> model,
                              SessionOptions options = {})
      : model_(checked(std::move(model))),
        options_(options),
        kv_(model_->config().n_block, model_->config().n_embd),
        logits_(model_->config().vocab_size) {}

  const Logits& feed(int32_t token) override {
    detail::check_ids(model_->config(), options_, position(), &token, 1);
    run(&token, 1, nullptr, 0);
    return logits_;
  }

  const Logits& prefill(const int32_t* ids, size_t n) override {
    detail::check_ids(model_->config(), options_, position(), ids, n);
    for (size_t a = 0; a < n; a += kPrefillChunk) {
      run(ids + a, static_cast<Index>(std::min<size_t>(kPrefillChunk, n - a)), nullptr, 0);
    }
    return logits();
  }

  void score(const int32_t* ids, size_t n, const RowCallback& on_row) override {
    detail::check_ids(model_->config(), options_, position(), ids, n);
    for (size_t a = 0; a < n; a += kPrefillChunk) {
      run(ids + a, static_cast<Index>(std::min<size_t>(kPrefillChunk, n - a)),
          on_row ? &on_row : nullptr, a);
    }
  }

  const Logits& logits() const override { return position() > 0 ? logits_ : empty_; }
  int64_t position() const override { return static_cast<int64_t>(log_.size()); }
  const std::vector<int32_t>& tokens() const override { return log_; }
  size_t cache_bytes() const override { return kv_.bytes(); }
  int64_t resync_count() const override { return 0; }
  void reset() override {
    log_.clear();
    kv_.set_rows(0);
  }
  std::unique_ptr<Session<Scalar>> copy() const override {
    return std::unique_ptr<Session<Scalar>>(new TransformerSession(*this));
  }
  const Model<Scalar>& model() const override { return *model_; }
  const SessionOptions& options() const override { return options_; }

  void write_state(std::string& out) const override {
    const Index d = model_->config().n_embd;
    detail::ByteWriter w(out);
    w.put<uint64_t>(log_.size());
    w.put_array(log_.data(), log_.size());
    for (Index l = 0; l < kv_.layers(); ++l) {
      w.put_array(kv_.keys(l), static_cast<size_t>(kv_.rows() * d));
      w.put_array(kv_.values(l), static_cast<size_t>(kv_.rows() * d));
    }
    const uint64_t nl = position() > 0 ? static_cast<uint64_t>(logits_.size()) : 0;
    w.put<uint64_t>(nl);
    w.put_array(logits_.data(), static_cast<size_t>(nl));
  }

  void read_state(const uint8_t* data, size_t size) override {
    const ModelConfig& c = model_->config();
    const Index d = c.n_embd;
    detail::ByteReader r(data, size);
    std::vector<int32_t> log = detail::read_token_log(r, c, options_);
    const uint64_t n = log.size();
    std::vector<const uint8_t*> kv;
    for (Index l = 0; l < kv_.layers(); ++l) {
      kv.push_back(r.span<Scalar>(n * d, "key/value cache"));
      kv.push_back(r.span<Scalar>(n * d, "key/value cache"));
    }
    uint64_t nl = 0;
    const uint8_t* logits = detail::read_logits_tail<Scalar>(r, c, n, &nl);
    kv_.reserve(static_cast<Index>(n));
    log_.swap(log);
    for (Index l = 0; l < kv_.layers(); ++l) {
      std::memcpy(kv_.keys(l), kv[2 * l], n * d * sizeof(Scalar));
      std::memcpy(kv_.values(l), kv[2 * l + 1], n * d * sizeof(Scalar));
    }
    kv_.set_rows(static_cast<Index>(n));
    if (nl > 0) std::memcpy(logits_.data(), logits, nl * sizeof(Scalar));
  }

  const GrowingKV<Scalar>& kv_cache() const { return kv_; }

  /// Benchmarks only: makes the session look as if `depth` tokens (all id 0) had been consumed,
  /// with pseudo-random keys and values instead of a real O(depth^2) prefill. Per-token cost does
  /// not depend on the values; the logits that follow are not those of any real stream.
  void fill_synthetic(int64_t depth, uint64_t seed = 1) {
    reset();
    // Headroom, so that the steps timed after this do not include a reallocation of the cache.
    kv_.reserve(static_cast<Index>(depth) + 4096);
    const Index d = model_->config().n_embd;
    uint64_t x = seed;
    for (Index l = 0; l < kv_.layers(); ++l) {
      for (Scalar* p : {kv_.keys(l), kv_.values(l)}) {
        for (Index i = 0; i < depth * d; ++i) {
          x = x * 6364136223846793005ull + 1442695040888963407ull;
          p[i] = static_cast<Scalar>(static_cast<double>(x >> 40) / double(1 << 24) - 0.5);
        }
      }
    }
    kv_.set_rows(static_cast<Index>(depth));
    log_.assign(static_cast<size_t>(depth), 0);
  }

 private:
  static std::shared_ptr<const Model<Scalar>> checked(std::shared_ptr<const Model<Scalar>> m) {
    if (!m) throw Error("TransformerSession needs a model");
    if (!m->config().is_baseline()) {
      throw Error(std::string("a ") + to_string(m->config().arch) +
                  " model needs a Scheduler; use make_session()");
    }
    return m;
  }

  // Runs n tokens (ids validated) at positions position().. through every layer. The rows become
  // part of the cache only when the whole pass succeeded.
  void run(const int32_t* ids, Index n, const RowCallback* on_row, size_t index0) {
    const ModelConfig& c = model_->config();
    const Index d = c.n_embd;
    const Index pos0 = static_cast<Index>(position());
    kv_.reserve(pos0 + n);
    ws_.reserve(std::min<Index>(n, kPrefillChunk), pos0 + n, d, c.ffn_hidden, c.n_head);
    log_.reserve(log_.size() + static_cast<size_t>(n));
    Scalar* x = ws_.x.data();
    detail::embed(*model_, ids, n, x);
    for (Index l = 0; l < c.n_block; ++l) {
      const detail::SelfKV<Scalar> self{kv_.keys(l), kv_.values(l), d, pos0};
      detail::layer_forward(*model_, model_->layer(l, 0), x, n, pos0, self,
                            static_cast<const detail::CrossKV<Scalar>*>(nullptr), 0, ws_);
    }
    detail::final_norm(*model_, n, ws_);
    kv_.set_rows(pos0 + n);
    log_.insert(log_.end(), ids, ids + n);
    if (on_row) {
      for (Index r = 0; r < n; ++r) {
        detail::head_logits(*model_, ws_.xn.data() + r * d, logits_.data());
        (*on_row)(index0 + static_cast<size_t>(r), logits_);
      }
    } else {
      detail::head_logits(*model_, ws_.xn.data() + (n - 1) * d, logits_.data());
    }
  }

  std::shared_ptr<const Model<Scalar>> model_;
  SessionOptions options_;
  GrowingKV<Scalar> kv_;              // per layer [L, d] rotated keys and values
  detail::WindowScratch<Scalar> ws_;  // [<= kPrefillChunk, ...] pass buffers
  std::vector<int32_t> log_;
  Logits logits_;
  Logits empty_;
};

/// The session for a model's architecture: Scheduler for TConstFormer and TLinFormer,
/// TransformerSession for the baseline.
template <typename Scalar>
std::unique_ptr<Session<Scalar>> make_session(std::shared_ptr<const Model<Scalar>> model,
                                              SessionOptions options = {}) {
  if (!model) throw Error("make_session needs a model");
  if (model->config().is_baseline()) {
    return std::make_unique<TransformerSession<Scalar>>(std::move(model), options);
  }
  return std::make_unique<Scheduler<Scalar>>(std::move(model), options);
}

}  // namespace tconst
