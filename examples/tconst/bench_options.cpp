// tconst bench: its flags, checked into a BenchOptions, and the model they name.

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "args.hpp"
#include "bench.hpp"
#include "commands.hpp"
#include "tconst/model/quantize.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/synthetic.hpp"
#include "tconst/tconst.hpp"

namespace tconst_cli {

const std::vector<Flag>& bench_flags() {
  static const std::vector<Flag> flags = {
      {"model", "FILE", "measure this model file (this or --preset is required)"},
      {"preset", "paper-41m|1b",
       "or random weights of the paper's 41M shape, or of a 1.3B shape (d 2048,\n"
       "16 heads of 128, f 5632, B 2, D 12, W = Hh = 512; this or --model is\nrequired)"},
      {"arch", "LIST",
       "comma-separated tconstformer,tlinformer,transformer (preset only;\n"
       "default all three)"},
      {"depths", "LIST",
       "comma-separated context lengths prefilled before timing\n"
       "(default 1024,4096,16384,65536)"},
      {"n-gen", "N", "steps timed after the prefill, at least W for windowed models (default 64)"},
      {"threads", "T", "OpenMP threads (default: the processors this process may run on)"},
      {"seed", "N", "seed of the preset's random weights (default 1)"},
      {"weights", "LIST",
       "comma-separated f32,bf16,q8: the weight matrices re-written in memory\n"
       "in each format (SPEC 6.1), each measured in turn (default f32)"},
      {"compute", "LIST",
       "comma-separated f32,bf16,int8: the sessions' compute (SPEC 6.3), each\n"
       "measured in turn beside the others (default f32)"},
      {"precision", "float", "bench runs in float only (default float)"},
      {"json", "", "one JSON report instead of tables"},
      {"trace-steps", "N", "record the first N steps' times (default 0: none)"},
      {"trace-out", "FILE",
       "write the traced steps there, CSV arch,weights,compute,depth,step,\nms,resync "
       "(default:\nno file)"},
      {"streams", "S",
       "instead: total tokens/s of S streams stepped together (weights read\n"
       "once per step) against the same streams one at a time (default: off)"},
      {"interleave", "",
       "instead: one session per depth in one process, stepped in turn for\n"
       "n-gen rounds; each depth's median hit step and its ratio to the first's"},
  };
  return flags;
}

std::string bench_usage() {
  return usage_text(
      "usage: tconst bench [--model FILE | --preset paper-41m|1b] [--arch LIST] [--depths LIST]\n"
      "                    [--n-gen N] [--threads T] [--seed N] [--weights LIST] [--compute LIST]\n"
      "                    [--json] [--trace-steps N --trace-out FILE] [--streams S | "
      "--interleave]\n"
      "per-token cost at each depth: cache-hit steps and the amortised resync",
      bench_flags());
}

namespace {

/// --model or --preset, and what may go with each.
void check_source(const Args& a) {
  if (a.has("model") == a.has("preset"))
    throw UsageError("give exactly one of --model or --preset");
  if (a.has("preset") && a.str("preset") != "paper-41m" && a.str("preset") != "1b") {
    throw UsageError("unknown preset '" + a.str("preset") + "' (known: paper-41m, 1b)");
  }
  if (a.str("precision", "float") != "float") throw UsageError("bench runs in float only");
  if (a.has("model") && (a.has("arch") || a.has("seed")))
    throw UsageError("--arch and --seed apply to --preset only (a model file has its own)");
}

/// The comma-separated items of `list` (flag --`flag`), each at most once.
std::vector<std::string> split_list(const std::string& list, const std::string& flag) {
  std::vector<std::string> out;
  size_t s = 0;
  while (s <= list.size()) {
    const size_t e = list.find(',', s);
    const std::string item = list.substr(s, e == std::string::npos ? std::string::npos : e - s);
    if (std::find(out.begin(), out.end(), item) != out.end()) {
      throw UsageError("--" + flag + " names '" + item + "' twice");
    }
    out.push_back(item);
    if (e == std::string::npos) break;
    s = e + 1;
  }
  return out;
}

/// --arch's comma-separated names, each checked.
std::vector<std::string> arch_list(const std::string& list) {
  const std::vector<std::string> archs = split_list(list, "arch");
  for (const std::string& name : archs) {
    try {
      tconst::parse_architecture(name);  // validates the name
    } catch (const tconst::Error& e) {
      throw UsageError(std::string("--arch: ") + e.what());
    }
  }
  return archs;
}

/// --weights' comma-separated formats, each checked.
std::vector<std::string> weight_list(const std::string& list) {
  const std::vector<std::string> formats = split_list(list, "weights");
  for (const std::string& w : formats) {
    if (w != "f32" && w != "bf16" && w != "q8") {
      throw UsageError("--weights takes f32, bf16 and q8, got '" + w + "'");
    }
  }
  return formats;
}

/// --compute's comma-separated computes, each checked.
std::vector<tconst::Compute> compute_list(const std::string& list) {
  std::vector<tconst::Compute> out;
  for (const std::string& name : split_list(list, "compute")) {
    try {
      out.push_back(tconst::parse_compute(name));
    } catch (const tconst::Error& err) {
      throw UsageError(std::string("--compute: ") + err.what());
    }
  }
  return out;
}

}  // namespace

BenchOptions parse_bench_options(int argc, char** argv) {
  const Args a("bench", argc, argv, bench_flags());
  check_source(a);
  BenchOptions o;
  o.model_path = a.str("model");
  o.preset = a.str("preset");
  o.depths = a.integer_list("depths", "1024,4096,16384,65536");
  o.n_gen = a.integer("n-gen", 64, 1, 1 << 20);
  o.threads = static_cast<int>(a.integer("threads", default_threads(), 1, 1024));
  o.trace_steps = a.integer("trace-steps", 0, 0, 1 << 20);
  o.trace_out = a.str("trace-out");
  o.json = a.flag("json");
  if (a.has("model")) {
    o.archs = {""};  // the file's own
  } else {
    o.archs = arch_list(a.str("arch", "tconstformer,tlinformer,transformer"));
  }
  o.weights = weight_list(a.str("weights", "f32"));
  o.computes = compute_list(a.str("compute", "f32"));
  o.seed = static_cast<uint64_t>(a.integer("seed", 1, 0, std::numeric_limits<int64_t>::max()));
  if (a.has("streams") && a.flag("interleave"))
    throw UsageError("give at most one of --streams and --interleave");
  if (a.has("streams")) o.streams = a.integer("streams", 8, 1, 1024);
  o.interleave = a.flag("interleave");
  return o;
}

std::shared_ptr<const tconst::Model<float>> bench_model(const BenchOptions& o,
                                                        const std::string& arch,
                                                        const std::string& weights) {
  tconst::SafetensorsFile file =
      arch.empty() ? tconst::SafetensorsFile::open(o.model_path)
                   : tconst::SafetensorsFile::from_bytes(
                         tconst::random_model_bytes(
                             o.preset == "1b" ? tconst::preset_1b(tconst::parse_architecture(arch))
                                              : tconst::paper_41m(tconst::parse_architecture(arch)),
                             o.seed),
                         o.preset + " " + arch);
  if (weights == "f32") return tconst::Model<float>::from_file(file);
  tconst::QuantizeOptions q;
  q.format = weights == "bf16" ? tconst::WeightFormat::bf16 : tconst::WeightFormat::q8;
  return tconst::Model<float>::load_from_bytes(tconst::quantize_model(file, q),
                                               file.label() + " " + weights);
}

}  // namespace tconst_cli
