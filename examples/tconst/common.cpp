// What several subcommands share: threads, standard input, printing ids, picking a tokenizer.

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "commands.hpp"
#include "tconst/tconst.hpp"
#include "tconst/tokenizer/embedded.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tconst_cli {

void set_thread_count(int threads) {
#ifdef _OPENMP
  omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

int default_threads() {
#ifdef _OPENMP
  // The processors this process may run on: a cache-hit step splits its products and attention
  // over them (on a 2-core machine 2 threads take about half the time of one), and so does a
  // resync.
  return std::max(1, std::min(1024, omp_get_num_procs()));
#else
  return 1;
#endif
}

void set_threads(const Args& args) {
  set_thread_count(static_cast<int>(args.integer("threads", default_threads(), 1, 1024)));
}

Flag compute_flag() {
  return {"compute", "f32|bf16|int8",
          "arithmetic of the weight products: f32 exact, bf16 or int8 on the\n"
          "CPU's faster dot instructions (default f32; README \"Compute\")"};
}

tconst::SessionOptions session_options(const Args& args) {
  tconst::SessionOptions o;
  try {
    o.compute = tconst::parse_compute(args.str("compute", "f32"));
  } catch (const tconst::Error& e) {
    throw UsageError(std::string("--compute: ") + e.what());
  }
  if (o.compute != tconst::Compute::f32 && args.str("precision", "float") != "float") {
    throw UsageError(std::string("--compute ") + tconst::to_string(o.compute) +
                     " needs --precision float");
  }
  return o;
}

std::string read_stdin() {
  std::ostringstream ss;
  ss << std::cin.rdbuf();
  return ss.str();
}

void print_ids(const std::vector<int32_t>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
  std::printf("\n");
}

std::unique_ptr<tconst::Tokenizer> tokenizer_for(const tconst::ModelConfig* config,
                                                 const Args& args) {
  const std::string path = args.str("tokenizer");
  if (config == nullptr) {
    if (path.empty()) throw UsageError("give --model FILE or --tokenizer PATH");
    if (path == "bytes") return tconst::make_tokenizer_by_name("bytes");
    return tconst::load_tokenizer(path);
  }
  const std::string& name = config->tokenizer;
  std::unique_ptr<tconst::Tokenizer> tok;
  // A model file that carries its tokenizer (SPEC §6.2) needs no --tokenizer; one given wins.
  if (path.empty() && args.has("model")) tok = tconst::embedded_tokenizer(args.str("model"));
  if (tok == nullptr && name.empty()) {
    // Files without tconst.tokenizer: bytes when the vocabulary is bytes, else GPT-2 when given.
    if (!path.empty()) return tconst::load_tokenizer(path);
    if (config->vocab_size == 256) return tconst::make_tokenizer_by_name("bytes");
    throw tconst::Error("the model names no tokenizer; pass --tokenizer PATH");
  }
  if (tok == nullptr) tok = tconst::make_tokenizer(name, path);
  if (tok->vocab_size() > config->vocab_size) {
    throw tconst::Error("tokenizer has " + std::to_string(tok->vocab_size()) +
                        " tokens but the model's vocabulary is " +
                        std::to_string(config->vocab_size));
  }
  return tok;
}

}  // namespace tconst_cli
