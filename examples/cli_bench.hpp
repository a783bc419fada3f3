#pragma once
// `tconst bench`: end-to-end per-token cost at given depths, for each architecture.
//
// For every (architecture, depth) a child process builds the model, prefills `depth` tokens, then
// times each step of a span of exactly W tokens that starts with a resync (TConstFormer,
// TLinFormer), or n-gen steps (baseline). Separate processes make peak_rss_bytes that run's own.

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_args.hpp"
#include "tconst/tconst.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tconst_cli {

struct BenchResult {
  std::string arch;
  int64_t depth = 0;
  int threads = 1;
  double hit_ms_median = 0;
  double resync_ms = -1;  // < 0: none (baseline)
  double amortized_ms_per_token = 0;
  size_t cache_bytes = 0;
  size_t peak_rss_bytes = 0;
  bool synthetic = false;
  std::vector<double> trace_ms;  // per step, when a trace was asked for
  std::vector<int> trace_resync;
};

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Baseline depths above this are filled with synthetic keys and values (a real prefill is
/// O(depth^2)); its per-token cost does not depend on the values.
constexpr int64_t kBaselineRealPrefillMax = 4096;

inline BenchResult bench_one(std::shared_ptr<const tconst::Model<float>> model, int64_t depth,
                             int64_t n_gen, int64_t trace_steps, int threads) {
  using clock = std::chrono::steady_clock;
  const tconst::ModelConfig& c = model->config();
  BenchResult r;
  r.arch = tconst::to_string(c.arch);
  r.depth = depth;
  r.threads = threads;
  auto session = tconst::make_session(model);
  uint64_t x = 12345;
  auto next_id = [&]() {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int32_t>((x >> 33) % static_cast<uint64_t>(c.vocab_size));
  };
  if (c.is_baseline() && depth > kBaselineRealPrefillMax) {
    tconst::fill_synthetic_history(static_cast<tconst::TransformerSession<float>&>(*session), depth,
                                   1);
    r.synthetic = true;
  } else if (depth > 0) {
    std::vector<int32_t> prompt(static_cast<size_t>(depth));
    for (auto& t : prompt) t = next_id();
    session->prefill(prompt);
  } else {
    session->feed(next_id());
  }
  const int64_t W = c.is_baseline() ? 0 : c.generate_window;
  const int64_t steps = std::max<int64_t>({n_gen, W, trace_steps});
  std::vector<double> ms;
  std::vector<int> resynced;
  int32_t tok = next_id();
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t before = session->resync_count();
    const auto t0 = clock::now();
    tok = tconst::greedy_token(session->feed(tok));
    ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
    resynced.push_back(session->resync_count() != before);
  }
  std::vector<double> hits, resyncs;
  for (size_t i = 0; i < ms.size(); ++i) (resynced[i] ? resyncs : hits).push_back(ms[i]);
  r.hit_ms_median = median(hits);
  if (W > 0) {
    r.resync_ms = resyncs.empty() ? 0.0 : median(resyncs) - r.hit_ms_median;
    // Exactly W consecutive steps that include one resync: the first W steps from a resync on.
    size_t first = 0;
    while (first < resynced.size() && !resynced[first]) ++first;
    if (first + static_cast<size_t>(W) > ms.size()) first = 0;
    double sum = 0;
    for (int64_t i = 0; i < W; ++i) sum += ms[first + static_cast<size_t>(i)];
    r.amortized_ms_per_token = sum / static_cast<double>(W);
  } else {
    double sum = 0;
    for (double v : ms) sum += v;
    r.amortized_ms_per_token = sum / static_cast<double>(ms.size());
  }
  r.cache_bytes = session->cache_bytes();
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  r.peak_rss_bytes = static_cast<size_t>(ru.ru_maxrss) * 1024;
  if (trace_steps > 0) {
    r.trace_ms.assign(ms.begin(), ms.begin() + trace_steps);
    r.trace_resync.assign(resynced.begin(), resynced.begin() + trace_steps);
  }
  return r;
}

