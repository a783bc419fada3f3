// tconst bench: the measurements. One depth (in a child process, so that its peak RSS is its
// own), several depths side by side, and several streams stepped together.

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "bench.hpp"
#include "commands.hpp"
#include "tconst/batch.hpp"
#include "tconst/synthetic.hpp"
#include "tconst/tconst.hpp"
#include "tconst/transformer/session.hpp"

namespace tconst_cli {
namespace {

using Clock = std::chrono::steady_clock;
using SessionPtr = std::unique_ptr<tconst::Session<float>>;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

/// n pseudo-random ids in [0, vocab_size).
std::vector<int32_t> random_ids(tconst::Rng& rng, size_t n, int64_t vocab_size) {
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) {
    id = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab_size));
  }
  return ids;
}

/// Brings a fresh session to `depth` tokens (at least one); true when the history is synthetic.
bool prefill_to_depth(tconst::Session<float>& session, int64_t depth, tconst::Rng& rng) {
  const tconst::ModelConfig& c = session.model().config();
  if (c.is_baseline() && depth > kBaselineRealPrefillMax) {
    tconst::fill_synthetic_history(static_cast<tconst::TransformerSession<float>&>(session), depth,
                                   1);
    return true;
  }
  session.prefill(random_ids(rng, static_cast<size_t>(std::max<int64_t>(depth, 1)), c.vocab_size));
  return false;
}

// ---- one depth ------------------------------------------------------------------------------

/// Each step's time, and whether it ran a resync.
struct StepTimes {
  std::vector<double> ms;
  std::vector<int> resynced;
};

/// `steps` greedy steps from `token` on, each timed.
StepTimes time_steps(tconst::Session<float>& session, int32_t token, int64_t steps) {
  StepTimes t;
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t before = session.resync_count();
    const auto t0 = Clock::now();
    token = tconst::greedy_token(session.feed(token));
    t.ms.push_back(ms_since(t0));
    t.resynced.push_back(session.resync_count() != before);
  }
  return t;
}

/// The median cache-hit step, the resync's extra cost, and the mean step over exactly W
/// consecutive steps that include one resync (over every step for the baseline, W = 0).
void summarize(const StepTimes& t, int64_t W, BenchResult& r) {
  std::vector<double> hits, resyncs;
  for (size_t i = 0; i < t.ms.size(); ++i) (t.resynced[i] ? resyncs : hits).push_back(t.ms[i]);
  r.hit_ms_median = median(hits);
  if (W > 0) {
    r.resync_ms = resyncs.empty() ? 0.0 : median(resyncs) - r.hit_ms_median;
    // The first W steps from a resync on.
    size_t first = 0;
    while (first < t.resynced.size() && !t.resynced[first]) ++first;
    if (first + static_cast<size_t>(W) > t.ms.size()) first = 0;
    double sum = 0;
    for (int64_t i = 0; i < W; ++i) sum += t.ms[first + static_cast<size_t>(i)];
    r.amortized_ms_per_token = sum / static_cast<double>(W);
  } else {
    double sum = 0;
    for (double v : t.ms) sum += v;
    r.amortized_ms_per_token = sum / static_cast<double>(t.ms.size());
  }
}

size_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<size_t>(ru.ru_maxrss) * 1024;
}

}  // namespace

BenchResult bench_one(std::shared_ptr<const tconst::Model<float>> model, tconst::Compute compute,
                      int64_t depth, int64_t n_gen, int64_t trace_steps, int threads) {
  const tconst::ModelConfig& c = model->config();
  BenchResult r;
  r.arch = tconst::to_string(c.arch);
  r.depth = depth;
  r.threads = threads;
  r.compute = compute;
  tconst::SessionOptions so;
  so.compute = compute;
  auto session = tconst::make_session(model, so);
  tconst::Rng rng(12345);
  const auto t0 = std::chrono::steady_clock::now();
  r.synthetic = prefill_to_depth(*session, depth, rng);
  const std::chrono::duration<double, std::milli> prefill = std::chrono::steady_clock::now() - t0;
  if (!r.synthetic) r.prefill_ms = prefill.count();
  const int64_t W = c.is_baseline() ? 0 : c.generate_window;
  const int32_t first = random_ids(rng, 1, c.vocab_size)[0];
  const StepTimes t = time_steps(*session, first, std::max<int64_t>({n_gen, W, trace_steps}));
  summarize(t, W, r);
  r.cache_bytes = session->cache_bytes();
  r.peak_rss_bytes = peak_rss_bytes();
  if (trace_steps > 0) {
    r.trace_ms.assign(t.ms.begin(), t.ms.begin() + trace_steps);
    r.trace_resync.assign(t.resynced.begin(), t.resynced.begin() + trace_steps);
  }
  return r;
}

