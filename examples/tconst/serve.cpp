// tconst serve: a streaming HTTP server that keeps every conversation in fixed memory.
//
//   tconst serve (--model FILE | --preset paper-41m) [--host 127.0.0.1] [--port 8080] [--threads T]
//                [--max-active N] [--max-queue N] [--session-dir DIR] [--max-resident-bytes B]
//                [--durable [--replica-id ID] [--lease-ms MS] [--lease-wait-ms MS]]
//                [--max-context N] [--quiet]
//
// Prints "listening on http://HOST:PORT" on standard output once it accepts connections (with
// --port 0 the port is a free one). SIGINT or SIGTERM stop it gracefully: running generations end
// with a final event, and every resident session is parked in --session-dir, where the next start
// finds it.
//
// The model is read into memory once and used from there, so replacing or deleting the file while
// the server runs changes nothing.

#include "serve.hpp"

#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "commands.hpp"
#include "tconst/synthetic.hpp"

namespace tconst_cli {
namespace serve {

int open_streams();  // serve_http.cpp: streams still sending

const double Metrics::kBounds[Metrics::kBuckets] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                                    0.05,   0.1,   0.2,   0.5,   1.0,  2.0};

void Metrics::observe_step(double seconds) {
  int b = 0;
  while (b < kBuckets && seconds > kBounds[b]) ++b;
  ++step_bucket[b];
  ++step_count;
  step_sum_ns += static_cast<int64_t>(std::llround(seconds * 1e9));
}

std::string Metrics::prometheus() const {
  std::ostringstream o;
  const auto gauge = [&](const char* name, const char* help, int64_t v, const char* type) {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n'
      << name << ' ' << v << '\n';
  };
  gauge("tconst_generations_active", "Generations being stepped (prefilling or generating).",
        active, "gauge");
  gauge("tconst_queue_length", "Generations waiting for a place.", queued, "gauge");
  gauge("tconst_sessions_resident", "Named sessions held in memory.", resident_sessions, "gauge");
  gauge("tconst_sessions_parked", "Named sessions parked as snapshot files.", parked_sessions,
        "gauge");
  gauge("tconst_resident_cache_bytes",
        "Bytes of cache and token log held by resident named sessions.", resident_bytes, "gauge");
  gauge("tconst_completion_session_bytes",
        "Bytes held by the private sessions of running /v1/completions requests.", ephemeral_bytes,
        "gauge");
  gauge("tconst_tokens_generated_total", "Tokens generated.", tokens_generated, "counter");
  gauge("tconst_prompt_tokens_total", "Prompt tokens consumed.", prompt_tokens, "counter");
  gauge("tconst_resyncs_total", "Resyncs run.", resyncs, "counter");
  gauge("tconst_requests_total", "Completions accepted (one per prompt of a list).", requests,
        "counter");
  gauge("tconst_requests_rejected_total", "Completion requests refused with 503 (queue full).",
        rejected, "counter");
  gauge("tconst_generations_cancelled_total", "Generations cancelled by their client.", cancelled,
        "counter");
  gauge("tconst_session_parks_total", "Sessions parked to disk.", parks, "counter");
  gauge("tconst_session_restores_total", "Sessions restored from disk.", restores, "counter");
  gauge("tconst_snapshot_write_failures_total",
        "Snapshot writes that failed (the session stayed resident).", park_failures, "counter");
  gauge("tconst_snapshot_restore_failures_total", "Snapshots that could not be restored.",
        restore_failures, "counter");
  gauge("tconst_stale_copies_total",
        "Resident sessions dropped because another replica wrote a newer generation.", stale_copies,
        "counter");
  gauge("tconst_lease_conflicts_total",
        "Requests refused with 409: the session stayed leased by another replica.", lease_conflicts,
        "counter");
  gauge("tconst_snapshot_writes_total", "Snapshots written (parks and --durable writes).", writes,
        "counter");
  o << "# HELP tconst_snapshot_write_seconds_total Time spent writing snapshots.\n"
    << "# TYPE tconst_snapshot_write_seconds_total counter\n"
    << "tconst_snapshot_write_seconds_total " << static_cast<double>(write_ns) * 1e-9 << '\n'
    << "# HELP tconst_snapshot_restore_seconds_total Time spent restoring snapshots.\n"
    << "# TYPE tconst_snapshot_restore_seconds_total counter\n"
    << "tconst_snapshot_restore_seconds_total " << static_cast<double>(restore_ns) * 1e-9 << '\n';
  o << "# HELP tconst_step_seconds Latency of one joint step of all generating sessions.\n"
    << "# TYPE tconst_step_seconds histogram\n";
  int64_t cumulative = 0;
  for (int b = 0; b < kBuckets; ++b) {
    cumulative += step_bucket[b];
    o << "tconst_step_seconds_bucket{le=\"" << kBounds[b] << "\"} " << cumulative << '\n';
  }
  cumulative += step_bucket[kBuckets];
  o << "tconst_step_seconds_bucket{le=\"+Inf\"} " << cumulative << '\n'
    << "tconst_step_seconds_sum " << static_cast<double>(step_sum_ns) * 1e-9 << '\n'
    << "tconst_step_seconds_count " << step_count << '\n';
  return o.str();
}

void log_line(const std::string& line) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "tconst serve: %s\n", line.c_str());
  std::fflush(stderr);
}

