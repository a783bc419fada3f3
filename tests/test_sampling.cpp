// Sampling and generation: the generator's fixed sequence, every filter's distribution against
// probabilities computed here independently, generation over a tiny random model (determinism,
// stop conditions, cancellation, continuation across resyncs), and the same sampled generation in
// separate processes.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#if defined(__linux__)
#include <unistd.h>
#endif

#include "support/compare.hpp"
#include "support/counting_new.hpp"  // proves that sample() reuses its buffers
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "tconst/generate.hpp"
#include "tconst/sampling.hpp"
#include "tconst/tconst.hpp"

namespace {

using tconst::GenerateOptions;
using tconst::GenerateStats;
using tconst::Rng;
using tconst::Sampler;
using tconst::SamplerConfig;
using tconst_test::argmax;
using Logits = tconst::Vector<float>;

Logits make_logits(const std::vector<double>& values) {
  Logits l(static_cast<Eigen::Index>(values.size()));
  for (size_t i = 0; i < values.size(); ++i) {
    l[static_cast<Eigen::Index>(i)] = static_cast<float>(values[i]);
  }
  return l;
}

// Logits whose softmax is `p` (up to float rounding, far below the tolerances used).
Logits logits_for(const std::vector<double>& p) {
  std::vector<double> l;
  for (double x : p) l.push_back(std::log(x));
  return make_logits(l);
}

// softmax(logits / t) over the ids in `keep` (all when empty), zero elsewhere; computed in double
// from the float logits the sampler sees.
std::vector<double> softmax(const Logits& logits, double t, std::vector<int> keep = {}) {
  const int V = static_cast<int>(logits.size());
  if (keep.empty()) {
    keep.resize(static_cast<size_t>(V));
    std::iota(keep.begin(), keep.end(), 0);
  }
  double m = -std::numeric_limits<double>::infinity();
  for (int i : keep) m = std::max(m, static_cast<double>(logits[i]));
  std::vector<double> p(static_cast<size_t>(V), 0.0);
  double sum = 0;
  for (int i : keep) sum += p[static_cast<size_t>(i)] = std::exp((logits[i] - m) / t);
  for (double& x : p) x /= sum;
  return p;
}

constexpr int kDraws = 20000;

std::vector<long> histogram(Sampler<float>& s, const Logits& logits,
                            const std::vector<int32_t>& history = {}, int draws = kDraws) {
  std::vector<long> counts(static_cast<size_t>(logits.size()), 0);
  for (int i = 0; i < draws; ++i) {
    const int32_t id = s.sample(logits, history);
    EXPECT_GE(id, 0);
    EXPECT_LT(id, logits.size());
    if (id >= 0 && id < logits.size()) ++counts[static_cast<size_t>(id)];
  }
  return counts;
}

// Each count is Binomial(draws, p): it must lie within 5 standard deviations of draws * p (a
// chance of about 6e-7 per token of failing for a correct sampler; the seeds are fixed anyway, so
// a pass is reproducible). A token of probability 0 must never appear.
void expect_distribution(const std::vector<long>& counts, const std::vector<double>& p,
                         int draws = kDraws) {
  ASSERT_EQ(counts.size(), p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " should never be drawn";
      continue;
    }
    const double mean = draws * p[i];
    const double sigma = std::sqrt(draws * p[i] * (1.0 - p[i]));
    EXPECT_NEAR(static_cast<double>(counts[i]), mean, 5.0 * sigma + 1.0)
        << "token " << i << " with p = " << p[i];
  }
}

