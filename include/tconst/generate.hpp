#pragma once
// generate(): streaming text generation over any Session.
//
// The loop is sample -> hand the token to the caller -> feed it to the session, so the caller sees
// each token one forward pass earlier than if it were fed first (what a user watching the stream
// notices). Every token handed to the caller is then fed, including the last one, whatever ended
// the generation: afterwards the session has consumed the prompt and every generated token, and a
// later generate(session, {}, ...) continues exactly where this one stopped, at no extra cost (the
// logits after the last token are already in session.logits()). The price is that a cancelled or
// stopped generation still runs one forward pass after its last token.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/sampling.hpp"
#include "tconst/session.hpp"
#include "tconst/tokenizer/interface.hpp"

namespace tconst {
inline namespace TCONST_ABI {

struct GenerateOptions {
  /// The most tokens to generate (0: only consume the prompt).
  int64_t max_new_tokens = 128;
  /// Stop after generating any of these ids (the stop token is emitted and fed like any other).
  std::vector<int32_t> stop_ids;
  /// Stop once the text generated in this call contains any of these byte strings. Matched on the
  /// tokens' raw bytes, across token boundaries, never against the prompt. The token that completes
  /// a match is emitted and fed (tokens are indivisible: the caller trims the text if it wants).
  /// Needs the tokenizer argument of generate().
  std::vector<std::string> stop_strings;
  SamplerConfig sampler;
};

struct GenerateStats {
  /// Tokens emitted, i.e. calls to on_token (the cancelling call included).
  int64_t generated = 0;
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  /// Sampling, callbacks and feeds of the generated tokens.
  double generate_seconds = 0;
  /// Why it ended: "budget" (max_new_tokens emitted), "stop_id", "stop_string", "cancelled"
  /// (on_token returned false), or "context_full" (the session's max_context was reached; ending
  /// cleanly beats throwing halfway through a stream). When one token has several reasons, the
  /// first in the order cancelled, stop_id, stop_string, budget is reported.
  std::string stop_reason;
};

namespace detail {

inline void check_generate_options(const GenerateOptions& opt, const ModelConfig& config,
                                   const Tokenizer* tokenizer) {
  if (opt.max_new_tokens < 0) {
    throw Error("max_new_tokens must be >= 0, got " + std::to_string(opt.max_new_tokens));
  }
  opt.sampler.validate();
  for (const int32_t id : opt.stop_ids) {
    // An id the model can never produce is a mistake (a different tokenizer's EOS, say), not a
    // stop condition to ignore silently.
    if (id < 0 || id >= config.vocab_size) {
      throw Error("stop id " + std::to_string(id) + " is outside the model's vocabulary [0, " +
                  std::to_string(config.vocab_size) + ")");
    }
  }
  if (!opt.stop_strings.empty() && tokenizer == nullptr) {
    throw Error("stop strings need a tokenizer to turn generated ids into text");
  }
  for (const std::string& s : opt.stop_strings) {
    if (s.empty()) throw Error("a stop string must not be empty (it would match at once)");
  }
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace detail

/// Consumes `prompt` with session.prefill() (an empty prompt continues a session that has already
/// consumed tokens, and throws Error on a fresh one), then generates up to opt.max_new_tokens
/// tokens. `on_token(id)` is called with every token as soon as it is sampled, before the session
/// consumes it; returning false cancels (no further call is made). An empty on_token never cancels.
/// `tokenizer` is needed only for opt.stop_strings and must map every id the model can produce.
///
/// The repetition penalty looks at the session's whole token log, prompt included. Errors in the
/// options or the prompt throw Error before anything is consumed. An exception from on_token or the
/// tokenizer propagates; the session then holds every token emitted before that one.
template <typename Scalar>
GenerateStats generate(Session<Scalar>& session, const std::vector<int32_t>& prompt,
                       const GenerateOptions& opt, const std::function<bool(int32_t)>& on_token,
                       const Tokenizer* tokenizer = nullptr) {
  using Clock = std::chrono::steady_clock;
  detail::check_generate_options(opt, session.model().config(), tokenizer);
  if (prompt.empty() && session.position() == 0) {
    throw Error("generate needs a prompt, or a session that has already consumed tokens");
  }

  GenerateStats stats;
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  const Clock::time_point prefill_start = Clock::now();
  const Vector<Scalar>* logits = prompt.empty() ? &session.logits() : &session.prefill(prompt);
  stats.prefill_seconds = detail::seconds_since(prefill_start);

  const Clock::time_point generate_start = Clock::now();
  Sampler<Scalar> sampler(opt.sampler);
  // Only the last (longest - 1) bytes can be the start of a future match, so the text kept for
  // stop strings stays bounded however long the generation runs.
  size_t longest_stop = 0;
  for (const std::string& s : opt.stop_strings) longest_stop = std::max(longest_stop, s.size());
  std::string tail;

  stats.stop_reason = "budget";
  const int64_t max_context = session.options().max_context;
  while (stats.generated < opt.max_new_tokens) {
    if (session.position() >= max_context) {
      stats.stop_reason = "context_full";
      break;
    }
    const int32_t id = sampler.sample(*logits, session.tokens());
    bool stop_string = false;
    if (longest_stop > 0) {
      // Before the callback, so that a tokenizer error never follows an emitted token.
      tail += tokenizer->token_bytes(id);
      // A match lying wholly in the old tail would have stopped the previous step, so any match
      // found now ends in this token's bytes.
      for (const std::string& s : opt.stop_strings) {
        if (tail.find(s) != std::string::npos) {
          stop_string = true;
          break;
        }
      }
      if (tail.size() >= longest_stop) tail.erase(0, tail.size() - (longest_stop - 1));
    }
    ++stats.generated;
    const bool keep_going = on_token ? on_token(id) : true;
    logits = &session.feed(id);

    if (!keep_going) {
      stats.stop_reason = "cancelled";
      break;
    }
    if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), id) != opt.stop_ids.end()) {
      stats.stop_reason = "stop_id";
      break;
    }
    if (stop_string) {
      stats.stop_reason = "stop_string";
      break;
    }
  }
  stats.generate_seconds = detail::seconds_since(generate_start);
  return stats;
}

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template GenerateStats generate(Session<float>&, const std::vector<int32_t>&,
                                       const GenerateOptions&, const std::function<bool(int32_t)>&,
                                       const Tokenizer*);
extern template GenerateStats generate(Session<double>&, const std::vector<int32_t>&,
                                       const GenerateOptions&, const std::function<bool(int32_t)>&,
                                       const Tokenizer*);
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