namespace {

ServeOptions options_from(const Args& args) {
  ServeOptions o;
  o.host = args.str("host", "127.0.0.1");
  o.port = static_cast<int>(args.integer("port", 8080, 0, 65535));
  o.backlog = static_cast<int>(args.integer("backlog", 512, 1, 65535));
  o.threads = static_cast<int>(args.integer("threads", default_threads(), 1, 1024));
  o.side_threads = static_cast<int>(args.integer("side-threads", o.threads, 1, 1024));
  o.max_active = static_cast<int>(args.integer("max-active", 64, 1, 4096));
  o.max_queue = static_cast<int>(args.integer("max-queue", 64, 0, 4096));
  o.session_dir = args.str("session-dir");
  o.durable = args.flag("durable");
  if (o.durable && o.session_dir.empty()) throw UsageError("--durable needs --session-dir");
  o.replica_id = args.str("replica-id");
  for (const char ch : o.replica_id) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '-' && ch != '_' &&
        ch != ':') {
      throw UsageError("--replica-id takes letters, digits and . - _ : only");
    }
  }
  o.lease_ms = args.integer("lease-ms", 10000, 100, int64_t{1} << 31);
  o.lease_wait_ms = args.integer("lease-wait-ms", 15000, 0, int64_t{1} << 31);
  o.max_resident_bytes = args.integer("max-resident-bytes", int64_t{1} << 32, 0, int64_t{1} << 50);
  o.max_context = args.integer("max-context", int64_t{1} << 20, 1, int64_t{1} << 30);
  o.max_sessions = args.integer("max-sessions", 100000, 1, int64_t{1} << 30);
  o.max_body_bytes =
      static_cast<size_t>(args.integer("max-body-bytes", 1 << 20, 1024, int64_t{1} << 30));
  o.quiet = args.flag("quiet");
  o.compute = session_options(args).compute;
  if (args.has("model") == args.has("preset")) {
    throw UsageError("give --model FILE or --preset paper-41m");
  }
  return o;
}

// A private copy of the model: the file is read once and may change or vanish afterwards.
std::shared_ptr<const Model> load_model(const Args& args, std::string* name) {
  if (args.has("preset")) {
    const std::string preset = args.str("preset");
    if (preset != "paper-41m") throw UsageError("--preset must be paper-41m, got '" + preset + "'");
    *name = "paper-41m-synthetic";
    const auto config = tconst::paper_41m(tconst::Architecture::kTConstFormer);
    return Model::load_from_bytes(tconst::random_model_bytes(config, 41), *name);
  }
  const std::string path = args.required("model");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw tconst::Error("cannot open model file '" + path + "'");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  if (in.bad()) throw tconst::Error("cannot read model file '" + path + "'");
  const size_t slash = path.find_last_of('/');
  *name = slash == std::string::npos ? path : path.substr(slash + 1);
  return Model::load_from_bytes(std::move(bytes), path);
}