SamplerConfig sampled(uint64_t seed) {
  SamplerConfig c;
  c.seed = seed;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Rng

TEST(Rng, FixedSequenceForFixedSeed) {
  // Golden values computed once with this implementation, after checking it against the published
  // vectors of both parts (xoshiro256** from state {1, 2, 3, 4}: 11520, 0, 1509978240,
  // 1215971899390074240; splitmix64 from 0: 0xe220a8397b1dcdaf). They must never change: a seed
  // names the same stream on every platform and in every version.
  Rng rng(42);
  const uint64_t expected[] = {1546998764402558742ULL,  6990951692964543102ULL,
                               12544586762248559009ULL, 17057574109182124193ULL,
                               18295552978065317476ULL, 14199186830065750584ULL};
  for (uint64_t e : expected) EXPECT_EQ(rng.next_u64(), e);
}

TEST(Rng, UniformIsTheTop53Bits) {
  Rng a(7), b(7);
  for (int i = 0; i < 1000; ++i) {
    const uint64_t bits = a.next_u64();
    const double u = b.uniform();
    EXPECT_EQ(u, static_cast<double>(bits >> 11) / 9007199254740992.0);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(Rng, UniformLooksUniform) {
  Rng rng(3);
  constexpr int kN = 100000;
  std::vector<long> bins(10, 0);
  double sum = 0;
  for (int i = 0; i < kN; ++i) {
    const double u = rng.uniform();
    sum += u;
    ++bins[static_cast<size_t>(u * 10)];
  }
  // Mean of U(0,1): 1/2 with standard deviation sqrt(1/12 / kN) ~ 0.0009.
  EXPECT_NEAR(sum / kN, 0.5, 5 * 0.00092);
  expect_distribution(bins, std::vector<double>(10, 0.1), kN);
}

TEST(Rng, SeedsAndReseed) {
  Rng a(1), b(2), c(1);
  const uint64_t a0 = a.next_u64();
  EXPECT_NE(a0, b.next_u64());
  EXPECT_EQ(a0, c.next_u64());
  a.next_u64();
  a.reseed(1);
  EXPECT_EQ(a.next_u64(), a0);
}

// ---------------------------------------------------------------------------------------------
// SamplerConfig

TEST(SamplerConfig, DefaultsAreValidAndSampled) {
  SamplerConfig c;
  EXPECT_NO_THROW(c.validate());
  EXPECT_FALSE(c.is_greedy());
  c.temperature = 0;
  EXPECT_TRUE(c.is_greedy());
}

TEST(SamplerConfig, NonsenseThrows) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<SamplerConfig> bad;
  auto with = [&](auto change) {
    SamplerConfig c;
    change(c);
    bad.push_back(c);
  };
  with([](SamplerConfig& c) { c.temperature = -0.5f; });
  with([&](SamplerConfig& c) { c.temperature = nan; });
  with([&](SamplerConfig& c) { c.temperature = inf; });
  with([](SamplerConfig& c) { c.top_k = -1; });
  with([](SamplerConfig& c) { c.top_p = 0.0f; });
  with([](SamplerConfig& c) { c.top_p = -0.1f; });
  with([](SamplerConfig& c) { c.top_p = 1.5f; });
  with([&](SamplerConfig& c) { c.top_p = nan; });
  with([](SamplerConfig& c) { c.min_p = -0.1f; });
  with([](SamplerConfig& c) { c.min_p = 1.0f; });
  with([&](SamplerConfig& c) { c.min_p = nan; });
  with([](SamplerConfig& c) { c.repetition_penalty = 0.0f; });
  with([](SamplerConfig& c) { c.repetition_penalty = -1.0f; });
  with([&](SamplerConfig& c) { c.repetition_penalty = inf; });
  with([](SamplerConfig& c) { c.repetition_window = -1; });
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_THROW(bad[i].validate(), tconst::Error) << "case " << i;
    EXPECT_THROW(Sampler<float>{bad[i]}, tconst::Error) << "case " << i;
  }
  // The edges that are allowed.
  SamplerConfig ok;
  ok.top_p = 1.0f;
  ok.min_p = 0.0f;
  ok.top_k = 0;
  ok.repetition_window = 0;
  ok.temperature = 0.0f;
  EXPECT_NO_THROW(ok.validate());
}

// ---------------------------------------------------------------------------------------------
// Sampler

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  SamplerConfig c;
  c.greedy = true;
  Sampler<float> s(c);
  EXPECT_EQ(s.sample(make_logits({1, 5, 5, 2}), {}), 1);
  EXPECT_EQ(s.sample(make_logits({7, 5, 7, 2}), {}), 0);
  EXPECT_EQ(s.sample(make_logits({-3, -2, -1}), {}), 2);
  EXPECT_EQ(s.sample(make_logits({4}), {}), 0);
  // temperature 0 is the same thing.
  SamplerConfig t0;
  t0.temperature = 0;
  Sampler<float> s0(t0);
  EXPECT_EQ(s0.sample(make_logits({1, 5, 5, 2}), {}), 1);
  // Double logits go through the same code.
  Sampler<double> sd(c);
  tconst::Vector<double> ld(3);
  ld << 0.5, 0.25, 0.5;
  EXPECT_EQ(sd.sample(ld, {}), 0);
}

TEST(GreedyToken, FirstLargestOnRandomLogitsWithManyTies) {
  // Few distinct values (many ties), the maximum anywhere: first block, last block, a block's
  // edge, the very last element; lengths around the scan's 256-element blocks.
  tconst_test::SplitMix64 gen(31);
  for (int32_t n : {1, 2, 15, 255, 256, 257, 511, 512, 513, 1000, 50257}) {
    for (int trial = 0; trial < 20; ++trial) {
      Logits v(n);
      tconst::Vector<double> vd(n);
      const int levels = 1 + static_cast<int>(gen.next() % 6);
      for (int32_t i = 0; i < n; ++i) {
        v[i] = static_cast<float>(gen.next() % static_cast<uint64_t>(levels)) - 2.0f;
        vd[i] = v[i];
      }
      if (trial % 4 == 1) v[n - 1] = vd[n - 1] = 9.0f;
      if (trial % 4 == 2) v[n / 2] = vd[n / 2] = 9.0f;
      if (trial % 4 == 3 && n > 256) v[256] = vd[256] = 9.0f;
      EXPECT_EQ(tconst::greedy_token(v), argmax(v)) << "n " << n << " trial " << trial;
      EXPECT_EQ(tconst::greedy_token(vd), argmax(vd)) << "n " << n << " trial " << trial;
    }
  }
}

