#pragma once
// TransformerSession<Scalar>: the standard Transformer baseline (SPEC §4), whose key/value cache
// grows by one row per token and layer. Same public interface as TConstSession, so programs and
// benchmarks swap architectures by model file; make_session() picks the session for a model.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/growing_kv.hpp"
#include "tconst/detail/layers.hpp"
#include "tconst/session_base.hpp"

namespace tconst {
inline namespace TCONST_ABI {

template <typename Scalar>
class TransformerSession;

template <typename Scalar>
void fill_synthetic_history(TransformerSession<Scalar>& session, int64_t depth, uint64_t seed);

template <typename Scalar>
class TransformerSession final : public SessionBase<Scalar> {
 public:
  using Index = Eigen::Index;
  using typename Session<Scalar>::Logits;
  using typename Session<Scalar>::RowCallback;

  /// Rows of a prompt run through the layers together (bounds the batched pass's buffers).
  static constexpr Index kPrefillChunk = 256;

  explicit TransformerSession(std::shared_ptr<const Model<Scalar>> model,
                              SessionOptions options = {})
      : SessionBase<Scalar>(checked(std::move(model)), options),
        kv_(this->model_->config().n_block, this->model_->config().n_embd) {}

  const Logits& feed(int32_t token) override {
    const detail::WorkerLimit workers(this->options_.threads);
    this->check(&token, 1);
    run(&token, 1, nullptr, 0);
    return this->logits_;
  }

  size_t cache_bytes() const override { return kv_.bytes(); }
  int64_t resync_count() const override { return 0; }
  void reset() override {
    this->log_.clear();
    kv_.set_rows(0);
  }
  std::unique_ptr<Session<Scalar>> copy() const override {
    return std::unique_ptr<Session<Scalar>>(new TransformerSession(*this));
  }

  /// Makes room for a stream of `tokens` tokens, so that feeding up to there does not reallocate
  /// the cache (which otherwise grows geometrically as the stream does).
  void reserve(int64_t tokens) {
    kv_.reserve(static_cast<Index>(tokens));
    this->reserve_log(tokens);
  }

 protected:
  void write_caches(detail::ByteWriter& w) const override {
    const Index d = this->model_->config().n_embd;
    for (Index l = 0; l < kv_.layers(); ++l) {
      w.put_array(kv_.keys(l), static_cast<size_t>(kv_.rows() * d));
      w.put_array(kv_.values(l), static_cast<size_t>(kv_.rows() * d));
    }
  }

  std::function<void()> read_caches(detail::ByteReader& r, int64_t n) override {
    const Index d = this->model_->config().n_embd;
    const uint64_t rows = static_cast<uint64_t>(n);
    std::vector<const uint8_t*> kv;
    for (Index l = 0; l < kv_.layers(); ++l) {
      kv.push_back(r.span<Scalar>(rows * d, "key/value cache"));
      kv.push_back(r.span<Scalar>(rows * d, "key/value cache"));
    }
    kv_.reserve(static_cast<Index>(n));
    return [this, kv, rows, d] {
      for (Index l = 0; l < kv_.layers(); ++l) {
        std::memcpy(kv_.keys(l), kv[2 * l], rows * d * sizeof(Scalar));
        std::memcpy(kv_.values(l), kv[2 * l + 1], rows * d * sizeof(Scalar));
      }
      kv_.set_rows(static_cast<Index>(rows));
    };
  }

 private:
  friend void fill_synthetic_history<Scalar>(TransformerSession&, int64_t, uint64_t);

  static std::shared_ptr<const Model<Scalar>> checked(std::shared_ptr<const Model<Scalar>> m) {
    if (!m) throw Error("TransformerSession needs a model");
    if (!m->config().is_baseline()) {
      throw Error(std::string("a ") + to_string(m->config().arch) +
                  " model needs a TConstSession; use make_session()");
    }
    return m;
  }

  TransformerSession(const TransformerSession&) = default;

  void consume(const int32_t* ids, size_t n, const RowCallback* on_row) override {
    this->check(ids, n);
    for (size_t a = 0; a < n; a += kPrefillChunk) {
      run(ids + a, static_cast<Index>(std::min<size_t>(kPrefillChunk, n - a)), on_row, a);
    }
  }

  // Runs n tokens (ids validated) at positions position().. through every layer. The rows become
  // part of the cache only when the whole pass succeeded.
  void run(const int32_t* ids, Index n, const RowCallback* on_row, size_t index0) {
    const Model<Scalar>& m = *this->model_;
    const ModelConfig& c = m.config();
    const Index d = c.n_embd;
    const Index pos0 = static_cast<Index>(this->position());
    kv_.reserve(pos0 + n);
    ws_.reserve(std::min<Index>(n, kPrefillChunk), pos0 + n, d, c.ffn_hidden, c.n_head);
    detail::reserve_compute(m, n, ws_.gemm);
    this->reserve_log(pos0 + n);
    Scalar* x = ws_.x.data();
    detail::embed(m, ids, n, x);
    for (Index l = 0; l < c.n_block; ++l) {
      const detail::SelfKV<Scalar> self{kv_.keys(l), kv_.values(l), d, pos0};
      detail::layer_body(m, m.layer(l, 0), x, n, ws_, [&](Scalar* qkv, Scalar* att) {
        detail::attend_consecutive_rows(m, qkv, n, pos0, self, detail::CrossKV<Scalar>{}, att,
                                        ws_.scores.data());
      });
    }
    detail::final_norm(m, n, ws_);
    kv_.set_rows(pos0 + n);
    this->log_.insert(this->log_.end(), ids, ids + n);
    this->emit_logits(ws_.xn.data(), n, on_row, index0);
  }

  detail::GrowingKV<Scalar> kv_;      // per layer [L, d] rotated keys and values
  detail::WindowScratch<Scalar> ws_;  // [<= kPrefillChunk, ...] pass buffers
};

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class TransformerSession<float>;
extern template class TransformerSession<double>;
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