/// Throughput of S streams stepped together (one weight read per step for all of them) against
/// the same S streams stepped one after another, over `steps` tokens each from `depth`.
inline nlohmann::json bench_streams(std::shared_ptr<const tconst::Model<float>> model,
                                    int64_t depth, int64_t S, int64_t steps) {
  using clock = std::chrono::steady_clock;
  const tconst::ModelConfig& c = model->config();
  if (c.is_baseline()) throw UsageError("--streams needs a tconstformer or tlinformer model");
  std::vector<std::unique_ptr<tconst::TConstSession<float>>> own;
  std::vector<tconst::TConstSession<float>*> sessions;
  for (int64_t i = 0; i < S; ++i) {
    own.push_back(std::make_unique<tconst::TConstSession<float>>(model));
    // One token past the depth, so that the timed steps are all cache hits (a resync of each
    // stream would otherwise dominate both figures).
    std::vector<int32_t> prompt(static_cast<size_t>(depth + 1));
    for (size_t k = 0; k < prompt.size(); ++k) {
      prompt[k] = static_cast<int32_t>((k * 7919 + static_cast<size_t>(i) * 104729) %
                                       static_cast<size_t>(c.vocab_size));
    }
    own.back()->prefill(prompt);
    sessions.push_back(own.back().get());
  }
  const int64_t W = c.generate_window;
  steps = std::min<int64_t>(steps, W - 1 - (depth + 1) % W);  // stay within the window
  if (steps < 1) throw UsageError("--streams: no cache-hit steps left in the window at this depth");
  std::vector<std::unique_ptr<tconst::Session<float>>> copies;
  for (auto* s : sessions) copies.push_back(s->copy());
  tconst::StreamBatch<float> batch;
  std::vector<int32_t> tokens(static_cast<size_t>(S), 1), solo = tokens;
  // Rounds alternate: one step of the S streams together, then one step of each copy alone, so
  // that the machine's drift (shared cores, clock) falls on both figures alike.
  double batched = 0, single = 0;
  std::vector<double> round_ratio;
  for (int64_t k = 0; k < steps; ++k) {
    const auto t0 = clock::now();
    batch.feed(sessions, tokens);
    for (int64_t i = 0; i < S; ++i) {
      tokens[static_cast<size_t>(i)] =
          tconst::greedy_token(sessions[static_cast<size_t>(i)]->logits());
    }
    const auto t1 = clock::now();
    for (int64_t i = 0; i < S; ++i) {
      solo[static_cast<size_t>(i)] =
          tconst::greedy_token(copies[static_cast<size_t>(i)]->feed(solo[static_cast<size_t>(i)]));
    }
    const auto t2 = clock::now();
    const double b = std::chrono::duration<double>(t1 - t0).count();
    const double o = std::chrono::duration<double>(t2 - t1).count();
    batched += b;
    single += o;
    round_ratio.push_back(o / b);
  }
  const double tokens_total = static_cast<double>(S * steps);
  return {{"arch", tconst::to_string(c.arch)},
          {"depth", depth},
          {"streams", S},
          {"steps", steps},
          {"batched_tokens_per_s", tokens_total / batched},
          {"one_at_a_time_tokens_per_s", tokens_total / single},
          {"speedup", single / batched},
          {"speedup_median_round", median(round_ratio)}};
}

/// Cache-hit steps at several depths measured side by side: one session per depth, all sharing the
/// model, stepped in turn (one token each per round), so that every depth sees the same machine
/// state. Reports each depth's median cache-hit step and its ratio to the first depth's.
inline nlohmann::json bench_interleaved(std::shared_ptr<const tconst::Model<float>> model,
                                        const std::vector<int64_t>& depths, int64_t n_gen,
                                        int threads) {
  using clock = std::chrono::steady_clock;
  const tconst::ModelConfig& c = model->config();
  std::vector<std::unique_ptr<tconst::Session<float>>> sessions;
  std::vector<bool> synthetic;
  for (int64_t depth : depths) {
    sessions.push_back(tconst::make_session(model));
    synthetic.push_back(c.is_baseline() && depth > kBaselineRealPrefillMax);
    if (synthetic.back()) {
      tconst::fill_synthetic_history(
          static_cast<tconst::TransformerSession<float>&>(*sessions.back()), depth, 1);
    } else {
      std::vector<int32_t> prompt(static_cast<size_t>(std::max<int64_t>(depth, 1)));
      for (size_t k = 0; k < prompt.size(); ++k) {
        prompt[k] = static_cast<int32_t>((k * 7919 + 17) % static_cast<size_t>(c.vocab_size));
      }
      sessions.back()->prefill(prompt);
    }
  }
  std::vector<std::vector<double>> hits(depths.size());
  std::vector<int32_t> tok(depths.size(), 1);
  for (int64_t k = 0; k < n_gen; ++k) {
    for (size_t i = 0; i < sessions.size(); ++i) {
      const int64_t before = sessions[i]->resync_count();
      const auto t0 = clock::now();
      tok[i] = tconst::greedy_token(sessions[i]->feed(tok[i]));
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      if (sessions[i]->resync_count() == before) hits[i].push_back(ms);
    }
  }
  nlohmann::json arr = nlohmann::json::array();
  const double first = median(hits[0]);
  for (size_t i = 0; i < depths.size(); ++i) {
    const double m = median(hits[i]);
    arr.push_back({{"arch", tconst::to_string(c.arch)},
                   {"depth", depths[i]},
                   {"threads", threads},
                   {"hit_steps", hits[i].size()},
                   {"hit_ms_median", m},
                   {"ratio_to_first_depth", first > 0 ? m / first : 0.0},
                   {"synthetic", static_cast<bool>(synthetic[i])}});
  }
  return arr;
}