TEST(GreedyToken, InfinitiesSignedZerosAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  Logits all_masked(600);
  all_masked.setConstant(-inf);
  EXPECT_EQ(tconst::greedy_token(all_masked), 0);
  // +inf and -inf together make the sum NaN without any NaN logit.
  Logits mixed = all_masked;
  mixed[3] = inf;
  mixed[300] = inf;
  EXPECT_EQ(tconst::greedy_token(mixed), 3);
  Logits zeros = make_logits({-0.0, 0.0, -0.0});
  EXPECT_EQ(tconst::greedy_token(zeros), 0);
  Logits nan_logits(700);
  nan_logits.setZero();
  nan_logits[417] = std::numeric_limits<float>::quiet_NaN();
  try {
    tconst::greedy_token(nan_logits);
    ADD_FAILURE() << "a NaN logit was accepted";
  } catch (const tconst::Error& e) {
    EXPECT_NE(std::string(e.what()).find("token 417 is NaN"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tconst::greedy_token(Logits()), tconst::Error);
}

TEST(GreedyToken, SamplerGreedyAgreesWithAndWithoutThePenaltyPath) {
  tconst_test::SplitMix64 gen(32);
  std::vector<double> values(3000);
  for (double& x : values) x = gen.uniform_float(-4.0, 4.0);
  const Logits logits = make_logits(values);
  SamplerConfig plain;
  plain.greedy = true;
  // A penalty of 1 takes the short path; a window of 0 likewise; a real penalty the full one,
  // which with a history of tokens below the maximum changes nothing.
  SamplerConfig neutral = plain;
  neutral.repetition_penalty = 1.0f;
  SamplerConfig full = plain;
  full.repetition_penalty = 1.3f;
  Sampler<float> a(plain), b(neutral), c(full);
  const int32_t want = argmax(logits);
  std::vector<int32_t> history;
  for (int32_t i = 0; i < 3000 && history.size() < 20; ++i) {
    if (i != want && logits[i] < 0) history.push_back(i);
  }
  EXPECT_EQ(a.sample(logits, history), want);
  EXPECT_EQ(b.sample(logits, history), want);
  EXPECT_EQ(c.sample(logits, history), want);
}

TEST(Sampler, TemperatureMatchesSoftmax) {
  const Logits logits = make_logits({1.0, 2.0, 0.5, -1.0, 3.0, 0.0});
  for (float t : {0.5f, 1.0f, 2.0f}) {
    SCOPED_TRACE("T = " + std::to_string(t));
    SamplerConfig c = sampled(100 + static_cast<uint64_t>(t * 10));
    c.temperature = t;
    Sampler<float> s(c);
    expect_distribution(histogram(s, logits), softmax(logits, t));
  }
}

TEST(Sampler, TopKKeepsTheKBestWithIdTies) {
  // The 3 best: ids 1 and 3 (logit 3), then id 2 over id 5 (both 2) by the lower id.
  const Logits logits = make_logits({1, 3, 2, 3, 0.5, 2});
  SamplerConfig c = sampled(5);
  c.top_k = 3;
  Sampler<float> s(c);
  expect_distribution(histogram(s, logits), softmax(logits, 1.0, {1, 3, 2}));
  // k >= V is no filter at all.
  c.top_k = 6;
  Sampler<float> all(c);
  expect_distribution(histogram(all, logits), softmax(logits, 1.0));
  c.top_k = 1;
  Sampler<float> one(c);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(one.sample(logits, {}), 1);
}

TEST(Sampler, TopPKeepsExactlyTheNucleus) {
  {
    // Sorted: id1 0.4, id3 0.3, id2 0.2, id0 0.1. Mass 0.4 < 0.65 <= 0.7: nucleus {1, 3}.
    const Logits logits = logits_for({0.1, 0.4, 0.2, 0.3});
    SamplerConfig c = sampled(11);
    c.top_p = 0.65f;
    Sampler<float> s(c);
    expect_distribution(histogram(s, logits), {0, 0.4 / 0.7, 0, 0.3 / 0.7});
    c.top_p = 0.75f;  // 0.7 < 0.75 <= 0.9: {1, 3, 2}
    Sampler<float> s2(c);
    expect_distribution(histogram(s2, logits), {0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9});
    c.top_p = 0.3f;  // the best token alone
    Sampler<float> s3(c);
    expect_distribution(histogram(s3, logits), {0, 1, 0, 0});
  }
  {
    // Equal probabilities: the lower id joins the nucleus first.
    const Logits logits = logits_for({0.3, 0.3, 0.2, 0.2});
    SamplerConfig c = sampled(12);
    c.top_p = 0.7f;  // 0.3 + 0.3 + 0.2 = 0.8 >= 0.7: {0, 1, 2}
    Sampler<float> s(c);
    expect_distribution(histogram(s, logits), {0.375, 0.375, 0.25, 0});
  }
}

TEST(Sampler, TopPOnALargeVocabulary) {
  // Large enough that the nucleus spans several of the sampler's doubling blocks.
  constexpr int kV = 1000;
  tconst_test::SplitMix64 gen(99);
  std::vector<double> values(kV);
  for (double& v : values) v = gen.uniform_float(-2.0, 2.0);
  const Logits logits = make_logits(values);
  const std::vector<double> p = softmax(logits, 1.0);
  std::vector<int> order(kV);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<int> nucleus;
  double mass = 0;
  for (int id : order) {
    nucleus.push_back(id);
    mass += p[static_cast<size_t>(id)];
    if (mass >= 0.9) break;
  }
  ASSERT_GT(nucleus.size(), 200u);
  SamplerConfig c = sampled(13);
  c.top_p = 0.9f;
  Sampler<float> s(c);
  expect_distribution(histogram(s, logits), softmax(logits, 1.0, nucleus));
}

TEST(Sampler, TopKRunsBeforeTopP) {
  // After top-k = 2 the probabilities are 4/7 and 3/7, so top-p = 0.5 keeps only id 0; without
  // top-k it would keep ids 0 and 1 (0.4 < 0.5).
  const Logits logits = logits_for({0.4, 0.3, 0.2, 0.1});
  SamplerConfig c = sampled(14);
  c.top_p = 0.5f;
  Sampler<float> without_k(c);
  expect_distribution(histogram(without_k, logits), {4.0 / 7, 3.0 / 7, 0, 0});
  c.top_k = 2;
  Sampler<float> with_k(c);
  expect_distribution(histogram(with_k, logits), {1, 0, 0, 0});
}

TEST(Sampler, MinPDropsBelowTheThreshold) {
  // p_max = 0.5, min_p = 0.25: threshold 0.125 drops 0.05 and 0.1.
  const Logits logits = logits_for({0.05, 0.5, 0.15, 0.2, 0.1});
  SamplerConfig c = sampled(15);
  c.min_p = 0.25f;
  Sampler<float> s(c);
  expect_distribution(histogram(s, logits), {0, 0.5 / 0.85, 0.15 / 0.85, 0.2 / 0.85, 0});
  // With temperature 2 the probabilities flatten (p ~ sqrt(p)): sqrt(0.05)/sqrt(0.5) ~ 0.32 now
  // passes a 0.25 threshold, so nothing is dropped.
  c.temperature = 2.0f;
  Sampler<float> hot(c);
  expect_distribution(histogram(hot, logits), softmax(logits, 2.0));
}

TEST(Sampler, RepetitionPenaltyChangesTheArgmax) {
  SamplerConfig c;
  c.greedy = true;
  c.repetition_penalty = 1.2f;
  Sampler<float> s(c);
  // Positive logit divided: 2.0 / 1.2 = 1.67 < 1.9.
  EXPECT_EQ(s.sample(make_logits({2.0, 1.9, -1.0}), {}), 0);
  EXPECT_EQ(s.sample(make_logits({2.0, 1.9, -1.0}), {0}), 1);
  // Negative logit multiplied: -1.0 * 1.2 = -1.2 < -1.1.
  EXPECT_EQ(s.sample(make_logits({-1.0, -1.1}), {0}), 1);
  // Once per distinct id: three repeats are one penalty (2.0 / 1.2 = 1.67 > 1.5, whereas
  // compounding would give 2.0 / 1.728 = 1.16 < 1.5).
  EXPECT_EQ(s.sample(make_logits({2.0, 1.5}), {0, 0, 0}), 0);
  EXPECT_EQ(s.sample(make_logits({2.0, 1.95}), {0, 0, 0}), 1);
  // Only the last repetition_window tokens count.
  SamplerConfig w = c;
  w.repetition_window = 2;
  Sampler<float> windowed(w);
  EXPECT_EQ(windowed.sample(make_logits({2.0, 1.9, 0.0}), {0, 2, 2}), 0);
  EXPECT_EQ(windowed.sample(make_logits({2.0, 1.9, 0.0}), {2, 0, 2}), 1);
  w.repetition_window = 0;
  Sampler<float> off(w);
  EXPECT_EQ(off.sample(make_logits({2.0, 1.9, 0.0}), {0}), 0);
}

TEST(Sampler, RepetitionPenaltyAppliesBeforeTemperature) {
  const Logits logits = make_logits({1, 1, 1});
  SamplerConfig c = sampled(16);
  c.repetition_penalty = 2.0f;
  Sampler<float> s(c);
  expect_distribution(histogram(s, logits, {0}), softmax(make_logits({0.5, 1, 1}), 1.0));
}

TEST(Sampler, InfiniteLogits) {
  const float inf = std::numeric_limits<float>::infinity();
  Sampler<float> s(sampled(17));
  Logits forced(4);
  forced << 0, inf, 0, inf;
  expect_distribution(histogram(s, forced), {0, 0.5, 0, 0.5});
  Logits masked(3);
  masked << -inf, 0, -inf;
  expect_distribution(histogram(s, masked), {0, 1, 0});
  Logits all_masked(2);
  all_masked << -inf, -inf;
  EXPECT_THROW(s.sample(all_masked, {}), tconst::Error);
}

TEST(Sampler, BadInputsThrowAndLeaveNoTrace) {
  Sampler<float> s(sampled(18));
  EXPECT_THROW(s.sample(Logits(), {}), tconst::Error);
  Logits nan_logits = make_logits({0, 1});
  nan_logits[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(s.sample(nan_logits, {}), tconst::Error);

  SamplerConfig c;
  c.greedy = true;
  c.repetition_penalty = 1.2f;
  Sampler<float> g(c);
  const Logits logits = make_logits({2.0, 1.9});
  EXPECT_THROW(g.sample(logits, {0, 5}), tconst::Error);
  EXPECT_THROW(g.sample(logits, {-1}), tconst::Error);
  // The failed call must not leave id 0 marked as already penalised.
  EXPECT_EQ(g.sample(logits, {0}), 1);
}

TEST(Sampler, FixedDrawsForFixedSeed) {
  // Golden ids computed once: a seed must keep naming the same tokens across versions, so a change
  // here is a change users see.
  const Logits logits = make_logits({1.0, 2.0, 0.5, -1.0, 3.0, 0.0, 2.5, 1.5});
  SamplerConfig c = sampled(2024);
  c.temperature = 0.9f;
  c.top_p = 0.95f;
  Sampler<float> s(c);
  std::vector<int32_t> got;
  for (int i = 0; i < 16; ++i) got.push_back(s.sample(logits, {}));
  const std::vector<int32_t> expected = {4, 1, 4, 4, 1, 4, 4, 4, 6, 4, 1, 7, 7, 4, 1, 4};
  EXPECT_EQ(got, expected);
}

TEST(Sampler, CopiesContinueIndependently) {
  const Logits logits = make_logits({0, 0, 0, 0, 0, 0, 0, 0});
  Sampler<float> a(sampled(19));
  a.sample(logits, {});
  Sampler<float> b = a;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.sample(logits, {}), b.sample(logits, {}));
  a.reseed(19);
  Sampler<float> fresh(sampled(19));
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.sample(logits, {}), fresh.sample(logits, {}));
}

TEST(Sampler, NoAllocationAfterTheFirstCall) {
  constexpr int kV = 2000;
  tconst_test::SplitMix64 gen(5);
  std::vector<double> values(kV);
  for (double& v : values) v = gen.uniform_float(-3.0, 3.0);
  const Logits logits = make_logits(values);
  std::vector<int32_t> history;
  for (int i = 0; i < 100; ++i) history.push_back(static_cast<int32_t>(gen.next() % kV));

  std::vector<SamplerConfig> configs(5, sampled(20));
  configs[1].top_k = 50;
  configs[2].top_p = 0.9f;
  configs[3].min_p = 0.05f;
  configs[4].top_k = 500;
  configs[4].top_p = 0.8f;
  configs[4].min_p = 0.01f;
  configs[4].repetition_penalty = 1.3f;
  for (size_t i = 0; i < configs.size(); ++i) {
    Sampler<float> s(configs[i]);
    s.sample(logits, history);
    const long before = tconst_test::heap_allocations();
    for (int k = 0; k < 100; ++k) s.sample(logits, history);
    EXPECT_EQ(tconst_test::heap_allocations() - before, 0) << "config " << i;
  }
}

// ---------------------------------------------------------------------------------------------
// generate()

constexpr int kW = 4;  // generate window of the test model: a resync every 4 tokens

// One file per architecture for every test of the process (test_model() loads it once, and the
// cross-process test hands it to a child), so named for the process alone.
std::string model_path(const std::string& arch) {
  return tconst_test::process_temp_dir() + "sampling_" + arch + ".safetensors";
}

std::shared_ptr<const tconst::Model<float>> test_model(const std::string& arch = "tconstformer") {
  static std::shared_ptr<const tconst::Model<float>> models[2];
  const int which = arch == "tconstformer" ? 0 : 1;
  if (!models[which]) {
    const tconst_test::RefShape shape =
        which == 0 ? tconst_test::RefShape{"tconstformer", 48, 16, 2, 2, 3, kW, 4, 32}
                   : tconst_test::RefShape{"transformer", 48, 16, 2, 2, 0, 0, 0, 32};
    tconst_test::write_model(tconst_test::make_random_model(shape, 77), model_path(arch), "F32");
    models[which] = tconst::Model<float>::load(model_path(arch));
  }
  return models[which];
}

const std::vector<int32_t> kPrompt = {3, 14, 15, 9, 26, 5};

GenerateOptions sampled_options(int64_t n, uint64_t seed) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampler.temperature = 0.9f;
  o.sampler.top_p = 0.95f;
  o.sampler.repetition_penalty = 1.1f;
  o.sampler.seed = seed;
  return o;
}

