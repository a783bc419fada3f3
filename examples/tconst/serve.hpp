#pragma once
// tconst serve: what the server's parts (serve_*.cpp) share.
//
//   serve.cpp          the command: options, model, signals, start and graceful stop
//   serve_store.cpp    SessionStore: named sessions, resident bytes, parking to and restoring from
//                      snapshot files
//   serve_lease.cpp    Leases: which replica uses a session, as files in a shared session dir
//   serve_engine.cpp   Engine: the serving loop (one worker steps every generating session
//   together;
//                      prefills and resyncs run beside it) and the bounded queue
//   serve_http.cpp     the HTTP routes, request checking, JSON and server-sent events
//
// Every part uses float sessions: a server serves the float model.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tconst/batch.hpp"
#include "tconst/tconst.hpp"

namespace tconst_cli {
namespace serve {

using Model = tconst::Model<float>;
using Session = tconst::Session<float>;

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8080;          // 0: any free port (printed on standard output)
  int backlog = 512;        // connections the kernel holds before they are accepted
  int threads = 1;          // OpenMP threads of the worker's joint steps
  int side_threads = 1;     // OpenMP threads of the prefills and resyncs beside it
  int max_active = 64;      // generations stepped together
  int max_queue = 64;       // generations waiting for a place; beyond: 503
  std::string session_dir;  // where idle sessions are parked ("" = never parked)
  bool durable = false;     // a session's snapshot is written after each of its requests
  // --durable: replicas share the session dir; a request holds the session's lease.
  std::string replica_id;         // the lease owner's name ("" = HOST:PID:START-MS:PIDNS)
  int64_t lease_ms = 10000;       // a lease's time, renewed every third of it while a request runs
  int64_t lease_wait_ms = 15000;  // a request waits this long for a lease held elsewhere; then 409
  int64_t max_resident_bytes = int64_t{1} << 32;  // named sessions' caches and logs in memory
  int64_t max_context = int64_t{1} << 20;         // tokens a session may hold
  int64_t max_sessions = 100000;                  // named sessions, resident or parked
  size_t max_body_bytes = size_t{1} << 20;
  bool quiet = false;                              // no request log on standard error
  tconst::Compute compute = tconst::Compute::f32;  // every session's (SessionOptions::compute)
};

/// Counters for /metrics. Everything atomic: read without locks while the worker runs.
struct Metrics {
  std::atomic<int64_t> tokens_generated{0}, prompt_tokens{0}, resyncs{0}, requests{0}, rejected{0},
      cancelled{0}, parks{0}, restores{0}, park_failures{0}, restore_failures{0};
  std::atomic<int64_t> stale_copies{0};     // resident copies dropped: a newer generation on disk
  std::atomic<int64_t> lease_conflicts{0};  // 409s: a lease held elsewhere past --lease-wait-ms
  // Time spent in snapshot writes (taking the snapshot, writing, fsync, rename) and restores
  // (reading, checking, restoring), and how many of each succeeded.
  std::atomic<int64_t> write_ns{0}, writes{0}, restore_ns{0};
  std::atomic<int64_t> resident_bytes{0}, resident_sessions{0}, parked_sessions{0};
  std::atomic<int64_t> ephemeral_bytes{0};  // the sessions of /v1/completions, while they run
  std::atomic<int64_t> active{0}, queued{0};
  // Joint-step latency histogram (seconds), cumulative buckets as Prometheus wants them.
  static constexpr int kBuckets = 12;
  static const double kBounds[kBuckets];
  std::atomic<int64_t> step_bucket[kBuckets + 1] = {};
  std::atomic<int64_t> step_count{0};
  std::atomic<int64_t> step_sum_ns{0};

  void observe_step(double seconds);
  std::string prometheus() const;
};

/// Writes a line to standard error (the server's log), one line at a time across threads.
void log_line(const std::string& line);

/// A user's mistake in a request: an HTTP status and a message for the JSON error body.
struct HttpError {
  int status;
  std::string message;
  std::string type = "invalid_request_error";
};

/// Bytes a session holds in memory: its cache, its token log, its window pass's buffers and its
/// resync buffers.
int64_t session_bytes(const Session& s);

// ---- Leases: one replica at a time uses a session (serve_lease.cpp). ----------------------------

/// HOST:PID:START-MS:PIDNS, this process's default replica id.
std::string default_replica_id();

class Leases {
 public:
  Leases(std::string dir, std::string owner, int64_t ttl_ms);
  ~Leases();
  /// Takes the lease of session `id`, waiting up to `wait_ms` while another owner holds a live
  /// one. Returns "" once it is ours, else the owner that still holds it. Renewed until give_back.
  /// Throws HttpError 503 when the lease file cannot be written.
  std::string take(const std::string& id, int64_t wait_ms);
  /// Whether the lease file still names us (it was neither lost nor taken over).
  bool holds(const std::string& id);
  void give_back(const std::string& id);
  const std::string& owner() const { return owner_; }

