#pragma once
// `tconst bench`: end-to-end per-token cost at given depths, for each architecture. Its flags
// (bench_options.cpp), its measurements (bench_run.cpp) and its tables and JSON (bench_report.cpp).

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "args.hpp"
#include "tconst/compute.hpp"
#include "tconst/model.hpp"

namespace tconst_cli {

/// The flags of `tconst bench` and its --help text.
const std::vector<Flag>& bench_flags();
std::string bench_usage();

/// The command line of `tconst bench`, checked.
struct BenchOptions {
  std::string model_path;          // --model; empty: the preset
  std::string preset;              // --preset: paper-41m or 1b
  std::vector<std::string> archs;  // the preset's architectures; {""} (the file's own) for --model
  uint64_t seed = 1;               // of the preset's random weights
  std::vector<std::string> weights = {"f32"};  // --weights: f32, bf16, q8 (SPEC §6.1), in turn
  std::vector<tconst::Compute> computes = {tconst::Compute::f32};  // --compute, in turn
  std::vector<int64_t> depths;
  int64_t n_gen = 64;
  int threads = 1;
  int64_t trace_steps = 0;
  std::string trace_out;  // empty: no trace file
  int64_t streams = 0;    // > 0: --streams S
  bool interleave = false;
  bool json = false;
};

/// Parses and checks the flags (UsageError on a bad one); --help is handled before.
BenchOptions parse_bench_options(int argc, char** argv);

/// The model to measure: the file, or the preset with `arch` ("" for the file), with its weight
/// matrices re-written in memory in `weights` ("f32": as they are; "bf16", "q8": SPEC §6.1 at the
/// default block size).
std::shared_ptr<const tconst::Model<float>> bench_model(const BenchOptions& o,
                                                        const std::string& arch,
                                                        const std::string& weights);

/// Baseline depths above this are filled with synthetic keys and values (a real prefill is
/// O(depth^2)); its per-token cost does not depend on the values.
constexpr int64_t kBaselineRealPrefillMax = 4096;

/// One (architecture, depth) run.
struct BenchResult {
  std::string arch;
  std::string weights = "f32";
  tconst::Compute compute = tconst::Compute::f32;
  int64_t depth = 0;
  int threads = 1;
  double prefill_ms = -1;  // time to first token: prefill of `depth` tokens; < 0: synthetic
  double hit_ms_median = 0;
  double resync_ms = -1;  // < 0: none (baseline)
  double amortized_ms_per_token = 0;
  size_t cache_bytes = 0;
  size_t peak_rss_bytes = 0;
  bool synthetic = false;
  std::vector<double> trace_ms;  // per step, when a trace was asked for
  std::vector<int> trace_resync;
};

// bench_run.cpp

/// Prefills `depth` tokens, then times each step of a span of exactly W tokens that starts with a
/// resync (TConstFormer, TLinFormer), or n-gen steps (baseline), in this process.
BenchResult bench_one(std::shared_ptr<const tconst::Model<float>> model, tconst::Compute compute,
                      int64_t depth, int64_t n_gen, int64_t trace_steps, int threads);
/// bench_one in a child process (built from nothing there), so that peak_rss_bytes is that run's
/// own.
BenchResult bench_in_child(const BenchOptions& o, const std::string& arch,
                           const std::string& weights, tconst::Compute compute, int64_t depth);
/// S streams stepped together against the same streams stepped one at a time.
nlohmann::json bench_streams(std::shared_ptr<const tconst::Model<float>> model,
                             tconst::Compute compute, int64_t depth, int64_t S, int64_t steps);
/// Cache-hit steps at several depths measured side by side, one session per depth.
nlohmann::json bench_interleaved(std::shared_ptr<const tconst::Model<float>> model,
                                 tconst::Compute compute, const std::vector<int64_t>& depths,
                                 int64_t n_gen, int threads);

// bench_report.cpp

/// The report's keys for one run.
nlohmann::json to_json(const BenchResult& r);
/// One line on stderr as each run of the table comes in.
void print_progress(const BenchResult& r);
/// The per-step CSV of --trace-out.
void write_trace(const std::string& path, const std::vector<BenchResult>& results);
void print_results(const std::vector<BenchResult>& results, bool json);
void print_streams(const nlohmann::json& rows, bool json);
void print_interleaved(const nlohmann::json& rows, bool json);

}  // namespace tconst_cli