// Waits for SIGINT or SIGTERM (blocked in every thread, so only this one sees them), then stops
// the server in order: no new requests; running generations end with a final event; their
// streams drain; the listener closes.
void stop_on_signal(ServerContext& ctx, sigset_t signals) {
  int sig = 0;
  sigwait(&signals, &sig);
  if (sig == SIGUSR1) return;  // the server ended on its own
  log_line(std::string("stopping on ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
  ctx.stopping = true;
  ctx.engine->shutdown();
  for (int i = 0; i < 500 && open_streams() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop_http();
}

}  // namespace
}  // namespace serve

std::vector<Flag> serve_flags() {
  return {
      {"model", "FILE",
       "the model file, read into memory at start (this or --preset is\nrequired)"},
      compute_flag(),
      {"preset", "paper-41m",
       "or random weights of the paper's 41M shape, for load tests (this or\n--model is required)"},
      {"alias", "NAME", "the model's id in replies and /v1/models (default: the file's name)"},
      {"host", "H", "address to listen on (default 127.0.0.1)"},
      {"port", "P", "port to listen on; 0 picks a free one (default 8080)"},
      {"backlog", "N",
       "connections the kernel queues before the server accepts them (default\n512; the "
       "system's net.core.somaxconn caps it)"},
      {"side-threads", "N", "OpenMP threads of prefills and resyncs (default: --threads)"},
      {"max-active", "N", "generations stepped together (default 64)"},
      {"max-queue", "N", "generations waiting beyond those; then 503 (default 64)"},
      {"session-dir", "DIR", "where idle sessions are parked (default none: never parked)"},
      {"durable", "",
       "write a session's snapshot after each of its requests, before the reply\n"
       "ends, so that a crash loses no completed turn; replicas may then share\n"
       "--session-dir (default: at park)"},
      {"replica-id", "ID",
       "this replica's name in session leases, unique among live replicas\n"
       "(default HOST:PID:START-MS:PIDNS)"},
      {"lease-ms", "MS",
       "--durable: a session's lease lasts this long, renewed while a request\n"
       "runs; a dead replica's lease is taken over after it (default 10000)"},
      {"lease-wait-ms", "MS",
       "--durable: a request waits this long for a session leased by another\n"
       "replica, then gets 409 naming it (default 15000)"},
      {"max-resident-bytes", "B",
       "bytes of named sessions held in memory; beyond, the least recently\n"
       "used idle ones are parked (default 4294967296)"},
      {"max-context", "N", "tokens a session may hold (default 1048576)"},
      {"max-sessions", "N", "named sessions, resident or parked (default 100000)"},
      {"max-body-bytes", "B", "largest request body; beyond, 413 (default 1048576)"},
      {"quiet", "", "no request log on standard error"},
  };
}

const char* const kServeNotes =
    "request defaults (the completions API): max_tokens 16, temperature 1.0, top_p 1.0,\n"
    "top_k 0 (off), min_p 0 (off), repeat_penalty 1.0 (off), seed 0. `tconst generate`'s\n"
    "defaults differ (temperature 0.8, top-p 0.95): pass the same settings to compare.\n";

int cmd_serve(const Args& args) {
  using namespace serve;
  // Sessions come and go (parked, restored, private to one request): with glibc's default, a freed
  // cache raises the threshold above which blocks are mapped, the next caches come from the heap
  // and freed ones stay in the process. A fixed threshold maps every cache-sized block, so freeing
  // a session returns its memory and the resident budget bounds the process's memory.
#ifdef M_MMAP_THRESHOLD
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
  ServerContext ctx;
  ctx.opt = options_from(args);
  ctx.model = load_model(args, &ctx.model_name);
  // Converted for --compute now (kept with the model), not on the first request.
  tconst::Model<float>::for_compute(ctx.model, ctx.opt.compute);
  if (args.has("alias")) {
    ctx.model_name = args.str("alias");
    if (ctx.model_name.empty()) throw UsageError("--alias must not be empty");
  }
  ctx.started = static_cast<int64_t>(std::time(nullptr));
  try {
    ctx.tokenizer = tokenizer_for(&ctx.model->config(), args);
  } catch (const tconst::Error& e) {
    log_line(std::string("no tokenizer (prompts must be token ids): ") + e.what());
  }
  ctx.store = std::make_unique<SessionStore>(ctx.model, ctx.opt, ctx.metrics);
  const size_t found = ctx.store->scan();

  // SIGINT/SIGTERM go to the signal thread only; SIGPIPE (a client gone) and SIGXFSZ (a file
  // size limit) become errors of the write that met them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGXFSZ, SIG_IGN);

  ctx.engine = std::make_unique<Engine>(ctx.opt, ctx.metrics);
  std::thread stopper([&] { stop_on_signal(ctx, signals); });
  const bool ok = run_http(ctx, [&](int port) {
    std::printf("listening on http://%s:%d\n", ctx.opt.host.c_str(), port);
    std::fflush(stdout);
    log_line("model " + ctx.model_name + ", " + std::to_string(found) + " parked sessions found, " +
             std::to_string(ctx.opt.threads) + " threads");
  });
  if (!ctx.stopping) {
    ctx.stopping = true;
    ::kill(::getpid(), SIGUSR1);  // wakes the signal thread
  }
  stopper.join();
  ctx.engine->shutdown();
  const int failed = ctx.store->park_all();
  if (failed > 0) log_line(std::to_string(failed) + " sessions could not be parked");
  if (!ok) {
    throw tconst::Error("cannot listen on " + ctx.opt.host + ":" + std::to_string(ctx.opt.port));
  }
  log_line("stopped");
  return failed > 0 ? 1 : 0;
}

}  // namespace tconst_cli
