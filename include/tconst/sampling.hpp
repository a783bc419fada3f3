#pragma once
// Choosing the next token from logits: a portable seeded generator and the usual filters.
//
// Reproducibility: Rng is defined bit for bit by this code (no std:: distribution, whose output
// differs between standard libraries), and the Sampler visits candidates in a canonical order
// (never the unspecified order std::nth_element leaves), so a seed and the same logits give the
// same token with any compiler. The one remaining platform dependence is std::exp, which libms may
// round differently in the last bit; that can move a draw only when the uniform number falls within
// about 1e-16 of a boundary between two tokens.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/matrix.hpp"

namespace tconst {
inline namespace TCONST_ABI {

/// xoshiro256** (Blackman and Vigna, 2018), seeded through splitmix64 as its authors recommend, so
/// that nearby seeds (0, 1, 2, ...) still give unrelated streams.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }

  void reseed(uint64_t seed) {
    uint64_t x = seed;
    // splitmix64 is a bijection of its counter, so four consecutive outputs are never all zero
    // (the one state xoshiro cannot leave).
    for (uint64_t& s : s_) s = splitmix64(x);
  }

  uint64_t next_u64() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  /// Uniform in [0, 1): the top 53 bits times 2^-53. Every such value is exactly a double, so no
  /// rounding happens anywhere and 1.0 can never come out.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  std::array<uint64_t, 4> s_{};
};

/// How to pick a token. The filters run in the order listed: repetition penalty, then temperature,
/// top-k, top-p and min-p, each on what the previous one left.
struct SamplerConfig {
  /// Divides the logits. 0 means greedy (exactly, not a limit that overflows exp).
  float temperature = 1.0f;
  /// Keep only the k most likely tokens (ties broken towards the lower id). 0 = off.
  int top_k = 0;
  /// Keep the smallest set of most likely tokens whose probability adds up to at least top_p.
  /// 1 = off.
  float top_p = 1.0f;
  /// Drop tokens less likely than min_p times the most likely one. 0 = off.
  float min_p = 0.0f;
  /// CTRL-style: a recent token's positive logit is divided by this, a negative one multiplied,
  /// once per distinct token however often it recurs. 1 = off.
  float repetition_penalty = 1.0f;
  /// How many of the most recent history tokens the penalty looks at. 0 = off.
  int repetition_window = 64;
  /// Always take the most likely token (lowest id on ties); the filters and seed are then unused.
  bool greedy = false;
  uint64_t seed = 0;

  bool is_greedy() const { return greedy || temperature == 0.0f; }

  /// Throws Error naming the first setting that makes no sense.
  void validate() const {
    if (!std::isfinite(temperature) || temperature < 0.0f) {
      throw Error("sampler temperature must be a finite number >= 0 (0 = greedy), got " +
                  std::to_string(temperature));
    }
    if (top_k < 0) {
      throw Error("sampler top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
    }
    // Written so that NaN fails too.
    if (!(top_p > 0.0f && top_p <= 1.0f)) {
      throw Error("sampler top_p must be in (0, 1] (1 = off), got " + std::to_string(top_p));
    }
    if (!(min_p >= 0.0f && min_p < 1.0f)) {
      throw Error("sampler min_p must be in [0, 1) (0 = off), got " + std::to_string(min_p));
    }
    if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.0f) {
      throw Error("sampler repetition_penalty must be a finite number > 0 (1 = off), got " +
                  std::to_string(repetition_penalty));
    }
    if (repetition_window < 0) {
      throw Error("sampler repetition_window must be >= 0 (0 = off), got " +
                  std::to_string(repetition_window));
    }
  }
};

/// The id of the largest logit, the lowest id among equal maxima: greedy decoding, read straight
/// from the logits in a few vector passes (the Sampler's greedy path without a repetition penalty
/// ends here). Throws Error for empty logits or a NaN logit. Allocates nothing.
template <typename Scalar>
int32_t greedy_token(const Vector<Scalar>& logits) {
  const Eigen::Index V = logits.size();
  if (V == 0) throw Error("cannot sample from empty logits");
  if (V > std::numeric_limits<int32_t>::max()) throw Error("vocabulary too large to sample");
  // A NaN anywhere makes the sum NaN; so may +inf and -inf together, hence the look for a real one.
  if (std::isnan(logits.sum())) {
    for (Eigen::Index i = 0; i < V; ++i) {
      if (std::isnan(logits[i])) throw Error("logit of token " + std::to_string(i) + " is NaN");
    }
  }
  const Scalar best = logits.maxCoeff();
  // The first block that holds the maximum, then its first element equal to it.
  constexpr Eigen::Index kBlock = 256;
  Eigen::Index b = 0;
  while (b + kBlock < V && logits.segment(b, kBlock).maxCoeff() != best) b += kBlock;
  while (logits[b] != best) ++b;  // stops: `best` is one of the logits
  return static_cast<int32_t>(b);
}

/// Picks tokens from logits according to a SamplerConfig. Holds the random state, so one Sampler
/// per stream; a copy continues the same random sequence independently. Its buffers grow to the
/// vocabulary on the first call and are reused, so later calls do not allocate.
template <typename Scalar>
class Sampler {
 public:
  explicit Sampler(SamplerConfig config) : config_(config), rng_(config.seed) {
    config_.validate();
  }

