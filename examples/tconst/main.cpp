// tconst: the command-line program (SPEC §7 and beyond).
//
//   tconst info       --model FILE [--json] [--tensors]
//   tconst logits     --model FILE --ids FILE --out FILE
//   tconst generate   --model FILE (--ids FILE | --prompt TEXT) [--max-new N] [--greedy] ...
//   tconst perplexity --model FILE (--text FILE | --ids FILE)
//   tconst tokenize   (--model FILE | --tokenizer PATH)      text on stdin, ids on stdout
//   tconst detokenize (--model FILE | --tokenizer PATH)      ids on stdin, text on stdout
//   tconst bench      ...                                      see `tconst bench --help`
//   tconst serve      --model FILE [--port P] ...               the HTTP server (serve.cpp)
//   tconst quantize   --in FILE --out FILE --type bf16|q8 [--keep NAME]... [--block B]
//
// Any bad input gives one line on standard error and a non-zero exit status: 1 for bad data
// (model, ids, files), 2 for a bad command line.

#include <cstdio>
#include <new>
#include <set>
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "tconst/version.hpp"

namespace {

using tconst_cli::Args;
using tconst_cli::UsageError;

const char* const kUsage =
    "usage: tconst <command> [flags]\n"
    "commands:\n"
    "  info        --model FILE [--json] [--tensors]      architecture, sizes, cache bytes,\n"
    "              tensor formats and file bytes (--tensors: each tensor)\n"
    "  logits      --model FILE --ids FILE --out FILE      per-token logits, float32 LE\n"
    "  generate    --model FILE (--ids FILE | --prompt TEXT) [--max-new N] [--greedy]\n"
    "              [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R]\n"
    "              [--seed S] [--stop TEXT]... [--stop-id ID]... [--print-ids] [--quiet]\n"
    "              [--save-session FILE] [--load-session FILE]\n"
    "  perplexity  --model FILE (--text FILE | --ids FILE) [--segment L] [--quiet]\n"
    "  tokenize    (--model FILE | --tokenizer PATH)       UTF-8 text on stdin -> ids\n"
    "  detokenize  (--model FILE | --tokenizer PATH)       ids on stdin -> text\n"
    "  bench       [--model FILE | --preset paper-41m] [--arch LIST] [--depths LIST] ...\n"
    "  serve       (--model FILE | --preset paper-41m) [--host H] [--port P] [--max-active N]\n"
    "              [--session-dir DIR] [--max-resident-bytes B] ...   HTTP server, see README\n"
    "  quantize    --in FILE --out FILE --type bf16|q8 [--keep NAME]... [--block B]\n"
    "              weight matrices in BF16 or Q8 (SPEC 6.1), in a new file\n"
    "common flags: --precision float|double (default float), --threads N (default: the cores),\n"
    "              --tokenizer PATH (GPT-2 vocabulary files for gpt2 models)\n";

/// A subcommand and the flags it takes besides the common ones (--precision, --threads,
/// --tokenizer).
struct Command {
  const char* name;
  std::set<std::string> valued;
  std::set<std::string> switches;
  bool sets_threads;  // --threads is read before the command runs
  int (*run)(const Args&);
};

const Command kCommands[] = {
    {"info", {"model"}, {"json", "tensors"}, false, tconst_cli::cmd_info},
    {"logits", {"model", "ids", "out"}, {}, true, tconst_cli::cmd_logits},
    {"generate",
     {"model", "ids", "prompt", "max-new", "temperature", "top-k", "top-p", "min-p",
      "repeat-penalty", "seed", "stop", "stop-id", "save-session", "load-session"},
     {"greedy", "print-ids", "quiet"},
     true,
     tconst_cli::cmd_generate},
    {"perplexity",
     {"model", "text", "ids", "segment"},
     {"quiet"},
     true,
     tconst_cli::cmd_perplexity},
    {"tokenize", {"model"}, {}, false, tconst_cli::cmd_tokenize},
    {"detokenize", {"model"}, {}, false, tconst_cli::cmd_detokenize},
#ifdef TCONST_HAVE_SERVE
    {"serve",
     {"model", "preset", "host", "port", "side-threads", "max-active", "max-queue", "session-dir",
      "max-resident-bytes", "max-context", "max-sessions", "max-body-bytes"},
     {"quiet"},
     false,
     tconst_cli::cmd_serve},
#endif
    {"quantize", {"in", "out", "type", "keep", "block"}, {}, false, tconst_cli::cmd_quantize},
};

int run(int argc, char** argv) {
  if (argc < 2) throw UsageError("missing command (try 'tconst --help')");
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (name == "--version") {
    std::printf("tconst %s\n", tconst::kVersion);
    return 0;
  }
  if (name == "bench") return tconst_cli::cmd_bench(argc - 2, argv + 2);
  for (const Command& cmd : kCommands) {
    if (name != cmd.name) continue;
    std::set<std::string> valued = cmd.valued;
    valued.insert({"precision", "threads", "tokenizer"});
    const Args args(name, argc - 2, argv + 2, valued, cmd.switches);
    if (cmd.sets_threads) tconst_cli::set_threads(args);
    return cmd.run(args);
  }
  throw UsageError("unknown command '" + name + "' (try 'tconst --help')");
}

std::string one_line(std::string s) {
  for (char& ch : s) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "tconst: %s\n", one_line(e.what()).c_str());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "tconst: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tconst: %s\n", one_line(e.what()).c_str());
    return 1;
  }
}