 private:
  std::string path_of(const std::string& id) const;
  std::string own_name(const std::string& id);
  std::string content() const;
  bool owner_gone(const std::string& owner) const;
  bool try_create(const std::string& id);
  void take_over(const std::string& id, const std::string& seen);
  void renew_loop();

  std::string dir_, owner_;
  int64_t ttl_ms_;
  std::string host_, pidns_, tag_;
  std::mutex mu_;        // held_, counter_, stop_
  std::mutex renew_mu_;  // one renewal or give_back at a time
  std::condition_variable cv_;
  std::map<std::string, bool> held_;  // id -> still ours as far as renewal saw
  uint64_t counter_ = 0;
  bool stop_ = false;
  std::thread renewer_;
};

// ---- SessionStore: named sessions, resident or parked on disk. ----------------------------------

class SessionStore {
 public:
  SessionStore(std::shared_ptr<const Model> model, const ServeOptions& opt, Metrics& metrics);

  /// Registers the snapshots found in the session dir as parked sessions (loaded when used);
  /// removes temporary files a crash left behind. Returns how many were found.
  size_t scan();
  /// A new empty session; its id. Throws HttpError 503 when it cannot be made resident.
  std::string create();
  /// What GET /v1/sessions/{id} shows. Throws HttpError 404.
  nlohmann::json describe(const std::string& id);
  /// Deletes a session and its snapshot. Throws HttpError 404 or 409 (generating).
  void remove(const std::string& id);
  /// The session for one generation, resident and marked busy until release(). Restores a parked
  /// session (parking others to keep within the budget). Throws HttpError 404 (unknown), 409
  /// (busy) or 500 (its snapshot cannot be restored; the session reports that error).
  Session* acquire(const std::string& id);
  /// Ends a generation: the session becomes idle (the most recently used); with --durable its
  /// snapshot is written first, as the next generation, and the lease given back; parks the least
  /// recently used idle sessions while resident bytes exceed the budget. Returns "" or, when the
  /// durable write failed, why (the turn is then dropped: the session is its last written state).
  std::string release(const std::string& id);
  /// Parks every resident session (graceful shutdown). Returns how many could not be written.
  int park_all();
  std::vector<std::string> ids();

 private:
  struct Entry {
    std::unique_ptr<Session> live;  // null while parked
    bool busy = false;
    uint64_t last_used = 0;
    int64_t bytes = 0;        // counted in resident bytes while live
    int64_t position = 0;     // tokens, kept up to date at release (and read from the file)
    bool dirty = true;        // live state differs from its snapshot (or it has none)
    bool moving = false;      // being parked: its snapshot is written with the lock released
    uint64_t generation = 0;  // of the snapshot the live state came from or was written to
    std::string error;        // why the snapshot could not be restored
  };

  std::string path_of(const std::string& id) const;
  void fit_budget(std::unique_lock<std::mutex>& lock, int64_t incoming);
  bool park(std::unique_lock<std::mutex>& lock, const std::string& id, Entry& e);
  /// Writes the snapshot of a resident session with the lock released; false on failure (logged
  /// and counted).
  bool save(std::unique_lock<std::mutex>& lock, const std::string& id, Entry& e,
            std::string* why = nullptr);
  /// Drops a resident copy (it is restored from its snapshot when next used).
  void drop_live(Entry& e);
  /// --durable: the session's lease, taken with the lock released (the entry is busy); 409
  /// naming the owner after --lease-wait-ms.
  void take_lease(std::unique_lock<std::mutex>& lock, const std::string& id);
  void restore(std::unique_lock<std::mutex>& lock, const std::string& id, Entry& e,
               int64_t expected_bytes);
  /// The entry for `id` once no park of it is in flight; 404 when there is none.
  std::map<std::string, Entry>::iterator settled(std::unique_lock<std::mutex>& lock,
                                                 const std::string& id);
  void write_atomically(const std::string& path, const std::string& head, const std::string& bytes);
  std::string new_id();
  void account(const Entry& e, int sign);