  /// The next token for `logits` (one per vocabulary entry), penalising the last
  /// repetition_window ids of `history`. A sampled (not greedy) call draws exactly one uniform
  /// number. Throws Error for empty logits, a NaN logit, logits that are all -inf, or a history id
  /// outside [0, V).
  int32_t sample(const Vector<Scalar>& logits, const std::vector<int32_t>& history) {
    const Eigen::Index V = logits.size();
    if (V == 0) throw Error("cannot sample from empty logits");
    if (V > std::numeric_limits<int32_t>::max()) throw Error("vocabulary too large to sample");
    const bool penalty = config_.repetition_penalty != 1.0f && config_.repetition_window != 0;
    if (config_.is_greedy() && !penalty) return greedy_token(logits);
    const int32_t n_vocab = static_cast<int32_t>(V);
    const size_t n = static_cast<size_t>(n_vocab);
    // resize() to the size a vector already has does not allocate.
    z_.resize(n);
    w_.resize(n);
    idx_.resize(n);
    marked_.resize(n, 0);

    // Doubles from here on: the penalty and temperature then round once per logit, not per step.
    for (int32_t i = 0; i < n_vocab; ++i) {
      const double z = static_cast<double>(logits[i]);
      if (std::isnan(z)) throw Error("logit of token " + std::to_string(i) + " is NaN");
      z_[i] = z;
    }
    apply_repetition_penalty(history, n_vocab);

    if (config_.is_greedy()) return argmax(n_vocab);
    return draw(n_vocab);
  }

  const SamplerConfig& config() const { return config_; }
  /// Restarts the random sequence, as if constructed with this seed.
  void reseed(uint64_t seed) { rng_.reseed(seed); }

 private:
  void apply_repetition_penalty(const std::vector<int32_t>& history, int32_t n_vocab) {
    if (config_.repetition_penalty == 1.0f || config_.repetition_window == 0) return;
    const double penalty = config_.repetition_penalty;
    const size_t window = std::min(history.size(), static_cast<size_t>(config_.repetition_window));
    const size_t first = history.size() - window;
    for (size_t i = first; i < history.size(); ++i) {
      const int32_t id = history[i];
      if (id < 0 || id >= n_vocab) {
        clear_marks(history, first, i);
        throw Error("history token id " + std::to_string(id) + " is outside [0, " +
                    std::to_string(n_vocab) + ")");
      }
      // Penalise each id once: a token repeated ten times in the window is as "used" as one seen
      // once, and compounding would push it to -inf in a long loop.
      if (marked_[id]) continue;
      marked_[id] = 1;
      z_[id] = z_[id] > 0 ? z_[id] / penalty : z_[id] * penalty;
    }
    clear_marks(history, first, history.size());
  }

  void clear_marks(const std::vector<int32_t>& history, size_t first, size_t last) {
    for (size_t i = first; i < last; ++i) marked_[history[i]] = 0;
  }

  int32_t argmax(int32_t n_vocab) const {
    int32_t best = 0;
    // Strict > keeps the first, that is the lowest id, among equal maxima.
    for (int32_t i = 1; i < n_vocab; ++i) {
      if (z_[i] > z_[best]) best = i;
    }
    return best;
  }

  // Whether token a ranks before token b: higher logit first, lower id on ties. A strict total
  // order, so the set of the k best and every sorted prefix are unique.
  bool better(int32_t a, int32_t b) const { return z_[a] > z_[b] || (z_[a] == z_[b] && a < b); }

