// Test-only model description used as ground truth by the tests (see SPEC.md §1, §2, §6).
//
// This header is deliberately independent of include/tconst/: it holds the weights of a model in
// double precision, in the PyTorch [out, in] row-major layout, and can fill them with
// deterministic pseudo-random values.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace tconst_test {

// One inner layer, PyTorch [out, in] row-major weights.
struct RefLayer {
  std::vector<double> norm1_w, norm1_b, norm2_w, norm2_b;  // [d]
  std::vector<double> qkv_w;                               // [3d, d]
  std::vector<double> qkv_b;                               // [3d]
  std::vector<double> out_w;                               // [d, d]
  std::vector<double> out_b;                               // [d]
  std::vector<double> w1, w3;                              // [f, d]
  std::vector<double> w2;                                  // [d, f]
};

struct RefModel {
  std::string arch;  // "tconstformer", "tlinformer" or "transformer"
  int V = 0, d = 0, h = 0, B = 0, D = 0 /*0 for transformer*/, W = 0, Hh = 0, f = 0;
  double base = 10000.0, eps = 1e-5;
  std::vector<double> embedding;       // [V, d]
  std::vector<double> norm_w, norm_b;  // [d] final LayerNorm
  std::vector<double> lm_head;         // [V, d], empty => tied to embedding
  // tconstformer/tlinformer: blocks[b][j], j = 0 compress, 1..D-2 hidden, D-1 restore.
  // transformer: blocks[i] has exactly one layer.
  std::vector<std::vector<RefLayer>> blocks;
};

// Hyperparameters of a random model. D, W and Hh are ignored for "transformer" (stored as 0).
struct RefShape {
  std::string arch;
  int V, d, h, B, D, W, Hh, f;
  bool tied = true;
};

// Small, fully specified generator (splitmix64) so that the weights are the same on every
// platform and standard library; std:: distributions are not portable across implementations.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits (exact, no platform-dependent rounding).
  double uniform01() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  // Uniform in [lo, hi), rounded through float so that the value is exactly a float.
  double uniform_float(double lo, double hi) {
    return static_cast<double>(static_cast<float>(lo + (hi - lo) * uniform01()));
  }

 private:
  uint64_t state_;
};

namespace detail {

inline std::vector<double> random_vector(SplitMix64& rng, size_t n, double lo, double hi) {
  std::vector<double> v(n);
  for (double& x : v) x = rng.uniform_float(lo, hi);
  return v;
}

inline RefLayer random_layer(SplitMix64& rng, int d, int f) {
  const size_t ud = static_cast<size_t>(d), uf = static_cast<size_t>(f);
  // Matrices ~ U(-a, a) with a = 1.5 / sqrt(fan_in): large enough that attention softmaxes are
  // far from uniform and the layers visibly change the residual stream.
  const double ad = 1.5 / std::sqrt(static_cast<double>(d));
  const double af = 1.5 / std::sqrt(static_cast<double>(f));
  RefLayer L;
  L.norm1_w = random_vector(rng, ud, 0.8, 1.2);
  L.norm1_b = random_vector(rng, ud, -0.1, 0.1);
  L.norm2_w = random_vector(rng, ud, 0.8, 1.2);
  L.norm2_b = random_vector(rng, ud, -0.1, 0.1);
  L.qkv_w = random_vector(rng, 3 * ud * ud, -ad, ad);
  L.qkv_b = random_vector(rng, 3 * ud, -0.1, 0.1);
  L.out_w = random_vector(rng, ud * ud, -ad, ad);
  L.out_b = random_vector(rng, ud, -0.1, 0.1);
  L.w1 = random_vector(rng, uf * ud, -ad, ad);
  L.w3 = random_vector(rng, uf * ud, -ad, ad);
  L.w2 = random_vector(rng, ud * uf, -af, af);
  return L;
}

}  // namespace detail

// Random weights, every value exactly representable as a float, deterministic from the seed.
// Throws std::invalid_argument on an inconsistent shape.
inline RefModel make_random_model(const RefShape& shape, uint64_t seed) {
  const bool baseline = shape.arch == "transformer";
  if (!baseline && shape.arch != "tconstformer" && shape.arch != "tlinformer") {
    throw std::invalid_argument("make_random_model: unknown architecture '" + shape.arch + "'");
  }
  if (shape.V <= 0 || shape.d <= 0 || shape.h <= 0 || shape.B <= 0 || shape.f <= 0 ||
      shape.d % shape.h != 0 || (shape.d / shape.h) % 2 != 0) {
    throw std::invalid_argument("make_random_model: bad V/d/h/B/f");
  }
  if (!baseline && (shape.D < 2 || shape.W <= 0 || shape.Hh <= 0)) {
    throw std::invalid_argument("make_random_model: bad D/W/Hh");
  }

  RefModel m;
  m.arch = shape.arch;
  m.V = shape.V;
  m.d = shape.d;
  m.h = shape.h;
  m.B = shape.B;
  m.D = baseline ? 0 : shape.D;
  m.W = baseline ? 0 : shape.W;
  m.Hh = baseline ? 0 : shape.Hh;
  m.f = shape.f;

  SplitMix64 rng(seed);
  const size_t ud = static_cast<size_t>(m.d), uV = static_cast<size_t>(m.V);
  // U(-1, 1) for d <= 32 (the scale of the golden models); narrower for wider models so that the
  // tied head keeps a logit spread of order 1 rather than growing like sqrt(d).
  const double ae = std::min(1.0, std::sqrt(32.0 / m.d));
  m.embedding = detail::random_vector(rng, uV * ud, -ae, ae);
  m.norm_w = detail::random_vector(rng, ud, 0.8, 1.2);
  m.norm_b = detail::random_vector(rng, ud, -0.1, 0.1);
  if (!shape.tied) m.lm_head = detail::random_vector(rng, uV * ud, -ae, ae);

  const int per_block = baseline ? 1 : m.D;
  m.blocks.resize(static_cast<size_t>(m.B));
  for (auto& block : m.blocks) {
    for (int j = 0; j < per_block; ++j) block.push_back(detail::random_layer(rng, m.d, m.f));
  }
  return m;
}

}  // namespace tconst_test
