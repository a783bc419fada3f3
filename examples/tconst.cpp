// tconst: the command-line program (SPEC §7 and beyond).
//
//   tconst info       --model FILE [--json]
//   tconst logits     --model FILE --ids FILE --out FILE
//   tconst generate   --model FILE (--ids FILE | --prompt TEXT) [--max-new N] [--greedy] ...
//   tconst perplexity --model FILE (--text FILE | --ids FILE)
//   tconst tokenize   (--model FILE | --tokenizer PATH)      text on stdin, ids on stdout
//   tconst detokenize (--model FILE | --tokenizer PATH)      ids on stdin, text on stdout
//   tconst bench      ...                                      see `tconst bench --help`
//
// Any bad input gives one line on standard error and a non-zero exit status: 1 for bad data
// (model, ids, files), 2 for a bad command line.

#include "tconst/tconst.hpp"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli_args.hpp"
#include "cli_bench.hpp"
#include "tconst/generate.hpp"
#include "tconst/sampling.hpp"
#include "tconst/tokenizer/tokenizer.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using tconst_cli::Args;
using tconst_cli::UsageError;

const char* const kUsage =
    "usage: tconst <command> [flags]\n"
    "commands:\n"
    "  info        --model FILE [--json]                  architecture, sizes, cache bytes\n"
    "  logits      --model FILE --ids FILE --out FILE      per-token logits, float32 LE\n"
    "  generate    --model FILE (--ids FILE | --prompt TEXT) [--max-new N] [--greedy]\n"
    "              [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R]\n"
    "              [--seed S] [--stop TEXT]... [--stop-id ID]... [--print-ids] [--quiet]\n"
    "              [--save-session FILE] [--load-session FILE]\n"
    "  perplexity  --model FILE (--text FILE | --ids FILE) [--segment L] [--quiet]\n"
    "  tokenize    (--model FILE | --tokenizer PATH)       UTF-8 text on stdin -> ids\n"
    "  detokenize  (--model FILE | --tokenizer PATH)       ids on stdin -> text\n"
    "  bench       [--model FILE | --preset paper-41m] [--arch LIST] [--depths LIST] ...\n"
    "common flags: --precision float|double (default float), --threads N (default 1),\n"
    "              --tokenizer PATH (GPT-2 vocabulary files for gpt2 models)\n";

// One thread unless asked: a cache-hit step is bound by memory bandwidth, which one core all but
// saturates on common machines, and OpenMP threads that compete with other processes for cores
// can make a step many times slower. More threads speed up the resync's matrix products.
void set_threads(const Args& args) {
  const int64_t threads = args.integer("threads", 1, 1, 1024);
#ifdef _OPENMP
  omp_set_num_threads(static_cast<int>(threads));
#else
  (void)threads;
#endif
}

std::string read_stdin() {
  std::ostringstream ss;
  ss << std::cin.rdbuf();
  return ss.str();
}

std::unique_ptr<tconst::Tokenizer> tokenizer_for(const tconst::ModelConfig* config,
                                                 const Args& args) {
  const std::string path = args.str("tokenizer");
  if (config == nullptr) {
    if (path.empty()) throw UsageError("give --model FILE or --tokenizer PATH");
    if (path == "bytes") return tconst::make_tokenizer_by_name("bytes");
    return tconst::load_tokenizer(path);
  }
  std::string name = config->tokenizer;
  if (name.empty()) {
    // Files without tconst.tokenizer: bytes when the vocabulary is bytes, else GPT-2 when given.
    if (!path.empty()) return tconst::load_tokenizer(path);
    if (config->vocab_size == 256) return tconst::make_tokenizer_by_name("bytes");
    throw tconst::Error("the model names no tokenizer; pass --tokenizer PATH");
  }
  auto tok = tconst::make_tokenizer(name, path);
  if (tok->vocab_size() > config->vocab_size) {
    throw tconst::Error("tokenizer has " + std::to_string(tok->vocab_size()) +
                        " tokens but the model's vocabulary is " +
                        std::to_string(config->vocab_size));
  }
  return tok;
}

