// tconst perplexity: mean negative log-likelihood of a text (or ids) under the model, and the
// perplexity and bits per byte that follow from it.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "tconst/tconst.hpp"

namespace tconst_cli {
namespace {

/// The tokens to score; `tok` is set when the bytes behind the ids are known (for bits per byte).
std::vector<int32_t> read_tokens(const Args& args, const tconst::ModelConfig& c,
                                 std::unique_ptr<tconst::Tokenizer>& tok) {
  if (args.has("text") == args.has("ids")) throw UsageError("give exactly one of --text or --ids");
  std::vector<int32_t> ids;
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
  return ids;
}

void draw_progress(double done) {
  const int width = 30;
  const int filled = static_cast<int>(done * width);
  std::fprintf(stderr, "\r[%s%s] %5.1f%%", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), 100.0 * done);
  std::fflush(stderr);
}

/// -log p(next) from the logits that predict it.
template <typename Scalar>
double nll_of(const tconst::Vector<Scalar>& logits, int32_t next) {
  const double mx = static_cast<double>(logits.maxCoeff());
  double sum = 0.0;
  for (Eigen::Index v = 0; v < logits.size(); ++v) {
    sum += std::exp(static_cast<double>(logits[v]) - mx);
  }
  return mx + std::log(sum) - static_cast<double>(logits[next]);
}

struct Totals {
  double nll = 0.0;   // nats, over every predicted token
  int64_t bytes = 0;  // of the predicted tokens, when a tokenizer knows them
};

// Every token after the first is predicted from all before it (SPEC §5); score() runs the batched
// pass, one resync per window. With --segment L the text is cut into pieces of L + 1 tokens
// overlapping by one (each predicts its last L from its own context only), as a training script
// evaluates; the cost of a whole-text pass grows with the square of its length.
template <typename Scalar>
Totals score_all(tconst::Session<Scalar>& session, const std::vector<int32_t>& ids, size_t segment,
                 const tconst::Tokenizer* tok, bool progress, bool per_token) {
  const size_t n = ids.size();
  // Long pieces go in chunks so that the progress bar moves.
  const tconst::ModelConfig& c = session.model().config();
  const size_t chunk = static_cast<size_t>(std::max<int64_t>(c.generate_window, 256)) * 16;
  Totals t;
  for (size_t start = 0; start + 1 < n; start += segment) {
    const size_t end = std::min(n, start + segment + 1);
    session.reset();
    for (size_t a = start; a < end; a += chunk) {
      const size_t len = std::min(chunk, end - a);
      session.score(ids.data() + a, len, [&](size_t i, const tconst::Vector<Scalar>& logits) {
        const size_t p = a + i;  // logits after token p predict token p + 1
        if (p + 1 >= end) return;
        const double nll = nll_of(logits, ids[p + 1]);
        t.nll += nll;
        // --per-token: position, id, its log-probability, the most likely id there.
        if (per_token) {
          std::printf("%zu %d %.17g %d\n", p + 1, ids[p + 1], -nll, tconst::greedy_token(logits));
        }
        t.bytes += tok ? static_cast<int64_t>(tok->token_bytes(ids[p + 1]).size()) : 0;
      });
      if (progress) draw_progress(static_cast<double>(a + len) / n);
    }
  }
  if (progress) std::fprintf(stderr, "\r\033[K");
  return t;
}

void print_report(size_t n, const Totals& t, double seconds) {
  const int64_t predicted = static_cast<int64_t>(n) - 1;
  const double mean = t.nll / predicted;
  std::printf("tokens            %lld (%lld predicted)\n", (long long)n, (long long)predicted);
  std::printf("mean nll          %.6f nats/token\n", mean);
  std::printf("perplexity        %.6f\n", std::exp(mean));
  if (t.bytes > 0) {
    std::printf("bits per byte     %.6f\n", t.nll / std::log(2.0) / static_cast<double>(t.bytes));
  }
  std::printf("time              %.3f s (%.1f tokens/s)\n", seconds, n / seconds);
}

template <typename Scalar>
int perplexity(const Args& args) {
  auto model = tconst::Model<Scalar>::load(args.required("model"));
  std::unique_ptr<tconst::Tokenizer> tok;
  const std::vector<int32_t> ids = read_tokens(args, model->config(), tok);
  auto session = tconst::make_session(model, session_options(args));
  const bool progress = !args.flag("quiet") && ::isatty(2);
  const int64_t segment = args.integer("segment", 0, 0, int64_t{1} << 40);
  const auto t0 = std::chrono::steady_clock::now();
  const Totals t = score_all(*session, ids, segment > 0 ? static_cast<size_t>(segment) : ids.size(),
                             tok.get(), progress, args.flag("per-token"));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!args.flag("per-token")) print_report(ids.size(), t, seconds);
  return 0;
}

}  // namespace

int cmd_perplexity(const Args& args) {
  return with_precision(args, [&](auto s) { return perplexity<decltype(s)>(args); });
}

}  // namespace tconst_cli