// ---- one depth in a child process -----------------------------------------------------------

namespace {

/// What the child sends back: the report's keys and what the parent also needs.
nlohmann::json child_report(const BenchResult& r) {
  nlohmann::json j = to_json(r);
  j["synthetic"] = r.synthetic;
  j["trace_ms"] = r.trace_ms;
  j["trace_resync"] = r.trace_resync;
  return j;
}

BenchResult from_child_report(const nlohmann::json& j) {
  BenchResult r;
  r.arch = j.at("arch").get<std::string>();
  r.weights = j.at("weights").get<std::string>();
  r.compute = tconst::parse_compute(j.at("compute").get<std::string>());
  r.depth = j.at("depth").get<int64_t>();
  r.threads = j.at("threads").get<int>();
  r.prefill_ms = j.at("prefill_ms").is_null() ? -1.0 : j.at("prefill_ms").get<double>();
  r.hit_ms_median = j.at("hit_ms_median").get<double>();
  r.resync_ms = j.at("resync_ms").is_null() ? -1.0 : j.at("resync_ms").get<double>();
  r.amortized_ms_per_token = j.at("amortized_ms_per_token").get<double>();
  r.cache_bytes = j.at("cache_bytes").get<size_t>();
  r.peak_rss_bytes = j.at("peak_rss_bytes").get<size_t>();
  r.synthetic = j.at("synthetic").get<bool>();
  r.trace_ms = j.at("trace_ms").get<std::vector<double>>();
  r.trace_resync = j.at("trace_resync").get<std::vector<int>>();
  return r;
}

void write_all(int fd, const std::string& text) {
  size_t off = 0;
  while (off < text.size()) {
    const ssize_t w = ::write(fd, text.data() + off, text.size() - off);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
}

std::string read_all(int fd) {
  std::string text;
  char buf[65536];
  ssize_t got;
  while ((got = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(got));
  return text;
}

/// The child's whole life: measure, write the report (or the error) as JSON, exit.
[[noreturn]] void child_main(int fd, const BenchOptions& o, const std::string& arch,
                             const std::string& weights, tconst::Compute compute, int64_t depth) {
  int code = 0;
  std::string out;
  try {
    set_thread_count(o.threads);
    BenchResult r =
        bench_one(bench_model(o, arch, weights), compute, depth, o.n_gen, o.trace_steps, o.threads);
    r.weights = weights;
    out = child_report(r).dump();
  } catch (const std::exception& e) {
    out = nlohmann::json{{"error", e.what()}}.dump();
    code = 1;
  }
  write_all(fd, out);
  ::close(fd);
  std::fflush(nullptr);
  ::_exit(code);
}

}  // namespace

BenchResult bench_in_child(const BenchOptions& o, const std::string& arch,
                           const std::string& weights, tconst::Compute compute, int64_t depth) {
  int fds[2];
  if (::pipe(fds) != 0) throw tconst::Error("bench: pipe failed");
  const pid_t pid = ::fork();
  if (pid < 0) throw tconst::Error("bench: fork failed");
  if (pid == 0) {
    ::close(fds[0]);
    child_main(fds[1], o, arch, weights, compute, depth);
  }
  ::close(fds[1]);
  const std::string text = read_all(fds[0]);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !WIFEXITED(status)) {
    throw tconst::Error("bench: the run at depth " + std::to_string(depth) + " crashed");
  }
  if (j.contains("error")) throw tconst::Error("bench: " + j["error"].get<std::string>());
  return from_child_report(j);
}

// ---- several streams stepped together -------------------------------------------------------

namespace {

/// S sessions of the model, each one token past the depth, so that the timed steps are all cache
/// hits (a resync of each stream would otherwise dominate both figures).
std::vector<std::unique_ptr<tconst::TConstSession<float>>> make_streams(
    const std::shared_ptr<const tconst::Model<float>>& model, tconst::Compute compute,
    int64_t depth, int64_t S) {
  tconst::SessionOptions so;
  so.compute = compute;
  tconst::Rng rng(12345);
  std::vector<std::unique_ptr<tconst::TConstSession<float>>> streams;
  for (int64_t i = 0; i < S; ++i) {
    streams.push_back(std::make_unique<tconst::TConstSession<float>>(model, so));
    streams.back()->prefill(
        random_ids(rng, static_cast<size_t>(depth + 1), model->config().vocab_size));
  }
  return streams;
}

/// Seconds of S streams stepped together and of their copies stepped one at a time.
struct RoundTimes {
  double batched = 0, single = 0;
  std::vector<double> ratio;  // per round, single / batched
};

// Rounds alternate: one step of the S streams together, then one step of each copy alone, so
// that the machine's drift (shared cores, clock) falls on both figures alike.
RoundTimes time_rounds(const std::vector<tconst::TConstSession<float>*>& sessions,
                       const std::vector<SessionPtr>& copies, int64_t steps) {
  tconst::StreamBatch<float> batch;
  std::vector<int32_t> tokens(sessions.size(), 1), solo = tokens;
  RoundTimes t;
  for (int64_t k = 0; k < steps; ++k) {
    const auto t0 = Clock::now();
    batch.feed(sessions, tokens);
    for (size_t i = 0; i < sessions.size(); ++i) {
      tokens[i] = tconst::greedy_token(sessions[i]->logits());
    }
    const auto t1 = Clock::now();
    for (size_t i = 0; i < copies.size(); ++i) {
      solo[i] = tconst::greedy_token(copies[i]->feed(solo[i]));
    }
    const auto t2 = Clock::now();
    const double b = std::chrono::duration<double>(t1 - t0).count();
    const double o = std::chrono::duration<double>(t2 - t1).count();
    t.batched += b;
    t.single += o;
    t.ratio.push_back(o / b);
  }
  return t;
}

}  // namespace

/// Throughput of S streams stepped together (one weight read per step for all of them) against
/// the same S streams stepped one after another, over `steps` tokens each from `depth`.
nlohmann::json bench_streams(std::shared_ptr<const tconst::Model<float>> model,
                             tconst::Compute compute, int64_t depth, int64_t S, int64_t steps) {
  const tconst::ModelConfig& c = model->config();
  if (c.is_baseline()) throw UsageError("--streams needs a tconstformer or tlinformer model");
  const auto own = make_streams(model, compute, depth, S);
  const int64_t W = c.generate_window;
  steps = std::min<int64_t>(steps, W - 1 - (depth + 1) % W);  // stay within the window
  if (steps < 1) throw UsageError("--streams: no cache-hit steps left in the window at this depth");
  std::vector<tconst::TConstSession<float>*> sessions;
  std::vector<SessionPtr> copies;
  for (const auto& s : own) {
    sessions.push_back(s.get());
    copies.push_back(s->copy());
  }
  const RoundTimes t = time_rounds(sessions, copies, steps);
  const double tokens_total = static_cast<double>(S * steps);
  return {{"arch", tconst::to_string(c.arch)},
          {"compute", tconst::to_string(compute)},
          {"depth", depth},
          {"streams", S},
          {"steps", steps},
          {"batched_tokens_per_s", tokens_total / t.batched},
          {"one_at_a_time_tokens_per_s", tokens_total / t.single},
          {"speedup", t.single / t.batched},
          {"speedup_median_round", median(t.ratio)}};
}

// ---- several depths side by side ------------------------------------------------------------

/// One session per depth, all sharing the model, stepped in turn (one token each per round), so
/// that every depth sees the same machine state. Reports each depth's median cache-hit step and
/// its ratio to the first depth's.
nlohmann::json bench_interleaved(std::shared_ptr<const tconst::Model<float>> model,
                                 tconst::Compute compute, const std::vector<int64_t>& depths,
                                 int64_t n_gen, int threads) {
  tconst::SessionOptions so;
  so.compute = compute;
  std::vector<SessionPtr> sessions;
  std::vector<bool> synthetic;
  tconst::Rng rng(12345);
  for (int64_t depth : depths) {
    sessions.push_back(tconst::make_session(model, so));
    synthetic.push_back(prefill_to_depth(*sessions.back(), depth, rng));
  }
  std::vector<std::vector<double>> hits(depths.size());
  std::vector<int32_t> tok(depths.size(), 1);
  for (int64_t k = 0; k < n_gen; ++k) {
    for (size_t i = 0; i < sessions.size(); ++i) {
      const int64_t before = sessions[i]->resync_count();
      const auto t0 = Clock::now();
      tok[i] = tconst::greedy_token(sessions[i]->feed(tok[i]));
      const double ms = ms_since(t0);
      if (sessions[i]->resync_count() == before) hits[i].push_back(ms);
    }
  }
  nlohmann::json rows = nlohmann::json::array();
  const double first = median(hits[0]);
  for (size_t i = 0; i < depths.size(); ++i) {
    const double m = median(hits[i]);
    rows.push_back({{"arch", tconst::to_string(model->config().arch)},
                    {"compute", tconst::to_string(compute)},
                    {"depth", depths[i]},
                    {"threads", threads},
                    {"hit_steps", hits[i].size()},
                    {"hit_ms_median", m},
                    {"ratio_to_first_depth", first > 0 ? m / first : 0.0},
                    {"synthetic", static_cast<bool>(synthetic[i])}});
  }
  return rows;
}

}  // namespace tconst_cli
