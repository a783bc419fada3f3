// tconst bench: one of three measurements, chosen by the flags, then its report.
//
// By default, for every (architecture, depth) a child process builds the model, prefills `depth`
// tokens, then times each step of a span of exactly W tokens that starts with a resync
// (TConstFormer, TLinFormer), or n-gen steps (baseline). Separate processes make peak_rss_bytes
// that run's own. --streams and --interleave measure in this process instead.

#include "bench.hpp"

#include <cstdio>
#include <string>
#include <vector>

#include "commands.hpp"
#include "tconst/cpu.hpp"

namespace tconst_cli {
namespace {

int run_streams(const BenchOptions& o) {
  set_thread_count(o.threads);
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string& arch : o.archs) {
    if (arch == "transformer") continue;
    for (const std::string& weights : o.weights) {
      auto model = bench_model(o, arch, weights);
      for (int64_t depth : o.depths) {
        for (tconst::Compute compute : o.computes) {
          rows.push_back(bench_streams(model, compute, depth, o.streams, o.n_gen));
          rows.back()["weights"] = weights;
        }
      }
    }
  }
  print_streams(rows, o.json);
  return 0;
}

int run_interleaved(const BenchOptions& o) {
  set_thread_count(o.threads);
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string& arch : o.archs) {
    for (const std::string& weights : o.weights) {
      auto model = bench_model(o, arch, weights);
      for (tconst::Compute compute : o.computes) {
        for (auto& row : bench_interleaved(model, compute, o.depths, o.n_gen, o.threads)) {
          row["weights"] = weights;
          rows.push_back(row);
        }
      }
    }
  }
  print_interleaved(rows, o.json);
  return 0;
}

int run_depths(const BenchOptions& o) {
  std::vector<BenchResult> results;
  // Each depth's weight formats and computes one after another, so that they are measured side
  // by side.
  for (const std::string& arch : o.archs) {
    for (int64_t depth : o.depths) {
      for (const std::string& weights : o.weights) {
        for (tconst::Compute compute : o.computes) {
          results.push_back(bench_in_child(o, arch, weights, compute, depth));
          if (!o.json) print_progress(results.back());
        }
      }
    }
  }
  if (!o.trace_out.empty()) write_trace(o.trace_out, results);
  print_results(results, o.json);
  return 0;
}

// Said once the figures are in (an error stays the only line on stderr).
void note_kernels() {
  std::fprintf(stderr, "tconst bench: float kernels %s (TCONST_ISA=avx512|avx2|none caps them)\n",
               tconst::vector_kernels());
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  if (asks_for_help(argc, argv, bench_flags())) {
    std::fputs(bench_usage().c_str(), stdout);
    return 0;
  }
  const BenchOptions o = parse_bench_options(argc, argv);
  const int status = o.streams > 0  ? run_streams(o)
                     : o.interleave ? run_interleaved(o)
                                    : run_depths(o);
  note_kernels();
  return status;
}

}  // namespace tconst_cli