// ---------------------------------------------------------------------------------------------
// Commands, templated on the compute precision.

template <typename Scalar>
int cmd_info(const Args& args) {
  const std::string path = args.required("model");
  auto model = tconst::Model<Scalar>::load(path);
  const tconst::ModelConfig& c = model->config();
  const size_t fixed_bytes = static_cast<size_t>(c.fixed_cache_scalars()) * sizeof(Scalar);
  if (args.flag("json")) {
    std::printf(
        "{\"architecture\": \"%s\", \"vocab_size\": %lld, \"n_embd\": %lld, \"n_head\": %lld, "
        "\"n_block\": %lld, \"block_inner_depth\": %lld, \"history_window\": %lld, "
        "\"generate_window\": %lld, \"ffn_hidden\": %lld, \"tied_head\": %s, "
        "\"parameters\": %lld, \"fixed_cache_bytes\": %zu, \"tokenizer\": \"%s\"}\n",
        tconst::to_string(c.arch), (long long)c.vocab_size, (long long)c.n_embd,
        (long long)c.n_head, (long long)c.n_block, (long long)c.inner_depth,
        (long long)c.history_window, (long long)c.generate_window, (long long)c.ffn_hidden,
        c.tied_head ? "true" : "false", (long long)model->parameter_count(), fixed_bytes,
        c.tokenizer.c_str());
    return 0;
  }
  std::printf("model            %s\n", path.c_str());
  std::printf("architecture     %s\n", tconst::to_string(c.arch));
  std::printf("vocab_size       %lld\n", (long long)c.vocab_size);
  std::printf("n_embd           %lld (%lld heads of %lld)\n", (long long)c.n_embd,
              (long long)c.n_head, (long long)c.head_dim());
  if (c.is_baseline()) {
    std::printf("layers           %lld\n", (long long)c.n_block);
  } else {
    std::printf("blocks           %lld x inner depth %lld = %lld layers\n", (long long)c.n_block,
                (long long)c.inner_depth, (long long)c.total_layers());
    std::printf("generate_window  %lld (resync every %lld tokens)\n", (long long)c.generate_window,
                (long long)c.generate_window);
    std::printf("history_window   %lld\n", (long long)c.history_window);
  }
  std::printf("ffn_hidden       %lld\n", (long long)c.ffn_hidden);
  std::printf("head             %s\n", c.tied_head ? "tied to the embedding" : "separate");
  std::printf("rope_base        %g\nnorm_eps         %g\n", c.rope_base, c.norm_eps);
  std::printf("tokenizer        %s\n", c.tokenizer.empty() ? "(none named)" : c.tokenizer.c_str());
  std::printf("parameters       %lld\n", (long long)model->parameter_count());
  if (c.is_baseline()) {
    std::printf("kv cache         grows: %lld bytes per token (%s)\n",
                (long long)(2 * c.n_embd * c.n_block * (int64_t)sizeof(Scalar)),
                sizeof(Scalar) == 4 ? "float" : "double");
  } else {
    std::printf("fixed cache      %zu bytes (%s)%s\n", fixed_bytes,
                sizeof(Scalar) == 4 ? "float" : "double",
                c.arch == tconst::Architecture::kTLinFormer
                    ? ", plus a context cache that grows with the stream"
                    : "");
  }
  return 0;
}

template <typename Scalar>
int cmd_logits(const Args& args) {
  auto model = tconst::Model<Scalar>::load(args.required("model"));
  const auto ids = tconst::read_ids_file(args.required("ids"), model->config().vocab_size);
  const std::string out_path = args.required("out");
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  if (!out) throw tconst::Error("cannot open '" + out_path + "' for writing");
  auto session = tconst::make_session(model);
  std::vector<float> row(static_cast<size_t>(model->config().vocab_size));
  for (int32_t id : ids) {
    const auto& logits = session->feed(id);
    for (size_t i = 0; i < row.size(); ++i) row[i] = static_cast<float>(logits[(Eigen::Index)i]);
    // The file format is little-endian float32; this program targets little-endian hosts.
    out.write(reinterpret_cast<const char*>(row.data()),
              static_cast<std::streamsize>(row.size() * sizeof(float)));
  }
  out.flush();
  if (!out) throw tconst::Error("failed writing '" + out_path + "'");
  return 0;
}