inline nlohmann::json to_json(const BenchResult& r) {
  nlohmann::json j = {{"arch", r.arch},
                      {"depth", r.depth},
                      {"threads", r.threads},
                      {"hit_ms_median", r.hit_ms_median},
                      {"resync_ms", nullptr},
                      {"amortized_ms_per_token", r.amortized_ms_per_token},
                      {"cache_bytes", r.cache_bytes},
                      {"peak_rss_bytes", r.peak_rss_bytes}};
  if (r.resync_ms >= 0) j["resync_ms"] = r.resync_ms;
  return j;
}

const char* const kBenchUsage =
    "usage: tconst bench [--model FILE | --preset paper-41m] [--arch LIST] [--depths LIST]\n"
    "                    [--n-gen N] [--threads T] [--seed N] [--json]\n"
    "                    [--trace-steps N --trace-out FILE] [--streams S | --interleave]\n"
    "  --arch    comma-separated: tconstformer,tlinformer,transformer (preset only)\n"
    "  --depths  comma-separated context lengths to prefill before timing (default\n"
    "            1024,4096,16384,65536)\n"
    "  --n-gen   steps timed after the prefill (at least W for the windowed architectures)\n"
    "  --seed    seed of the preset's random weights (default 1)\n"
    "  --trace-out FILE  per-step times (CSV: arch,depth,step,ms,resync) of the first N steps\n"
    "  --streams S  instead: total tokens/s of S streams stepped together (weights read once per\n"
    "            step) against the same streams stepped one at a time, over cache-hit steps\n"
    "  --interleave  instead: one session per depth in one process, stepped in turn for n-gen\n"
    "            rounds; each depth's median cache-hit step and its ratio to the first depth's\n";