  int32_t draw(int32_t n_vocab) {
    const auto better = [this](int32_t a, int32_t b) { return this->better(a, b); };
    // idx_[0, n) are the candidates; idx_[0, sorted) of them are the best, in `better` order.
    // Any other order would do for the draw as long as it is canonical; id order and rank order
    // are the two that come for free.
    size_t n = static_cast<size_t>(n_vocab);
    size_t sorted = 0;
    for (int32_t i = 0; i < n_vocab; ++i) idx_[i] = i;

    if (config_.top_k > 0 && static_cast<size_t>(config_.top_k) < n) {
      n = static_cast<size_t>(config_.top_k);
      std::nth_element(idx_.begin(), idx_.begin() + n, idx_.end(), better);
      std::sort(idx_.begin(), idx_.begin() + n, better);
      sorted = n;
    }

    const int32_t top = sorted > 0 ? idx_[0] : argmax(n_vocab);
    const double z_max = z_[top];
    if (z_max == -std::numeric_limits<double>::infinity()) {
      throw Error("cannot sample: every logit is -inf");
    }
    // Weights proportional to the probabilities, the best token's exactly 1. With +inf logits
    // (a caller forcing tokens) those tokens share all the mass, which is the limit of softmax.
    const bool forced = z_max == std::numeric_limits<double>::infinity();
    const double inv_t = 1.0 / static_cast<double>(config_.temperature);
    double total = 0;
    for (size_t i = 0; i < n; ++i) {
      const int32_t id = idx_[i];
      const double w = forced ? (z_[id] == z_max ? 1.0 : 0.0) : std::exp((z_[id] - z_max) * inv_t);
      w_[id] = w;
      total += w;
    }

    if (config_.top_p < 1.0f && n > 1) {
      n = nucleus(n, sorted, static_cast<double>(config_.top_p) * total);
    }

    if (config_.min_p > 0.0f) {
      // Relative to the best weight (1), so the renormalisations before do not matter.
      const double threshold = static_cast<double>(config_.min_p) * w_[top];
      size_t kept = 0;
      for (size_t i = 0; i < n; ++i) {
        if (w_[idx_[i]] >= threshold) idx_[kept++] = idx_[i];
      }
      n = kept;  // >= 1: the best token passes since min_p < 1
    }

    // Renormalising is implicit: draw against the mass that is left.
    double mass = 0;
    for (size_t i = 0; i < n; ++i) mass += w_[idx_[i]];
    const double u = rng_.uniform() * mass;
    double cumulative = 0;
    int32_t last_positive = top;
    for (size_t i = 0; i < n; ++i) {
      const int32_t id = idx_[i];
      if (w_[id] <= 0) continue;  // an exp that underflowed can never be drawn
      cumulative += w_[id];
      last_positive = id;
      if (u < cumulative) return id;
    }
    // Only reachable when rounding left the running sum a hair below `mass`.
    return last_positive;
  }

  // Shrinks the candidates idx_[0, n) to the nucleus: the shortest prefix in rank order whose
  // weight reaches `target`. Sorting all V candidates costs V log V per token; the nucleus is
  // usually far smaller, so rank a block at a time, doubling, until the mass is reached.
  size_t nucleus(size_t n, size_t sorted, double target) {
    const auto better = [this](int32_t a, int32_t b) { return this->better(a, b); };
    double cumulative = 0;
    size_t i = 0;
    size_t block = 64;
    while (true) {
      if (i == sorted) {
        const size_t end = std::min(n, sorted + block);
        if (end < n) {
          std::nth_element(idx_.begin() + sorted, idx_.begin() + end, idx_.begin() + n, better);
        }
        std::sort(idx_.begin() + sorted, idx_.begin() + end, better);
        sorted = end;
        block *= 2;
      }
      cumulative += w_[idx_[i]];
      ++i;
      if (cumulative >= target || i == n) return i;
    }
  }

  SamplerConfig config_;
  Rng rng_;
  std::vector<double> z_;        // [V] logits after the penalty
  std::vector<double> w_;        // [V] unnormalised probabilities (valid for candidates only)
  std::vector<int32_t> idx_;     // [V] candidate ids
  std::vector<uint8_t> marked_;  // [V] all zero between calls; marks penalised ids
};

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class Sampler<float>;
extern template int32_t greedy_token(const Vector<float>&);
extern template class Sampler<double>;
extern template int32_t greedy_token(const Vector<double>&);
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
