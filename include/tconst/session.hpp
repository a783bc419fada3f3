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
#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/model.hpp"

namespace tconst {
inline namespace TCONST_ABI {

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
  /// Threads (workers) this session's calls use: 0 takes OpenMP's count of the calling thread
  /// (OMP_NUM_THREADS, omp_set_num_threads); n > 0 uses n in every call, so that a program running
  /// several engines can give each its own. The results have the same bits on any count. Without
  /// OpenMP every session runs on the calling thread.
  int threads = 0;
  /// The arithmetic of the weight products (compute.hpp, SPEC §6.3): f32, the exact reference, or
  /// bf16 / int8 on the CPU's faster dot instructions. Fixed when the session is made; the model
  /// is prepared for it once (Model::for_compute) and shared by every session of that compute. A
  /// snapshot records it and restores only into a session of the same compute.
  Compute compute = Compute::f32;
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

}  // namespace TCONST_ABI
}  // namespace tconst