GenerateOptions greedy_options(int64_t n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampler.greedy = true;
  return o;
}

struct Generated {
  std::vector<int32_t> ids;
  GenerateStats stats;
};

Generated generate_on(tconst::Session<float>& session, const std::vector<int32_t>& prompt,
                      const GenerateOptions& opt, const tconst::Tokenizer* tokenizer = nullptr) {
  Generated r;
  r.stats = tconst::generate(
      session, prompt, opt,
      [&](int32_t id) {
        r.ids.push_back(id);
        return true;
      },
      tokenizer);
  return r;
}

Generated generate_fresh(const GenerateOptions& opt, const tconst::Tokenizer* tokenizer = nullptr) {
  auto session = tconst::make_session(test_model());
  return generate_on(*session, kPrompt, opt, tokenizer);
}

TEST(Generate, SameSeedSameIds) {
  const Generated a = generate_fresh(sampled_options(40, 7));
  const Generated b = generate_fresh(sampled_options(40, 7));
  const Generated c = generate_fresh(sampled_options(40, 8));
  ASSERT_EQ(a.ids.size(), 40u);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_NE(a.ids, c.ids);
  // Sampling really samples on this model: many distinct tokens, not one greedy loop.
  std::vector<int32_t> distinct = a.ids;
  std::sort(distinct.begin(), distinct.end());
  EXPECT_GT(std::unique(distinct.begin(), distinct.end()) - distinct.begin(), 10);
}