tconst::SamplerConfig sampler_from(const Args& args) {
  tconst::SamplerConfig s;
  s.greedy = args.flag("greedy");
  s.temperature = static_cast<float>(args.number("temperature", 0.8, 0.0, 100.0));
  s.top_k = static_cast<int>(args.integer("top-k", 0, 0, 1 << 30));
  s.top_p = static_cast<float>(args.number("top-p", 0.95, 1e-6, 1.0));
  s.min_p = static_cast<float>(args.number("min-p", 0.0, 0.0, 0.999999));
  s.repetition_penalty = static_cast<float>(args.number("repeat-penalty", 1.0, 1e-3, 100.0));
  s.seed = static_cast<uint64_t>(args.integer("seed", 0, 0, std::numeric_limits<int64_t>::max()));
  s.validate();
  return s;
}

// A status line on stderr, redrawn in place, only when stderr is a terminal.
class StatusLine {
 public:
  explicit StatusLine(bool enabled) : enabled_(enabled && ::isatty(2)) {}
  template <typename Scalar>
  void update(const tconst::Session<Scalar>& s, int64_t generated, double seconds) {
    if (!enabled_) return;
    const double rate = seconds > 0 ? generated / seconds : 0.0;
    std::fprintf(stderr, "\r\033[K[pos %lld | %.1f tok/s | resyncs %lld | cache %.2f MB]",
                 (long long)s.position(), rate, (long long)s.resync_count(), s.cache_bytes() / 1e6);
    std::fflush(stderr);
  }
  void clear() {
    if (enabled_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  bool enabled_;
};

template <typename Scalar>
int cmd_generate(const Args& args) {
  // Flags first: a bad flag is reported before any file is read.
  const tconst::SamplerConfig sampler = sampler_from(args);
  auto model = tconst::Model<Scalar>::load(args.required("model"));
  const tconst::ModelConfig& c = model->config();
  const bool print_ids = args.flag("print-ids");
  const bool quiet = args.flag("quiet");
  const int64_t max_new = args.integer("max-new", 128, 0, int64_t{1} << 40);
  if (args.has("ids") && args.has("prompt")) throw UsageError("give --ids or --prompt, not both");

  std::unique_ptr<tconst::Tokenizer> tok;
  const bool need_tokenizer = !print_ids || args.has("prompt") || args.has("stop");
  if (need_tokenizer) tok = tokenizer_for(&c, args);

  std::vector<int32_t> prompt;
  if (args.has("ids")) prompt = tconst::read_ids_file(args.str("ids"), c.vocab_size);
  if (args.has("prompt")) prompt = tok->encode(args.str("prompt"));

  auto session = tconst::make_session(model);
  if (args.has("load-session")) {
    tconst::load_session(*session, args.str("load-session"));
  }
  if (prompt.empty() && session->position() == 0) {
    throw UsageError("nothing to continue from: give a non-empty --ids or --prompt");
  }

  tconst::GenerateOptions opt;
  opt.max_new_tokens = max_new;
  opt.sampler = sampler;
  for (const std::string& s : args.all("stop")) opt.stop_strings.push_back(s);
  for (const std::string& s : args.all("stop-id")) {
    const auto one = tconst::parse_ids(s, c.vocab_size);
    if (one.size() != 1) throw UsageError("--stop-id needs one token id, got '" + s + "'");
    opt.stop_ids.push_back(one[0]);
  }

  std::unique_ptr<tconst::StreamDecoder> text;
  if (!print_ids) {
    text = std::make_unique<tconst::StreamDecoder>(*tok);
    // Echo the prompt so the continuation reads in context.
    std::string shown = text->push(prompt);
    std::fwrite(shown.data(), 1, shown.size(), stdout);
    std::fflush(stdout);
  }
  StatusLine status(!quiet);
  std::vector<int32_t> generated;
  const auto t0 = std::chrono::steady_clock::now();
  auto on_token = [&](int32_t id) {
    generated.push_back(id);
    if (text) {
      const std::string piece = text->push(id);
      status.clear();
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    status.update(*session, static_cast<int64_t>(generated.size()), sec);
    return true;
  };
  const tconst::GenerateStats stats = tconst::generate(*session, prompt, opt, on_token, tok.get());
  status.clear();
  if (text) {
    const std::string rest = text->flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::fputc('\n', stdout);
  } else {
    for (size_t i = 0; i < generated.size(); ++i) {
      std::printf(i ? " %d" : "%d", generated[i]);
    }
    std::printf("\n");
  }
  std::fflush(stdout);
  if (args.has("save-session")) tconst::save_session(*session, args.str("save-session"));
  if (!quiet && !print_ids) {
    std::fprintf(stderr,
                 "[%lld prompt tokens in %.3f s, %lld generated in %.3f s (%.1f tok/s), %s]\n",
                 (long long)stats.prompt_tokens, stats.prefill_seconds, (long long)stats.generated,
                 stats.generate_seconds,
                 stats.generate_seconds > 0 ? stats.generated / stats.generate_seconds : 0.0,
                 stats.stop_reason.c_str());
  }
  return 0;
}

template <typename Scalar>
int cmd_perplexity(const Args& args) {
  auto model = tconst::Model<Scalar>::load(args.required("model"));
  const tconst::ModelConfig& c = model->config();
  if (args.has("text") == args.has("ids")) throw UsageError("give exactly one of --text or --ids");
  std::vector<int32_t> ids;
  std::unique_ptr<tconst::Tokenizer> tok;
  if (args.has("text")) {
    tok = tokenizer_for(&c, args);
    ids = tok->encode(tconst::read_file(args.str("text")));
  } else {
    ids = tconst::read_ids_file(args.str("ids"), c.vocab_size);
    if (!c.tokenizer.empty() && (c.tokenizer == "bytes" || args.has("tokenizer"))) {
      tok = tokenizer_for(&c, args);
    }
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= c.vocab_size)
      throw tconst::Error("tokenizer produced an id outside the model's vocabulary");
  }
  if (ids.size() < 2) throw tconst::Error("perplexity needs at least two tokens");

  auto session = tconst::make_session(model);
  const bool progress = !args.flag("quiet") && ::isatty(2);
  // Every token after the first is predicted from all before it (SPEC §5); score() runs the
  // batched pass, one resync per window. With --segment L the text is cut into pieces of L + 1
  // tokens overlapping by one (each predicts its last L from its own context only), as a
  // training script evaluates; the cost of a whole-text pass grows with the square of its length.
  const int64_t segment = args.integer("segment", 0, 0, int64_t{1} << 40);
  double nll = 0.0;
  int64_t bytes = 0;
  const size_t n = ids.size();
  const size_t seg = segment > 0 ? static_cast<size_t>(segment) : n;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t start = 0; start + 1 < n; start += seg) {
    const size_t end = std::min(n, start + seg + 1);
    session->reset();
    // Long pieces go in chunks so that the progress bar moves.
    const size_t chunk = static_cast<size_t>(std::max<int64_t>(c.generate_window, 256)) * 16;
    for (size_t a = start; a < end; a += chunk) {
      const size_t len = std::min(chunk, end - a);
      session->score(ids.data() + a, len, [&](size_t i, const tconst::Vector<Scalar>& logits) {
        const size_t p = a + i;  // logits after token p predict token p + 1
        if (p + 1 >= end) return;
        const double mx = static_cast<double>(logits.maxCoeff());
        double sum = 0.0;
        for (Eigen::Index v = 0; v < logits.size(); ++v) {
          sum += std::exp(static_cast<double>(logits[v]) - mx);
        }
        nll += mx + std::log(sum) - static_cast<double>(logits[ids[p + 1]]);
        bytes += tok ? static_cast<int64_t>(tok->token_bytes(ids[p + 1]).size()) : 0;
      });
      if (progress) {
        const double done = static_cast<double>(a + len) / n;
        const int width = 30;
        const int filled = static_cast<int>(done * width);
        std::fprintf(stderr, "\r[%s%s] %5.1f%%", std::string(filled, '#').c_str(),
                     std::string(width - filled, '.').c_str(), 100.0 * done);
        std::fflush(stderr);
      }
    }
  }
  if (progress) std::fprintf(stderr, "\r\033[K");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t predicted = static_cast<int64_t>(n) - 1;
  const double mean = nll / predicted;
  std::printf("tokens            %lld (%lld predicted)\n", (long long)n, (long long)predicted);
  std::printf("mean nll          %.6f nats/token\n", mean);
  std::printf("perplexity        %.6f\n", std::exp(mean));
  if (bytes > 0) {
    std::printf("bits per byte     %.6f\n", nll / std::log(2.0) / static_cast<double>(bytes));
  }
  std::printf("time              %.3f s (%.1f tokens/s)\n", seconds, n / seconds);
  return 0;
}

// The tokenizer a model names (--model), or the one given by --tokenizer.
std::unique_ptr<tconst::Tokenizer> tokenizer_from_flags(const Args& args) {
  if (!args.has("model")) return tokenizer_for(nullptr, args);
  auto model = tconst::Model<float>::load(args.str("model"));
  return tokenizer_for(&model->config(), args);
}

int cmd_tokenize(const Args& args) {
  const auto tok = tokenizer_from_flags(args);
  const auto ids = tok->encode(read_stdin());
  for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
  std::printf("\n");
  return 0;
}

int cmd_detokenize(const Args& args) {
  const auto tok = tokenizer_from_flags(args);
  const auto ids = tconst::parse_ids(read_stdin(), tok->vocab_size());
  const std::string text = tok->decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

template <typename Fn>
int with_precision(const Args& args, Fn&& fn) {
  const std::string p = args.str("precision", "float");
  if (p == "float") return fn(float{});
  if (p == "double") return fn(double{});
  throw UsageError("--precision must be float or double, got '" + p + "'");
}

int run(int argc, char** argv) {
  if (argc < 2) throw UsageError("missing command (try 'tconst --help')");
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "--version") {
    std::printf("tconst %s\n", tconst::kVersion);
    return 0;
  }
  const std::set<std::string> common = {"precision", "threads", "tokenizer"};
  auto flags = [&](std::set<std::string> v) {
    v.insert(common.begin(), common.end());
    return v;
  };
  int n = argc - 2;
  char** rest = argv + 2;
  if (cmd == "info") {
    Args a(cmd, n, rest, flags({"model"}), {"json"});
    return with_precision(a, [&](auto s) { return cmd_info<decltype(s)>(a); });
  }
  if (cmd == "logits") {
    Args a(cmd, n, rest, flags({"model", "ids", "out"}), {});
    set_threads(a);
    return with_precision(a, [&](auto s) { return cmd_logits<decltype(s)>(a); });
  }
  if (cmd == "generate") {
    Args a(cmd, n, rest,
           flags({"model", "ids", "prompt", "max-new", "temperature", "top-k", "top-p", "min-p",
                  "repeat-penalty", "seed", "stop", "stop-id", "save-session", "load-session"}),
           {"greedy", "print-ids", "quiet"});
    set_threads(a);
    return with_precision(a, [&](auto s) { return cmd_generate<decltype(s)>(a); });
  }
  if (cmd == "perplexity") {
    Args a(cmd, n, rest, flags({"model", "text", "ids", "segment"}), {"quiet"});
    set_threads(a);
    return with_precision(a, [&](auto s) { return cmd_perplexity<decltype(s)>(a); });
  }
  if (cmd == "tokenize") {
    Args a(cmd, n, rest, flags({"model"}), {});
    return cmd_tokenize(a);
  }
  if (cmd == "detokenize") {
    Args a(cmd, n, rest, flags({"model"}), {});
    return cmd_detokenize(a);
  }
  if (cmd == "bench") return tconst_cli::cmd_bench(n, rest);
  throw UsageError("unknown command '" + cmd + "' (try 'tconst --help')");
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