inline int cmd_bench(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    if (std::string(argv[i]) == "--help") {
      std::fputs(kBenchUsage, stdout);
      return 0;
    }
  }
  Args a("bench", argc, argv,
         {"model", "preset", "arch", "depths", "n-gen", "threads", "trace-steps", "trace-out",
          "precision", "seed", "streams"},
         {"json", "interleave"});
  if (a.has("model") == a.has("preset"))
    throw UsageError("give exactly one of --model or --preset");
  if (a.has("preset") && a.str("preset") != "paper-41m") {
    throw UsageError("unknown preset '" + a.str("preset") + "' (known: paper-41m)");
  }
  if (a.str("precision", "float") != "float") throw UsageError("bench runs in float only");
  if (a.has("model") && (a.has("arch") || a.has("seed")))
    throw UsageError("--arch and --seed apply to --preset only (a model file has its own)");
  const auto depths = a.integer_list("depths", "1024,4096,16384,65536");
  const int64_t n_gen = a.integer("n-gen", 64, 1, 1 << 20);
  const int threads = static_cast<int>(a.integer("threads", 1, 1, 1024));
  const int64_t trace_steps = a.integer("trace-steps", 0, 0, 1 << 20);
  const bool json = a.flag("json");
  std::vector<std::string> archs;
  if (a.has("model")) {
    archs.push_back("");  // the file's own
  } else {
    const std::string list = a.str("arch", "tconstformer,tlinformer,transformer");
    size_t s = 0;
    while (s <= list.size()) {
      const size_t e = list.find(',', s);
      archs.push_back(list.substr(s, e == std::string::npos ? std::string::npos : e - s));
      tconst::parse_architecture(archs.back());  // validates the name
      if (e == std::string::npos) break;
      s = e + 1;
    }
  }

  const uint64_t seed =
      static_cast<uint64_t>(a.integer("seed", 1, 0, std::numeric_limits<int64_t>::max()));
  if (a.has("streams") && a.flag("interleave"))
    throw UsageError("give at most one of --streams and --interleave");
  auto make_model = [&](const std::string& arch) {
    return arch.empty() ? tconst::Model<float>::load(a.str("model"))
                        : tconst::Model<float>::load_from_bytes(
                              tconst::random_model_bytes(
                                  tconst::paper_41m(tconst::parse_architecture(arch)), seed),
                              "paper-41m " + arch);
  };

  // Said once the figures are in (an error stays the only line on stderr).
  auto note_kernel = []() {
    std::fprintf(stderr,
                 "tconst bench: few-row float kernel %s (TCONST_ISA=avx512|avx2|none caps it)\n",
                 tconst::detail::isa_name(tconst::detail::active_isa()));
  };
  if (a.has("streams")) {
    const int64_t S = a.integer("streams", 8, 1, 1024);
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    nlohmann::json arr = nlohmann::json::array();
    for (const std::string& arch : archs) {
      if (arch == "transformer") continue;
      auto model = make_model(arch);
      for (int64_t depth : depths) arr.push_back(bench_streams(model, depth, S, n_gen));
    }
    note_kernel();
    if (json) {
      std::printf("%s\n", arr.dump(2).c_str());
    } else {
      std::printf("%-13s %8s %8s %6s %14s %17s %8s %14s\n", "arch", "depth", "streams", "steps",
                  "batched tok/s", "one-by-one tok/s", "speedup", "median round");
      for (const auto& j : arr) {
        std::printf("%-13s %8lld %8lld %6lld %14.1f %17.1f %8.2f %14.2f\n",
                    j["arch"].get<std::string>().c_str(), (long long)j["depth"].get<int64_t>(),
                    (long long)j["streams"].get<int64_t>(), (long long)j["steps"].get<int64_t>(),
                    j["batched_tokens_per_s"].get<double>(),
                    j["one_at_a_time_tokens_per_s"].get<double>(), j["speedup"].get<double>(),
                    j["speedup_median_round"].get<double>());
      }
    }
    return 0;
  }
  if (a.flag("interleave")) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    nlohmann::json arr = nlohmann::json::array();
    for (const std::string& arch : archs) {
      for (const auto& j : bench_interleaved(make_model(arch), depths, n_gen, threads))
        arr.push_back(j);
    }
    note_kernel();
    if (json) {
      std::printf("%s\n", arr.dump(2).c_str());
    } else {
      std::printf("%-13s %8s %7s %9s %12s %14s\n", "arch", "depth", "threads", "hit steps",
                  "hit ms", "vs first depth");
      for (const auto& j : arr) {
        std::printf("%-13s %8lld %7d %9lld %12.3f %14.3f%s\n", j["arch"].get<std::string>().c_str(),
                    (long long)j["depth"].get<int64_t>(), j["threads"].get<int>(),
                    (long long)j["hit_steps"].get<int64_t>(), j["hit_ms_median"].get<double>(),
                    j["ratio_to_first_depth"].get<double>(),
                    j["synthetic"].get<bool>() ? "  *" : "");
      }
      for (const auto& j : arr) {
        if (j["synthetic"].get<bool>()) {
          std::printf("* synthetic key/value cache instead of a real O(depth^2) prefill\n");
          break;
        }
      }
    }
    return 0;
  }

  std::vector<BenchResult> results;
  for (const std::string& arch : archs) {
    for (int64_t depth : depths) {
      int fds[2];
      if (::pipe(fds) != 0) throw tconst::Error("bench: pipe failed");
      const pid_t pid = ::fork();
      if (pid < 0) throw tconst::Error("bench: fork failed");
      if (pid == 0) {
        ::close(fds[0]);
        int code = 0;
        std::string out;
        try {
#ifdef _OPENMP
          omp_set_num_threads(threads);
#endif
          auto model = make_model(arch);
          const BenchResult r = bench_one(model, depth, n_gen, trace_steps, threads);
          nlohmann::json j = to_json(r);
          j["synthetic"] = r.synthetic;
          j["trace_ms"] = r.trace_ms;
          j["trace_resync"] = r.trace_resync;
          out = j.dump();
        } catch (const std::exception& e) {
          out = nlohmann::json{{"error", e.what()}}.dump();
          code = 1;
        }
        size_t off = 0;
        while (off < out.size()) {
          const ssize_t w = ::write(fds[1], out.data() + off, out.size() - off);
          if (w <= 0) break;
          off += static_cast<size_t>(w);
        }
        ::close(fds[1]);
        std::fflush(nullptr);
        ::_exit(code);
      }
      ::close(fds[1]);
      std::string text;
      char buf[65536];
      ssize_t got;
      while ((got = ::read(fds[0], buf, sizeof buf)) > 0)
        text.append(buf, static_cast<size_t>(got));
      ::close(fds[0]);
      int status = 0;
      ::waitpid(pid, &status, 0);
      const auto j = nlohmann::json::parse(text, nullptr, false);
      if (j.is_discarded() || !WIFEXITED(status)) {
        throw tconst::Error("bench: the run at depth " + std::to_string(depth) + " crashed");
      }
      if (j.contains("error")) throw tconst::Error("bench: " + j["error"].get<std::string>());
      BenchResult r;
      r.arch = j["arch"];
      r.depth = j["depth"];
      r.threads = j["threads"];
      r.hit_ms_median = j["hit_ms_median"];
      r.resync_ms = j["resync_ms"].is_null() ? -1.0 : j["resync_ms"].get<double>();
      r.amortized_ms_per_token = j["amortized_ms_per_token"];
      r.cache_bytes = j["cache_bytes"];
      r.peak_rss_bytes = j["peak_rss_bytes"];
      r.synthetic = j["synthetic"];
      r.trace_ms = j["trace_ms"].get<std::vector<double>>();
      r.trace_resync = j["trace_resync"].get<std::vector<int>>();
      if (!json) {
        std::fprintf(stderr, "  %-12s depth %8lld  hit %.3f ms%s\n", r.arch.c_str(),
                     (long long)r.depth, r.hit_ms_median, r.synthetic ? "  (synthetic cache)" : "");
      }
      results.push_back(r);
    }
  }

  if (a.has("trace-out")) {
    std::ofstream t(a.str("trace-out"));
    if (!t) throw tconst::Error("cannot write '" + a.str("trace-out") + "'");
    t << "arch,depth,step,ms,resync\n";
    for (const auto& r : results) {
      for (size_t i = 0; i < r.trace_ms.size(); ++i) {
        t << r.arch << ',' << r.depth << ',' << i << ',' << r.trace_ms[i] << ','
          << r.trace_resync[i] << '\n';
      }
    }
  }
  bool any_synthetic = false;
  for (const auto& r : results) any_synthetic |= r.synthetic;
  note_kernel();
  if (json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& r : results) arr.push_back(to_json(r));
    std::printf("%s\n", arr.dump(2).c_str());
    if (any_synthetic) {
      std::fprintf(stderr,
                   "note: baseline depths above %lld use a synthetic key/value cache instead of a "
                   "real O(depth^2) prefill; per-token cost does not depend on the values\n",
                   (long long)kBaselineRealPrefillMax);
    }
    return 0;
  }
  std::printf("%-13s %8s %7s %12s %11s %14s %13s %13s\n", "arch", "depth", "threads", "hit ms",
              "resync ms", "amortized ms", "cache MB", "peak RSS MB");
  for (const auto& r : results) {
    char resync[32];
    if (r.resync_ms >= 0) {
      std::snprintf(resync, sizeof resync, "%.1f", r.resync_ms);
    } else {
      std::snprintf(resync, sizeof resync, "-");
    }
    std::printf("%-13s %8lld %7d %12.3f %11s %14.3f %13.2f %13.1f%s\n", r.arch.c_str(),
                (long long)r.depth, r.threads, r.hit_ms_median, resync, r.amortized_ms_per_token,
                r.cache_bytes / 1e6, r.peak_rss_bytes / 1e6, r.synthetic ? "  *" : "");
  }
  if (any_synthetic) {
    std::printf(
        "* synthetic key/value cache instead of a real O(depth^2) prefill; per-token cost "
        "does not depend on the values\n");
  }
  return 0;
}

}  // namespace tconst_cli