TEST(Generate, GreedyEqualsManualFeedArgmaxAcrossResyncs) {
  for (const char* arch : {"tconstformer", "transformer"}) {
    SCOPED_TRACE(arch);
    const int64_t n = 5 * kW + 3;  // well past 3 resyncs
    auto session = tconst::make_session(test_model(arch));
    const Generated r = generate_on(*session, kPrompt, greedy_options(n));

    auto manual = tconst::make_session(test_model(arch));
    std::vector<int32_t> expected;
    const Logits* logits = &manual->prefill(kPrompt);
    for (int64_t i = 0; i < n; ++i) {
      expected.push_back(argmax(*logits));
      logits = &manual->feed(expected.back());
    }
    EXPECT_EQ(r.ids, expected);
    EXPECT_EQ(r.stats.generated, n);
    EXPECT_EQ(r.stats.prompt_tokens, static_cast<int64_t>(kPrompt.size()));
    EXPECT_EQ(r.stats.stop_reason, "budget");
    // The session consumed the prompt and every emitted token, and ends in the manual state.
    EXPECT_EQ(session->position(), static_cast<int64_t>(kPrompt.size()) + n);
    EXPECT_EQ(session->tokens(), manual->tokens());
    EXPECT_EQ(session->logits(), manual->logits());
    if (std::string(arch) == "tconstformer") {
      EXPECT_GT(session->resync_count(), 3);
    }
  }
}

