#pragma once
// SessionBase<Scalar>: what every architecture's session shares (session.hpp has the interface).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tconst/config.hpp"
#include "tconst/detail/abi.hpp"
#include "tconst/detail/bytes.hpp"
#include "tconst/detail/layers.hpp"
#include "tconst/detail/parallel.hpp"
#include "tconst/error.hpp"
#include "tconst/model.hpp"
#include "tconst/session.hpp"

namespace tconst {
inline namespace TCONST_ABI {

namespace detail {

/// Reads a snapshot's token log: at most max_context tokens, every id in [0, V). The bytes must
/// be present before anything is sized by the claimed count (a short file may claim 2^30).
inline std::vector<int32_t> read_token_log(ByteReader& r, const ModelConfig& c,
                                           int64_t max_context) {
  const uint64_t n = r.get<uint64_t>("token log");
  if (n > static_cast<uint64_t>(max_context)) {
    throw Error("snapshot holds " + std::to_string(n) + " tokens, more than max_context");
  }
  const uint8_t* tokens = r.span<int32_t>(n, "token log");
  std::vector<int32_t> log(static_cast<size_t>(n));
  if (n > 0) std::memcpy(log.data(), tokens, n * sizeof(int32_t));
  for (int32_t t : log) {
    if (t < 0 || t >= c.vocab_size) throw Error("snapshot token log holds an id out of range");
  }
  return log;
}

/// Reads the last part of a snapshot's state: the logits after the last token (none before the
/// first), and checks that nothing follows them. Returns where the V scalars start.
template <typename Scalar>
const uint8_t* read_logits_tail(ByteReader& r, const ModelConfig& c, uint64_t n_tokens,
                                uint64_t* count) {
  const uint64_t nl = r.get<uint64_t>("logits");
  if (nl != (n_tokens > 0 ? static_cast<uint64_t>(c.vocab_size) : 0)) {
    throw Error("snapshot logits disagree with the model");
  }
  const uint8_t* logits = r.span<Scalar>(nl, "logits");
  if (r.left() != 0) throw Error("snapshot has trailing bytes");
  *count = nl;
  return logits;
}

}  // namespace detail

/// What every architecture's session shares: the model, the options, the token log (the only
/// state that grows for TConstFormer), the logits after the last token, id checks, the LM head over
/// final-normalised rows, and the framing of the state bytes (token log, then the architecture's
/// caches, then the logits). A session class adds its caches and how tokens run through them.
template <typename Scalar>
class SessionBase : public Session<Scalar> {
 public:
  using Index = Eigen::Index;
  using typename Session<Scalar>::Logits;
  using typename Session<Scalar>::RowCallback;

  using Session<Scalar>::prefill;
  const Logits& prefill(const int32_t* ids, size_t n) override {
    const detail::WorkerLimit workers(options_.threads);
    consume(ids, n, nullptr);
    return logits();
  }
  void score(const int32_t* ids, size_t n, const RowCallback& on_row) override {
    const detail::WorkerLimit workers(options_.threads);
    consume(ids, n, on_row ? &on_row : nullptr);
  }

  const Logits& logits() const override { return position() > 0 ? logits_ : empty_; }
  int64_t position() const override { return static_cast<int64_t>(log_.size()); }
  const std::vector<int32_t>& tokens() const override { return log_; }
  const Model<Scalar>& model() const override { return *model_; }
  const SessionOptions& options() const override { return options_; }

  void write_state(std::string& out) const override {
    detail::ByteWriter w(out);
    w.put<uint64_t>(log_.size());
    w.put_array(log_.data(), log_.size());
    write_caches(w);
    const uint64_t nl = position() > 0 ? static_cast<uint64_t>(logits_.size()) : 0;
    w.put<uint64_t>(nl);
    w.put_array(logits_.data(), static_cast<size_t>(nl));
  }

  void read_state(const uint8_t* data, size_t size) override {
    const ModelConfig& c = model_->config();
    detail::ByteReader r(data, size);
    std::vector<int32_t> log = detail::read_token_log(r, c, options_.max_context);
    const uint64_t n = log.size();
    std::function<void()> commit = read_caches(r, static_cast<int64_t>(n));
    uint64_t nl = 0;
    const uint8_t* logits = detail::read_logits_tail<Scalar>(r, c, n, &nl);
    // Everything checked and allocated; nothing below throws.
    log.reserve(std::max(log.size(), log_capacity(static_cast<int64_t>(n))));
    commit();
    log_.swap(log);
    if (nl > 0) std::memcpy(logits_.data(), logits, nl * sizeof(Scalar));
  }

 protected:
  SessionBase(std::shared_ptr<const Model<Scalar>> model, SessionOptions options)
      : model_(Model<Scalar>::for_compute(std::move(model), options.compute)),
        options_(options),
        logits_(model_->config().vocab_size) {
    detail::reserve_compute(*model_, 1, head_ws_);
  }
  SessionBase(const SessionBase& o)
      : model_(o.model_), options_(o.options_), log_(o.log_), logits_(o.logits_) {
    log_.reserve(o.log_.capacity());
    detail::reserve_compute(*model_, 1, head_ws_);
  }
  SessionBase& operator=(const SessionBase&) = delete;

  /// Throws Error, changing nothing, unless every id is in [0, V) and the stream stays within
  /// max_context.
  void check(const int32_t* ids, size_t n) const {
    const ModelConfig& c = model_->config();
    for (size_t i = 0; i < n; ++i) {
      if (ids[i] < 0 || ids[i] >= c.vocab_size) {
        throw Error("token id " + std::to_string(ids[i]) + " is outside [0, " +
                    std::to_string(c.vocab_size) + ")");
      }
    }
    if (static_cast<int64_t>(n) > options_.max_context - position()) {
      throw Error("stream would exceed max_context = " + std::to_string(options_.max_context) +
                  " tokens (position " + std::to_string(position()) + ", " + std::to_string(n) +
                  " more)");
    }
  }

  /// Grows the log's capacity to at least n tokens (geometrically, so appends stay amortised).
  void reserve_log(int64_t n) {
    if (static_cast<int64_t>(log_.capacity()) < n) {
      log_.reserve(std::max<size_t>(static_cast<size_t>(n), log_.capacity() * 3 / 2));
    }
  }

  /// The LM head over rows xn[rows, d] (LN_f already applied), the tokens at log positions
  /// first..: with on_row, every row's logits go to on_row (index counted from `index0`);
  /// without, only the last row's are computed. logits_ holds the last row's afterwards.
  void emit_logits(const Scalar* xn, Index rows, const RowCallback* on_row, size_t index0) {
    const Index d = model_->config().n_embd;
    if (on_row == nullptr) {
      detail::head_logits(*model_, xn + (rows - 1) * d, logits_.data(), &head_ws_);
      return;
    }
    for (Index r = 0; r < rows; ++r) {
      detail::head_logits(*model_, xn + r * d, logits_.data(), &head_ws_);
      (*on_row)(index0 + static_cast<size_t>(r), logits_);
    }
  }

  /// Consumes ids[0..n) as prefill and score do: with on_row, every token's logits go to on_row
  /// (index counted from 0); without it, only the state and the last token's logits are needed.
  /// All ids are checked before any is consumed.
  virtual void consume(const int32_t* ids, size_t n, const RowCallback* on_row) = 0;

  /// The architecture's caches in the state bytes, between the token log and the logits.
  virtual void write_caches(detail::ByteWriter& w) const = 0;
  /// Reads and checks what write_caches wrote, for a log of n tokens, allocating whatever the
  /// restored state needs; returns the commit that installs it, which must not throw. Throws
  /// Error, leaving the session unchanged, on any inconsistency.
  virtual std::function<void()> read_caches(detail::ByteReader& r, int64_t n) = 0;
  /// The log capacity a stream of n tokens needs so that the next steps do not allocate.
  virtual size_t log_capacity(int64_t n) const { return static_cast<size_t>(n); }

  std::shared_ptr<const Model<Scalar>> model_;
  SessionOptions options_;
  std::vector<int32_t> log_;       // every token consumed, in position order
  Logits logits_;                  // [V] after the last token
  Logits empty_;                   // what logits() returns before the first token
  detail::GemmWorkspace head_ws_;  // the LM head's product buffers (compute modes)
};

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class SessionBase<float>;
extern template class SessionBase<double>;
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
