// tconst bench: what it prints. A table for people, or JSON (--json) for scripts; notes on stderr.

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bench.hpp"
#include "tconst/error.hpp"

namespace tconst_cli {

nlohmann::json to_json(const BenchResult& r) {
  nlohmann::json j = {{"arch", r.arch},
                      {"weights", r.weights},
                      {"compute", tconst::to_string(r.compute)},
                      {"depth", r.depth},
                      {"threads", r.threads},
                      {"prefill_ms", nullptr},
                      {"hit_ms_median", r.hit_ms_median},
                      {"resync_ms", nullptr},
                      {"amortized_ms_per_token", r.amortized_ms_per_token},
                      {"cache_bytes", r.cache_bytes},
                      {"peak_rss_bytes", r.peak_rss_bytes}};
  if (r.prefill_ms >= 0) j["prefill_ms"] = r.prefill_ms;
  if (r.resync_ms >= 0) j["resync_ms"] = r.resync_ms;
  return j;
}

void print_progress(const BenchResult& r) {
  std::fprintf(stderr, "  %-12s %-4s %-4s depth %8lld  hit %.3f ms%s\n", r.arch.c_str(),
               r.weights.c_str(), tconst::to_string(r.compute), (long long)r.depth, r.hit_ms_median,
               r.synthetic ? "  (synthetic cache)" : "");
}

void write_trace(const std::string& path, const std::vector<BenchResult>& results) {
  std::ofstream t(path);
  if (!t) throw tconst::Error("cannot write '" + path + "'");
  t << "arch,weights,compute,depth,step,ms,resync\n";
  for (const auto& r : results) {
    for (size_t i = 0; i < r.trace_ms.size(); ++i) {
      t << r.arch << ',' << r.weights << ',' << tconst::to_string(r.compute) << ',' << r.depth
        << ',' << i << ',' << r.trace_ms[i] << ',' << r.trace_resync[i] << '\n';
    }
  }
}

namespace {

void print_results_table(const std::vector<BenchResult>& results) {
  std::printf("%-13s %-7s %-7s %8s %7s %12s %12s %11s %14s %13s %13s\n", "arch", "weights",
              "compute", "depth", "threads", "prefill ms", "hit ms", "resync ms", "amortized ms",
              "cache MB", "peak RSS MB");
  auto figure = [](double ms) {
    if (ms < 0) return std::string("-");
    char text[32];
    std::snprintf(text, sizeof text, "%.1f", ms);
    return std::string(text);
  };
  for (const auto& r : results) {
    std::printf("%-13s %-7s %-7s %8lld %7d %12s %12.3f %11s %14.3f %13.2f %13.1f%s\n",
                r.arch.c_str(), r.weights.c_str(), tconst::to_string(r.compute), (long long)r.depth,
                r.threads, figure(r.prefill_ms).c_str(), r.hit_ms_median,
                figure(r.resync_ms).c_str(), r.amortized_ms_per_token, r.cache_bytes / 1e6,
                r.peak_rss_bytes / 1e6, r.synthetic ? "  *" : "");
  }
}

}  // namespace

void print_results(const std::vector<BenchResult>& results, bool json) {
  bool any_synthetic = false;
  for (const auto& r : results) any_synthetic |= r.synthetic;
  if (json) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : results) rows.push_back(to_json(r));
    std::printf("%s\n", rows.dump(2).c_str());
    if (any_synthetic) {
      std::fprintf(stderr,
                   "note: baseline depths above %lld use a synthetic key/value cache instead of a "
                   "real O(depth^2) prefill; per-token cost does not depend on the values\n",
                   (long long)kBaselineRealPrefillMax);
    }
    return;
  }
  print_results_table(results);
  if (any_synthetic) {
    std::printf(
        "* synthetic key/value cache instead of a real O(depth^2) prefill; per-token cost "
        "does not depend on the values\n");
  }
}

void print_streams(const nlohmann::json& rows, bool json) {
  if (json) {
    std::printf("%s\n", rows.dump(2).c_str());
    return;
  }
  std::printf("%-13s %-7s %-7s %8s %8s %6s %14s %17s %8s %14s\n", "arch", "weights", "compute",
              "depth", "streams", "steps", "batched tok/s", "one-by-one tok/s", "speedup",
              "median round");
  for (const auto& j : rows) {
    std::printf("%-13s %-7s %-7s %8lld %8lld %6lld %14.1f %17.1f %8.2f %14.2f\n",
                j["arch"].get<std::string>().c_str(), j.value("weights", "f32").c_str(),
                j.value("compute", "f32").c_str(), (long long)j["depth"].get<int64_t>(),
                (long long)j["streams"].get<int64_t>(), (long long)j["steps"].get<int64_t>(),
                j["batched_tokens_per_s"].get<double>(),
                j["one_at_a_time_tokens_per_s"].get<double>(), j["speedup"].get<double>(),
                j["speedup_median_round"].get<double>());
  }
}

void print_interleaved(const nlohmann::json& rows, bool json) {
  if (json) {
    std::printf("%s\n", rows.dump(2).c_str());
    return;
  }
  std::printf("%-13s %-7s %-7s %8s %7s %9s %12s %14s\n", "arch", "weights", "compute", "depth",
              "threads", "hit steps", "hit ms", "vs first depth");
  bool any_synthetic = false;
  for (const auto& j : rows) {
    std::printf("%-13s %-7s %-7s %8lld %7d %9lld %12.3f %14.3f%s\n",
                j["arch"].get<std::string>().c_str(), j.value("weights", "f32").c_str(),
                j.value("compute", "f32").c_str(), (long long)j["depth"].get<int64_t>(),
                j["threads"].get<int>(), (long long)j["hit_steps"].get<int64_t>(),
                j["hit_ms_median"].get<double>(), j["ratio_to_first_depth"].get<double>(),
                j["synthetic"].get<bool>() ? "  *" : "");
    any_synthetic |= j["synthetic"].get<bool>();
  }
  if (any_synthetic) {
    std::printf("* synthetic key/value cache instead of a real O(depth^2) prefill\n");
  }
}

}  // namespace tconst_cli