TEST(Generate, SampledEqualsManualSamplerLoop) {
  const GenerateOptions opt = sampled_options(3 * kW + 5, 21);
  const Generated r = generate_fresh(opt);
  auto manual = tconst::make_session(test_model());
  Sampler<float> sampler(opt.sampler);
  std::vector<int32_t> expected;
  const Logits* logits = &manual->prefill(kPrompt);
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    expected.push_back(sampler.sample(*logits, manual->tokens()));
    logits = &manual->feed(expected.back());
  }
  EXPECT_EQ(r.ids, expected);
}

TEST(Generate, ContinuesSeamlessly) {
  const Generated whole = generate_fresh(greedy_options(4 * kW + 1));
  auto session = tconst::make_session(test_model());
  Generated first = generate_on(*session, kPrompt, greedy_options(7));
  const Generated second = generate_on(*session, {}, greedy_options(4 * kW + 1 - 7));
  first.ids.insert(first.ids.end(), second.ids.begin(), second.ids.end());
  EXPECT_EQ(first.ids, whole.ids);
  EXPECT_EQ(second.stats.prompt_tokens, 0);
}

TEST(Generate, CancellationStopsAtOnce) {
  auto session = tconst::make_session(test_model());
  int calls = 0;
  const GenerateStats stats =
      tconst::generate(*session, kPrompt, sampled_options(100, 3), [&](int32_t) {
        ++calls;
        return calls < 5;
      });
  EXPECT_EQ(calls, 5);
  EXPECT_EQ(stats.generated, 5);
  EXPECT_EQ(stats.stop_reason, "cancelled");
  // The cancelling token was emitted, so the session holds it too.
  EXPECT_EQ(session->position(), static_cast<int64_t>(kPrompt.size()) + 5);
}

