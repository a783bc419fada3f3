#pragma once
// Session<Scalar>: the public streaming interface every architecture implements.
//
// A session consumes tokens and returns, after each, the logits of the next token (SPEC §5). The
// TConstFormer session (TConstSession) keeps a fixed-size cache; the TLinFormer and baseline
// sessions keep caches that grow, by design. make_session() (make_session.hpp) picks the right one
// for a model, so a program swaps architectures by swapping model files.
//
// Thread safety: a Model is immutable and may be shared by any number of sessions on any number
// of threads. A Session is not internally synchronised: use one session per thread (or guard it).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tconst/config.hpp"
#include "tconst/detail/bytes.hpp"
#include "tconst/detail/layers.hpp"
#include "tconst/error.hpp"
#include "tconst/model.hpp"

namespace tconst {

/// Per-session settings.
struct SessionOptions {
  /// The longest stream a session accepts; feeding past it throws Error and changes nothing.
  /// The token log (4 bytes a token) is the only state of a TConstFormer session that grows.
  int64_t max_context = int64_t{1} << 30;
  /// A resync streams the context in chunks and recomputes block b's context rows from the tokens
  /// (through the restore layers of the blocks before it), so its working memory does not grow
  /// with the stream. With more than two blocks that recomputation grows with the block count;
  /// false keeps each block's context rows, [Lc, d], for the next block instead (memory that grows
  /// with the stream, during a resync). With one or two blocks both settings do the same work.
  bool bounded_resync = true;
  /// With bounded_resync = false, the kept context rows are freed when the resync ends, so that
  /// between resyncs a session holds only its fixed cache and token log; true keeps them, saving
  /// one allocation per resync in exchange for memory that grows with the stream.
  bool keep_resync_buffers = false;
};

template <typename Scalar>
class Session {
 public:
  using Logits = Vector<Scalar>;
  /// Called by score() with the index (into the ids passed) of each token and the logits after it.
  using RowCallback = std::function<void(size_t index, const Logits& logits)>;

  virtual ~Session() = default;

  /// Consumes one token; returns the logits after it (valid until the next call that changes the
  /// session). Throws Error, leaving the session unchanged, for an id outside [0, V) or past
  /// max_context.
  virtual const Logits& feed(int32_t token) = 0;
  /// Consumes a whole prompt in one call: the state and every later logit equal those of feeding
  /// it token by token, at the cost of one resync and one batched window pass. All ids are checked
  /// before any is consumed. Returns the logits after the last one.
  virtual const Logits& prefill(const int32_t* ids, size_t n) = 0;
  const Logits& prefill(const std::vector<int32_t>& ids) { return prefill(ids.data(), ids.size()); }
  /// Consumes the ids like prefill, calling `on_row` with the logits after every one of them
  /// (batched: one resync and one window pass per window). For perplexity.
  virtual void score(const int32_t* ids, size_t n, const RowCallback& on_row) = 0;

  /// Logits after the last token consumed (empty before the first).
  virtual const Logits& logits() const = 0;
  /// Tokens consumed so far.
  virtual int64_t position() const = 0;
  virtual const std::vector<int32_t>& tokens() const = 0;
  /// Bytes of key/value cache held now (the fixed cache, plus what grows for TLinFormer and the
  /// baseline).
  virtual size_t cache_bytes() const = 0;
  /// Resyncs run so far (0 for the baseline).
  virtual int64_t resync_count() const = 0;
  /// Forgets every token; the cache keeps its storage.
  virtual void reset() = 0;
  /// An independent deep copy (copies the cache: its cost is the cache's size).
  virtual std::unique_ptr<Session> copy() const = 0;

  virtual const Model<Scalar>& model() const = 0;
  virtual const SessionOptions& options() const = 0;

  /// The session's state as bytes (token log, caches, logits); snapshot.hpp frames it with a
  /// format version, the model's identity and a checksum. Use save_session()/load_session().
  virtual void write_state(std::string& out) const = 0;
  /// Restores what write_state() wrote for the same model. All-or-nothing: on any inconsistency
  /// it throws Error and the session is unchanged.
  virtual void read_state(const uint8_t* data, size_t size) = 0;
  Architecture architecture() const { return model().config().arch; }
};

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
    consume(ids, n, nullptr);
    return logits();
  }
  void score(const int32_t* ids, size_t n, const RowCallback& on_row) override {
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
      : model_(std::move(model)), options_(options), logits_(model_->config().vocab_size) {}
  SessionBase(const SessionBase& o)
      : model_(o.model_), options_(o.options_), log_(o.log_), logits_(o.logits_) {
    log_.reserve(o.log_.capacity());
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
      detail::head_logits(*model_, xn + (rows - 1) * d, logits_.data());
      return;
    }
    for (Index r = 0; r < rows; ++r) {
      detail::head_logits(*model_, xn + r * d, logits_.data());
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
  std::vector<int32_t> log_;  // every token consumed, in position order
  Logits logits_;             // [V] after the last token
  Logits empty_;              // what logits() returns before the first token
};

}  // namespace tconst
