// tconst generate: a prompt (ids or text), then up to --max-new tokens, shown as text while they
// come, or as ids at the end (--print-ids, SPEC §7).

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "tconst/tconst.hpp"

namespace tconst_cli {
namespace {

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

/// --stop TEXT and --stop-id ID, each repeatable.
void add_stops(const Args& args, int64_t vocab_size, tconst::GenerateOptions& opt) {
  for (const std::string& s : args.all("stop")) opt.stop_strings.push_back(s);
  for (const std::string& s : args.all("stop-id")) {
    const auto one = tconst::parse_ids(s, vocab_size);
    if (one.size() != 1) throw UsageError("--stop-id needs one token id, got '" + s + "'");
    opt.stop_ids.push_back(one[0]);
  }
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

// Standard output while generating: text as it comes (after the prompt, so that the continuation
// reads in context), or, with no tokenizer, the generated ids at the end.
class Output {
 public:
  Output(const tconst::Tokenizer* text_tokenizer, bool status)
      : text_(text_tokenizer ? std::make_unique<tconst::StreamDecoder>(*text_tokenizer) : nullptr),
        status_(status) {}

  void prompt(const std::vector<int32_t>& ids) {
    if (!text_) return;
    write(text_->push(ids));
  }

  template <typename Scalar>
  void token(int32_t id, const tconst::Session<Scalar>& session, double seconds) {
    generated_.push_back(id);
    if (text_) {
      const std::string piece = text_->push(id);
      status_.clear();
      write(piece);
    }
    status_.update(session, static_cast<int64_t>(generated_.size()), seconds);
  }

  void finish() {
    status_.clear();
    if (text_) {
      const std::string rest = text_->flush();
      std::fwrite(rest.data(), 1, rest.size(), stdout);
      std::fputc('\n', stdout);
    } else {
      print_ids(generated_);
    }
    std::fflush(stdout);
  }

 private:
  static void write(const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
  }

  std::unique_ptr<tconst::StreamDecoder> text_;
  StatusLine status_;
  std::vector<int32_t> generated_;
};

void print_stats(const tconst::GenerateStats& stats) {
  std::fprintf(stderr,
               "[%lld prompt tokens in %.3f s, %lld generated in %.3f s (%.1f tok/s), %s]\n",
               (long long)stats.prompt_tokens, stats.prefill_seconds, (long long)stats.generated,
               stats.generate_seconds,
               stats.generate_seconds > 0 ? stats.generated / stats.generate_seconds : 0.0,
               stats.stop_reason.c_str());
}

template <typename Scalar>
int generate(const Args& args) {
  // Flags first: a bad flag is reported before any file is read.
  tconst::GenerateOptions opt;
  opt.sampler = sampler_from(args);
  auto model = tconst::Model<Scalar>::load(args.required("model"));
  const tconst::ModelConfig& c = model->config();
  const bool print_ids = args.flag("print-ids");
  const bool quiet = args.flag("quiet");
  opt.max_new_tokens = args.integer("max-new", 128, 0, int64_t{1} << 40);
  if (args.has("ids") && args.has("prompt")) throw UsageError("give --ids or --prompt, not both");

  std::unique_ptr<tconst::Tokenizer> tok;
  if (!print_ids || args.has("prompt") || args.has("stop")) tok = tokenizer_for(&c, args);
  std::vector<int32_t> prompt;
  if (args.has("ids")) prompt = tconst::read_ids_file(args.str("ids"), c.vocab_size);
  if (args.has("prompt")) prompt = tok->encode(args.str("prompt"));

  auto session = tconst::make_session(model, session_options(args));
  if (args.has("load-session")) tconst::load_session(*session, args.str("load-session"));
  if (prompt.empty() && session->position() == 0) {
    throw UsageError("nothing to continue from: give a non-empty --ids or --prompt");
  }
  add_stops(args, c.vocab_size, opt);

  Output out(print_ids ? nullptr : tok.get(), !quiet);
  out.prompt(prompt);
  const auto t0 = std::chrono::steady_clock::now();
  auto on_token = [&](int32_t id) {
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.token(id, *session, sec);
    return true;
  };
  const tconst::GenerateStats stats = tconst::generate(*session, prompt, opt, on_token, tok.get());
  out.finish();
  if (args.has("save-session")) tconst::save_session(*session, args.str("save-session"));
  if (!quiet && !print_ids) print_stats(stats);
  return 0;
}

}  // namespace

int cmd_generate(const Args& args) {
  return with_precision(args, [&](auto s) { return generate<decltype(s)>(args); });
}

}  // namespace tconst_cli