TEST(Generate, StopIdStops) {
  const Generated reference = generate_fresh(sampled_options(30, 4));
  ASSERT_EQ(reference.ids.size(), 30u);
  const int32_t stop = reference.ids[12];
  const size_t first = static_cast<size_t>(
      std::find(reference.ids.begin(), reference.ids.end(), stop) - reference.ids.begin());
  GenerateOptions opt = sampled_options(30, 4);
  opt.stop_ids = {stop};
  const Generated r = generate_fresh(opt);
  EXPECT_EQ(r.stats.stop_reason, "stop_id");
  EXPECT_EQ(r.ids, std::vector<int32_t>(reference.ids.begin(), reference.ids.begin() + first + 1));
}

TEST(Generate, BudgetRespected) {
  for (int64_t n : {0, 1, 13}) {
    auto session = tconst::make_session(test_model());
    const Generated r = generate_on(*session, kPrompt, sampled_options(n, 5));
    EXPECT_EQ(static_cast<int64_t>(r.ids.size()), n);
    EXPECT_EQ(r.stats.generated, n);
    EXPECT_EQ(r.stats.stop_reason, "budget");
    EXPECT_EQ(session->position(), static_cast<int64_t>(kPrompt.size()) + n);
  }
}

TEST(Generate, StopsCleanlyAtMaxContext) {
  tconst::SessionOptions so;
  so.max_context = static_cast<int64_t>(kPrompt.size()) + 5;
  auto session = tconst::make_session(test_model(), so);
  const Generated r = generate_on(*session, kPrompt, sampled_options(50, 6));
  EXPECT_EQ(r.stats.generated, 5);
  EXPECT_EQ(r.stats.stop_reason, "context_full");
  EXPECT_EQ(session->position(), so.max_context);
}

// Several bytes per token, so that stop strings can straddle token boundaries.
class LetterTokenizer final : public tconst::Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view) const override { return {}; }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) s += token_bytes(id);
    return s;
  }
  std::string token_bytes(int32_t id) const override {
    return std::string(1, static_cast<char>('a' + id % 26)) + (id >= 26 ? "." : "");
  }
  int32_t vocab_size() const override { return 48; }
  std::string name() const override { return "letters"; }
};

TEST(Generate, StopStringStopsOnTheCompletingToken) {
  const LetterTokenizer tok;
  const Generated reference = generate_fresh(sampled_options(30, 9));
  ASSERT_EQ(reference.ids.size(), 30u);
  // A stop string made of the last byte of token 14 and all of token 15: it straddles a boundary.
  const std::string last_of_14 =
      tok.token_bytes(reference.ids[14]).substr(tok.token_bytes(reference.ids[14]).size() - 1);
  const std::string stop = last_of_14 + tok.token_bytes(reference.ids[15]);
  // Where it first becomes complete (maybe earlier than token 15).
  size_t expected = 0;
  std::string text;
  for (; expected < reference.ids.size(); ++expected) {
    text += tok.token_bytes(reference.ids[expected]);
    if (text.find(stop) != std::string::npos) break;
  }
  ASSERT_LE(expected, 15u);

  GenerateOptions opt = sampled_options(30, 9);
  opt.stop_strings = {"never-generated", stop};
  const Generated r = generate_fresh(opt, &tok);
  EXPECT_EQ(r.stats.stop_reason, "stop_string");
  EXPECT_EQ(r.ids,
            std::vector<int32_t>(reference.ids.begin(), reference.ids.begin() + expected + 1));

  // A string that never occurs: generation runs to the budget.
  opt.stop_strings = {"never-generated"};
  const Generated none = generate_fresh(opt, &tok);
  EXPECT_EQ(none.stats.stop_reason, "budget");
  EXPECT_EQ(none.ids, reference.ids);
}