  std::shared_ptr<const Model> model_;
  ServeOptions opt_;
  Metrics& metrics_;
  tconst::SessionOptions session_options_;
  std::unique_ptr<Leases> leases_;  // with --durable
  std::mutex mu_;
  std::condition_variable moved_;  // a park has ended
  std::map<std::string, Entry> sessions_;
  int64_t parking_bytes_ = 0;    // resident bytes of the sessions being parked
  int64_t restoring_bytes_ = 0;  // expected bytes of the sessions being restored
  uint64_t tick_ = 0;
  uint64_t id_counter_ = 0;
  uint64_t id_salt_ = 0;
  int64_t fresh_bytes_ = 0;  // a new session's bytes
};

// ---- Engine: the serving loop. ------------------------------------------------------------------

/// A token's log-probability under the raw distribution (the log-softmax of the logits, before
/// temperature, penalties and filters) and the likeliest tokens there.
struct TokenLogprob {
  bool known = false;                           // false where nothing predicts the token
  double logprob = 0.0;                         // of the token itself
  std::vector<std::pair<int32_t, double>> top;  // the likeliest (id, logprob), most likely first
};

/// `id`'s log-probability under `logits` and the `top_n` likeliest tokens (ties: lower id first).
TokenLogprob token_logprob(const tconst::Vector<float>& logits, int32_t id, int top_n);

/// One piece of a generation's output, as the HTTP side sends it.
struct Piece {
  std::vector<int32_t> ids;
  std::string text;                    // whole UTF-8 characters only
  std::vector<TokenLogprob> logprobs;  // one per id when the job asks for logprobs
  bool echo = false;                   // the prompt's tokens (echo), not generated ones
};

/// One generation: a prompt to consume, then tokens to sample until a stop. Made by the HTTP side,
/// run by the Engine, read back through take().
struct Job {
  Session* session = nullptr;
  std::vector<int32_t> prompt;
  tconst::GenerateOptions opt;                   // max_new_tokens, stop strings, sampler
  const tconst::Tokenizer* tokenizer = nullptr;  // for text and stop strings (may be null)
  int logprobs = -1;  // alternatives per position in the logprobs; -1: no logprobs
  bool echo = false;  // the prompt's tokens come first in the output (with logprobs if asked)
  std::atomic<bool> cancelled{false};

  /// Waits up to `wait_ms` for output; moves it into `out`. Returns true once the job has finished
  /// and everything was taken (finish_reason and error are then set).
  bool take(std::vector<Piece>& out, int wait_ms);
  /// Waits up to `wait_ms` until there is output to take or the job has finished.
  void wait_for_output(int wait_ms);
  /// Blocks until the job has finished (its session is no longer used by the engine).
  void wait_finished();

  std::string finish_reason;  // "stop", "length", "cancelled", "shutdown" or "error"
  std::string error;
  int64_t generated = 0;

 private:
  friend class Engine;
  enum class Phase { kPrefill, kReady, kHeavy, kDone };
  void emit(int32_t id, TokenLogprob lp);
  void emit_prompt(Session& s);
  void finish(const std::string& reason, const std::string& err = "");

  std::atomic<Phase> phase_{Phase::kPrefill};  // changed under the Engine's lock (or by finish)
  std::unique_ptr<tconst::Sampler<float>> sampler_;
  std::unique_ptr<tconst::StreamDecoder> decoder_;
  std::string tail_;  // the last bytes generated, for stop strings
  size_t longest_stop_ = 0;
  int32_t pending_ = -1;  // emitted, to be fed
  bool stop_after_feed_ = false;
  std::string stop_reason_;
  int64_t resyncs_before_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Piece> out_;
  bool finished_ = false;
};

class Engine {
 public:
  Engine(const ServeOptions& opt, Metrics& metrics);
  ~Engine();

  /// Queues the jobs (all or none). Throws HttpError 503 when the queue has no room for all of
  /// them or the server is stopping.
  void submit(const std::vector<std::shared_ptr<Job>>& jobs);
  /// Ends every job (in-flight ones with finish_reason "shutdown") and stops the threads.
  void shutdown();

 private:
  void worker();
  void side_worker();
  void start_job(Job& job);
  bool sample_next(Job& job);
  void after_feed(Job& job);
  void step(std::vector<std::shared_ptr<Job>>& fed);

  ServeOptions opt_;
  Metrics& metrics_;
  std::mutex mu_;
  std::condition_variable cv_;       // the worker waits here for work
  std::condition_variable side_cv_;  // the side thread waits here
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> active_;  // the worker's
  std::deque<std::shared_ptr<Job>> heavy_;    // prefills for the side thread
  std::deque<std::shared_ptr<Job>> resyncs_;  // steps due a resync, for the side thread (first)
  std::atomic<bool> stopping_{false};
  tconst::StreamBatch<float> batch_;
  std::vector<char> sampled_;  // [ready jobs] whether each drew a token this turn
  std::thread worker_, side_;
};

// ---- HTTP. --------------------------------------------------------------------------------------

struct ServerContext {
  ServeOptions opt;
  std::shared_ptr<const Model> model;
  std::string model_name;  // the id clients see: --alias, or the model file's name
  int64_t started = 0;     // Unix time the server started
  std::unique_ptr<tconst::Tokenizer> tokenizer;  // null when the model names none
  Metrics metrics;
  std::unique_ptr<SessionStore> store;
  std::unique_ptr<Engine> engine;
  std::atomic<bool> stopping{false};
};

/// Serves until stop_server() is called; `on_bound` gets the bound port before requests are
/// served. Returns false when the address cannot be bound.
bool run_http(ServerContext& ctx, const std::function<void(int port)>& on_bound);
void stop_http();

}  // namespace serve
}  // namespace tconst_cli
