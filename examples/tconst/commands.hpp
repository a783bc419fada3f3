#pragma once
// The subcommands of the tconst program (one file each) and what they share.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "args.hpp"
#include "tconst/config.hpp"
#include "tconst/session.hpp"
#include "tconst/tokenizer/tokenizer.hpp"

namespace tconst_cli {

// Each returns the exit status; bad input throws (UsageError for the command line).
int cmd_info(const Args& args);        // info.cpp
int cmd_logits(const Args& args);      // logits.cpp
int cmd_generate(const Args& args);    // generate.cpp
int cmd_perplexity(const Args& args);  // perplexity.cpp
int cmd_tokenize(const Args& args);    // tokenize.cpp
int cmd_detokenize(const Args& args);  // tokenize.cpp
int cmd_serve(const Args& args);       // serve*.cpp (built when cpp-httplib is found)
int cmd_quantize(const Args& args);    // quantize.cpp
/// Parses its own flags (it has its own --help): bench.cpp.
int cmd_bench(int argc, char** argv);

/// The flags of `tconst serve` and the notes its --help ends with (serve.cpp).
std::vector<Flag> serve_flags();
extern const char* const kServeNotes;

/// OpenMP threads for what follows (a no-op in a build without OpenMP).
/// Threads when --threads is not given: the processors this process may run on (1 without
/// OpenMP).
int default_threads();
void set_thread_count(int threads);
/// --threads N (default 1): a cache-hit step is bound by memory bandwidth, which one core all but
/// saturates on common machines, and OpenMP threads that compete with other processes for cores
/// can make a step many times slower. More threads speed up the resync's matrix products.
void set_threads(const Args& args);

/// --compute f32|bf16|int8 (default f32), the flag of the commands that run a session (a function:
/// the command tables of other units are built from it during static initialisation).
Flag compute_flag();
/// The session options the command line gives (--compute); UsageError for a compute it does not
/// name, or a compute other than f32 with --precision double.
tconst::SessionOptions session_options(const Args& args);

/// All of standard input.
std::string read_stdin();

/// Ids on one line of standard output, separated by spaces.
void print_ids(const std::vector<int32_t>& ids);

/// The tokenizer for a model (`config`), or the one --tokenizer names when `config` is null.
std::unique_ptr<tconst::Tokenizer> tokenizer_for(const tconst::ModelConfig* config,
                                                 const Args& args);

/// Calls fn(Scalar{}) with the scalar type --precision names (float unless told).
template <typename Fn>
int with_precision(const Args& args, Fn&& fn) {
  const std::string p = args.str("precision", "float");
  if (p == "float") return std::forward<Fn>(fn)(float{});
  if (p == "double") return std::forward<Fn>(fn)(double{});
  throw UsageError("--precision must be float or double, got '" + p + "'");
}

}  // namespace tconst_cli