TEST(Generate, StopStringIgnoresThePrompt) {
  const LetterTokenizer tok;
  GenerateOptions opt = greedy_options(5);
  // The prompt spells "d" "o" ...: a stop string found only in the prompt must not stop.
  opt.stop_strings = {tok.token_bytes(kPrompt[0]) + tok.token_bytes(kPrompt[1])};
  const Generated plain = generate_fresh(greedy_options(5));
  std::string generated = tok.decode(plain.ids);
  ASSERT_EQ(generated.find(opt.stop_strings[0]), std::string::npos);
  const Generated r = generate_fresh(opt, &tok);
  EXPECT_EQ(r.stats.stop_reason, "budget");
  EXPECT_EQ(r.ids.size(), 5u);
}

TEST(Generate, BadArgumentsThrowBeforeConsumingAnything) {
  const LetterTokenizer tok;
  auto session = tconst::make_session(test_model());
  const auto ignore = [](int32_t) { return true; };
  EXPECT_THROW(tconst::generate(*session, {}, greedy_options(3), ignore), tconst::Error);
  GenerateOptions o = greedy_options(-1);
  EXPECT_THROW(tconst::generate(*session, kPrompt, o, ignore), tconst::Error);
  o = greedy_options(3);
  o.stop_strings = {"x"};
  EXPECT_THROW(tconst::generate(*session, kPrompt, o, ignore), tconst::Error);  // no tokenizer
  o.stop_strings = {""};
  EXPECT_THROW(tconst::generate(*session, kPrompt, o, ignore, &tok), tconst::Error);
  o = greedy_options(3);
  o.stop_ids = {48};
  EXPECT_THROW(tconst::generate(*session, kPrompt, o, ignore), tconst::Error);
  o = greedy_options(3);
  o.sampler.top_p = 0;
  EXPECT_THROW(tconst::generate(*session, kPrompt, o, ignore), tconst::Error);
  EXPECT_THROW(tconst::generate(*session, {3, 99}, greedy_options(3), ignore), tconst::Error);
  EXPECT_EQ(session->position(), 0);
  // An empty callback never cancels.
  const GenerateStats stats = tconst::generate(*session, kPrompt, greedy_options(4), nullptr);
  EXPECT_EQ(stats.generated, 4);
}

// ---------------------------------------------------------------------------------------------
// The same sampled generation in separate processes: nothing in it may depend on addresses, the
// time, or anything else that differs between runs. The test binary re-runs itself with
// TCONST_SAMPLING_CHILD set to the model path; the child prints its ids on one marked line.

constexpr char kChildEnv[] = "TCONST_SAMPLING_CHILD";
constexpr char kIdsMarker[] = "TCONST_SAMPLING_IDS:";

std::string ids_line(const std::string& path) {
  auto model = tconst::Model<float>::load(path);
  auto session = tconst::make_session(model);
  GenerateOptions opt = sampled_options(3 * kW + 7, 31337);
  opt.sampler.top_k = 20;
  opt.sampler.min_p = 0.02f;
  const Generated r = generate_on(*session, kPrompt, opt);
  std::string line = kIdsMarker;
  for (int32_t id : r.ids) line += " " + std::to_string(id);
  return line;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

TEST(CrossProcess, SameIdsInSeparateProcesses) {
  if (const char* child_model = std::getenv(kChildEnv)) {
    std::printf("%s\n", ids_line(child_model).c_str());
    std::fflush(stdout);
    return;
  }
#if defined(__linux__)
  test_model();  // writes the file
  const std::string path = model_path("tconstformer");
  const std::string mine = ids_line(path);

  // popen runs a shell, so /proc/self/exe must be resolved here, not in the command line.
  std::vector<char> exe(4096);
  const ssize_t len = ::readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  ASSERT_GT(len, 0);
  const std::string self(exe.data(), static_cast<size_t>(len));
  const std::string command = std::string(kChildEnv) + "=" + shell_quote(path) + " " +
                              shell_quote(self) +
                              " --gtest_filter=CrossProcess.SameIdsInSeparateProcesses 2>&1";
  for (int child = 0; child < 2; ++child) {
    FILE* pipe = ::popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string output;
    char buf[4096];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, pipe)) > 0) output.append(buf, got);
    const int status = ::pclose(pipe);
    EXPECT_EQ(status, 0) << output;
    const size_t at = output.find(kIdsMarker);
    ASSERT_NE(at, std::string::npos) << output;
    const std::string theirs = output.substr(at, output.find('\n', at) - at);
    EXPECT_EQ(theirs, mine) << "child " << child;
  }
#else
  GTEST_SKIP() << "needs /proc/self/exe";
#endif
}

}  // namespace
