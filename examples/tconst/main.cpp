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
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "tconst/version.hpp"

namespace {

using tconst_cli::Args;
using tconst_cli::Flag;
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
    "  perplexity  --model FILE (--text FILE | --ids FILE) [--segment L] [--per-token]\n"
    "  tokenize    (--model FILE | --tokenizer PATH)       UTF-8 text on stdin -> ids\n"
    "  detokenize  (--model FILE | --tokenizer PATH)       ids on stdin -> text\n"
    "  bench       [--model FILE | --preset paper-41m] [--arch LIST] [--depths LIST] ...\n"
    "  serve       (--model FILE | --preset paper-41m) [--host H] [--port P] [--max-active N]\n"
    "              [--session-dir DIR] [--max-resident-bytes B] ...   HTTP server, see README\n"
    "  quantize    --in FILE --out FILE --type bf16|q8 [--keep NAME]... [--block B]\n"
    "              weight matrices in BF16 or Q8 (SPEC 6.1), in a new file\n"
    "common flags: --precision float|double (default float), --threads N (default: the cores),\n"
    "              --tokenizer PATH (GPT-2 vocabulary files for gpt2 models)\n"
    "'tconst COMMAND --help' lists a command's flags, their meanings and their defaults.\n";

/// A subcommand: its usage lines, the flags it takes besides the common ones, what --help adds.
struct Command {
  const char* name;
  const char* synopsis;
  std::vector<Flag> flags;
  bool sets_threads;  // --threads is read before the command runs
  int (*run)(const Args&);
  const char* notes = "";
};

// Every command takes these (threads matter to the commands that compute).
const std::vector<Flag> kCommonFlags = {
    {"precision", "float|double", "compute in float or double (default float)"},
    {"threads", "N", "OpenMP threads (default: the processors this process may run on)"},
    {"tokenizer", "PATH",
     "GPT-2 vocabulary files, or 'bytes' (default: the tokenizer the model\nfile names or "
     "carries)"},
};

const Flag kModelFlag = {"model", "FILE", "the model file (safetensors; required)"};

const Command kCommands[] = {
    {"info",
     "usage: tconst info --model FILE [--json] [--tensors]\n"
     "architecture, sizes, cache bytes, tensor formats and file bytes of a model file",
     {kModelFlag,
      {"json", "", "one JSON object instead of text"},
      {"tensors", "", "list each tensor (name, dtype, shape, bytes)"}},
     false,
     tconst_cli::cmd_info},
    {"logits",
     "usage: tconst logits --model FILE --ids FILE --out FILE\n"
     "feeds the ids one at a time and appends each position's V logits (float32, little-endian)",
     {kModelFlag,
      {"ids", "FILE", "whitespace-separated decimal token ids (required)"},
      {"out", "FILE", "where the logits go (required; overwritten)"},
      tconst_cli::compute_flag()},
     true,
     tconst_cli::cmd_logits},
    {"generate",
     "usage: tconst generate --model FILE (--ids FILE | --prompt TEXT) [--max-new N] [--greedy]\n"
     "                       [sampling flags] [--stop TEXT]... [--print-ids]\n"
     "consumes the prompt, then generates up to N tokens, printed as text while they come",
     {kModelFlag,
      {"ids", "FILE",
       "the prompt as token ids, whitespace-separated (this or --prompt is\nrequired)"},
      {"prompt", "TEXT",
       "the prompt as text, through the model's tokenizer (or --ids; required\nwithout "
       "--load-session)"},
      {"max-new", "N", "tokens to generate (default 128)"},
      {"greedy", "", "take the most likely token each step (default: sample)"},
      {"temperature", "T", "sampling temperature; 0 is greedy (default 0.8)"},
      {"top-k", "K", "keep the K most likely tokens; 0 keeps all (default 0)"},
      {"top-p", "P",
       "keep the smallest set of likeliest tokens whose probability reaches P\n"
       "(default 0.95; `tconst serve`'s top_p defaults to 1.0)"},
      {"min-p", "P", "drop tokens below P times the likeliest's probability (default 0: off)"},
      {"repeat-penalty", "R", "penalise tokens already in the stream; 1 is off (default 1)"},
      {"seed", "S", "seed of the sampler's random numbers (default 0)"},
      {"stop", "TEXT", "stop once the output contains TEXT (repeatable; default none)"},
      {"stop-id", "ID", "stop after generating token ID (repeatable; default none)"},
      {"print-ids", "", "print the generated ids on one line at the end instead of text"},
      {"quiet", "", "no status line on standard error (default: shown on a terminal)"},
      {"save-session", "FILE",
       "write the session's snapshot to FILE at the end (default: not saved)"},
      {"load-session", "FILE",
       "continue the session in FILE; the prompt is then optional (default: a\nnew session)"},
      tconst_cli::compute_flag()},
     true,
     tconst_cli::cmd_generate},
    {"perplexity",
     "usage: tconst perplexity --model FILE (--text FILE | --ids FILE) [--segment L]\n"
     "mean negative log-likelihood of every token after the first, perplexity, bits per byte",
     {kModelFlag,
      {"text", "FILE",
       "the text to score, through the model's tokenizer (this or --ids is\nrequired)"},
      {"ids", "FILE", "or the token ids to score (this or --text is required)"},
      {"segment", "L",
       "score pieces of L + 1 tokens overlapping by one, each from its own\n"
       "context only (default 0: the whole text in one stream)"},
      {"quiet", "", "no progress bar (default: shown on a terminal)"},
      {"per-token", "",
       "instead of the report, a line per predicted token: its position, id,\n"
       "log-probability and the most likely id there"},
      tconst_cli::compute_flag()},
     true,
     tconst_cli::cmd_perplexity},
    {"tokenize",
     "usage: tconst tokenize (--model FILE | --tokenizer PATH) < text\n"
     "UTF-8 text on standard input; its token ids on standard output",
     {{"model", "FILE",
       "the tokenizer this model file names or carries (this or --tokenizer\nis required)"}},
     false,
     tconst_cli::cmd_tokenize},
    {"detokenize",
     "usage: tconst detokenize (--model FILE | --tokenizer PATH) < ids\n"
     "token ids on standard input; their text on standard output",
     {{"model", "FILE",
       "the tokenizer this model file names or carries (this or --tokenizer\nis required)"}},
     false,
     tconst_cli::cmd_detokenize},
#ifdef TCONST_HAVE_SERVE
    {"serve",
     "usage: tconst serve (--model FILE | --preset paper-41m) [--host H] [--port P] ...\n"
     "an HTTP server speaking the completions API, with sessions that park on disk (README)",
     tconst_cli::serve_flags(), false, tconst_cli::cmd_serve, tconst_cli::kServeNotes},
#endif
    {"quantize",
     "usage: tconst quantize --in FILE --out FILE --type bf16|q8 [--keep NAME]... [--block B]\n"
     "a model file re-written with its weight matrices in BF16 or Q8 (SPEC 6.1)",
     {{"in", "FILE", "the float model file (required)"},
      {"out", "FILE", "the file to write (required; written whole or not at all)"},
      {"type", "bf16|q8", "the weight format (required)"},
      {"keep", "NAME", "leave the matrix NAME as it is (repeatable; default none)"},
      {"block", "B", "Q8 block size along a row, a power of two in [16, 256] (default 32)"}},
     false,
     tconst_cli::cmd_quantize},
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
    std::vector<Flag> flags = cmd.flags;
    flags.insert(flags.end(), kCommonFlags.begin(), kCommonFlags.end());
    if (tconst_cli::asks_for_help(argc - 2, argv + 2, flags)) {
      std::fputs(tconst_cli::usage_text(cmd.synopsis, flags, cmd.notes).c_str(), stdout);
      return 0;
    }
    const Args args(name, argc - 2, argv + 2, flags);
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
