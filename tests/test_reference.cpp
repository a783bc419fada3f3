// Checks the test-only ground truth itself: the naive SPEC §4 forward against the authors' golden
// logits, the safetensors writer against an independent reader, and the random models' scale.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/naive_forward.hpp"
#include "support/ref_loader.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "support/tokens.hpp"

namespace tconst_test {
namespace {

const std::string kGoldenDir = std::string(TCONST_TEST_DATA_DIR) + "/golden/";

std::vector<int> read_ids(const std::string& path) {
  std::ifstream is(path);
  if (!is) throw std::runtime_error("cannot open " + path);
  std::vector<int> ids;
  int x;
  while (is >> x) ids.push_back(x);
  return ids;
}

void expect_same_model(const RefModel& a, const RefModel& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.V, b.V);
  EXPECT_EQ(a.d, b.d);
  EXPECT_EQ(a.h, b.h);
  EXPECT_EQ(a.B, b.B);
  EXPECT_EQ(a.D, b.D);
  EXPECT_EQ(a.W, b.W);
  EXPECT_EQ(a.Hh, b.Hh);
  EXPECT_EQ(a.f, b.f);
  EXPECT_EQ(a.base, b.base);
  EXPECT_EQ(a.eps, b.eps);
  EXPECT_EQ(a.embedding, b.embedding);
  EXPECT_EQ(a.norm_w, b.norm_w);
  EXPECT_EQ(a.norm_b, b.norm_b);
  EXPECT_EQ(a.lm_head, b.lm_head);
  ASSERT_EQ(a.blocks.size(), b.blocks.size());
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    ASSERT_EQ(a.blocks[i].size(), b.blocks[i].size());
    for (size_t j = 0; j < a.blocks[i].size(); ++j) {
      const RefLayer &x = a.blocks[i][j], &y = b.blocks[i][j];
      EXPECT_EQ(x.norm1_w, y.norm1_w);
      EXPECT_EQ(x.norm1_b, y.norm1_b);
      EXPECT_EQ(x.norm2_w, y.norm2_w);
      EXPECT_EQ(x.norm2_b, y.norm2_b);
      EXPECT_EQ(x.qkv_w, y.qkv_w);
      EXPECT_EQ(x.qkv_b, y.qkv_b);
      EXPECT_EQ(x.out_w, y.out_w);
      EXPECT_EQ(x.out_b, y.out_b);
      EXPECT_EQ(x.w1, y.w1);
      EXPECT_EQ(x.w3, y.w3);
      EXPECT_EQ(x.w2, y.w2);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Golden cases from the authors' PyTorch model.

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, NaiveForwardMatchesAuthorsLogits) {
  const std::string dir = kGoldenDir + GetParam() + "/";
  const RefModel m = load_ref_model(dir + "model.safetensors");
  const std::vector<int> ids = read_ids(dir + "ids.txt");
  const std::vector<float> ref = read_f32(dir + "ref_logits.f32");
  ASSERT_FALSE(ids.empty());
  ASSERT_EQ(ref.size(), ids.size() * static_cast<size_t>(m.V));

  const auto rows = naive_stream_logits(m, ids);
  double worst = 0.0, worst_ratio = 0.0;
  for (size_t p = 0; p < ids.size(); ++p) {
    double max_logit = 0.0, diff = 0.0;
    for (int v = 0; v < m.V; ++v) {
      const double r = ref[p * m.V + v];
      max_logit = std::max(max_logit, std::fabs(r));
      diff = std::max(diff, std::fabs(rows[p][v] - r));
    }
    const double tol = 2e-4 * (1.0 + max_logit);
    EXPECT_LE(diff, tol) << "row p = " << p;
    worst = std::max(worst, diff);
    worst_ratio = std::max(worst_ratio, diff / tol);
  }
  std::printf("[golden %s] max abs diff %.3g (%.3g of tolerance) over %zu rows\n",
              GetParam().c_str(), worst, worst_ratio, ids.size());
  RecordProperty("max_abs_diff", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(Golden, GoldenTest,
                         ::testing::Values("tconst_D4_W8_H8", "tlin_D4_W8_H8", "transformer_L4"));

TEST(Golden, ModelRewritesIdentically) {
  const RefModel m = load_ref_model(kGoldenDir + "tconst_D4_W8_H8/model.safetensors");
  const std::string path = temp_path("golden_rewrite.safetensors");
  write_model(m, path, "F32");
  expect_same_model(m, load_ref_model(path));
  std::remove(path.c_str());
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions and formatting.

TEST(Conversions, HalfKnownValues) {
  EXPECT_EQ(float_to_f16_bits(0.0f), 0x0000);
  EXPECT_EQ(float_to_f16_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_f16_bits(1.0f), 0x3C00);
  EXPECT_EQ(float_to_f16_bits(-2.0f), 0xC000);
  EXPECT_EQ(float_to_f16_bits(65504.0f), 0x7BFF);  // largest finite
  EXPECT_EQ(float_to_f16_bits(65519.0f), 0x7BFF);  // below the rounding midpoint
  EXPECT_EQ(float_to_f16_bits(65520.0f), 0x7C00);  // midpoint ties up to infinity
  EXPECT_EQ(float_to_f16_bits(1e10f), 0x7C00);
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (0)
  EXPECT_EQ(float_to_f16_bits(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp: tie to even (2)
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -26)), 0x0000);
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0); 1 + 3*2^-11 ties up.
  EXPECT_EQ(float_to_f16_bits(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(float_to_f16_bits(1.0f + std::ldexp(3.0f, -11)), 0x3C02);
  EXPECT_EQ(float_to_f16_bits(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  // Subnormal that rounds up into the smallest normal.
  EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -30)), 0x0400);
  EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(NAN))));
  EXPECT_EQ(f16_bits_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_bits_to_float(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_bits_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_bits_to_float(0xC000), -2.0f);
  // Every finite half survives half -> float -> half.
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    if ((b & 0x7C00u) == 0x7C00u) continue;
    ASSERT_EQ(float_to_f16_bits(f16_bits_to_float(static_cast<uint16_t>(b))), b);
  }
}

TEST(Conversions, BFloat16KnownValues) {
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(-2.0f), 0xC000);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even.
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(3.0f, -8)), 0x3F82);
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(float_to_bf16_bits(3.4028235e38f), 0x7F80);  // FLT_MAX rounds to infinity
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(NAN))));
}

TEST(Conversions, DoubleTextRoundTrips) {
  EXPECT_EQ(format_double_exact(10000.0), "10000");
  EXPECT_EQ(format_double_exact(1e-5), "1e-05");
  for (double x : {0.1, 1.0 / 3.0, 123456.789e-7, 5e5}) {
    EXPECT_EQ(std::strtod(format_double_exact(x).c_str(), nullptr), x);
  }
}

// ---------------------------------------------------------------------------------------------
// Writer + independent reader.

class RoundTripTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RoundTripTest, EveryArchitecture) {
  const std::string dtype = GetParam();
  const std::vector<RefShape> shapes = {
      {"tconstformer", 37, 16, 2, 2, 3, 4, 6, 24, /*tied=*/false},
      {"tlinformer", 29, 12, 3, 1, 2, 5, 5, 20, true},
      {"transformer", 23, 8, 2, 3, 0, 0, 0, 16, false},
  };
  for (size_t i = 0; i < shapes.size(); ++i) {
    RefModel m = make_random_model(shapes[i], 100 + i);
    m.base = 5e5;  // exercise non-default metadata values
    m.eps = 1e-6;
    const std::string path = temp_path(shapes[i].arch + "_" + dtype + ".safetensors");
    write_model(m, path, dtype);
    const RefModel back = load_ref_model(path);
    const RefModel expect = rounded_copy(m, dtype);
    expect_same_model(expect, back);
    // The narrow dtypes really round, and only by about their precision.
    const double rel = dtype == "F16" ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
    if (dtype == "F16" || dtype == "BF16") {
      EXPECT_NE(expect.embedding, m.embedding);
      for (size_t k = 0; k < m.embedding.size(); ++k) {
        // Absolute slack for values in F16's subnormal range.
        EXPECT_LE(std::fabs(expect.embedding[k] - m.embedding[k]),
                  rel * std::fabs(m.embedding[k]) + 1e-7);
      }
    } else {
      expect_same_model(m, back);  // F32/F64 are exact for float-exact weights
    }
    std::remove(path.c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RoundTripTest, ::testing::Values("F32", "F64", "F16", "BF16"));

TEST(Writer, HeaderIsPaddedAndMetadataComplete) {
  const RefModel m = make_random_model({"tconstformer", 11, 8, 2, 1, 3, 4, 4, 8}, 7);
  const auto meta = model_metadata(m);
  EXPECT_EQ(meta.at("tconst.format"), "1");
  EXPECT_EQ(meta.at("tconst.architecture"), "tconstformer");
  EXPECT_EQ(meta.at("tconst.block_inner_depth"), "3");
  EXPECT_EQ(meta.at("tconst.history_window"), "4");
  EXPECT_EQ(meta.at("tconst.generate_window"), "4");
  EXPECT_EQ(meta.at("tconst.rope_base"), "10000");
  EXPECT_EQ(meta.at("tconst.norm_eps"), "1e-05");
  const auto tensors = model_tensors(m, "BF16");
  EXPECT_EQ(tensors.size(), 3u + 3u * 11u);  // tied: no lm_head
  EXPECT_EQ(tensors[4].name.rfind("transformer.transformer_layers.0.compress_context_layer.", 0),
            0u);
  const std::string path = temp_path("padding.safetensors");
  write_model(m, path, "BF16");
  std::ifstream is(path, std::ios::binary);
  uint8_t len[8];
  is.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int b = 0; b < 8; ++b) n |= static_cast<uint64_t>(len[b]) << (8 * b);
  EXPECT_EQ(n % 8, 0u);
  std::remove(path.c_str());

  const auto base_meta =
      model_metadata(make_random_model({"transformer", 11, 8, 2, 2, 0, 0, 0, 8}, 7));
  EXPECT_EQ(base_meta.count("tconst.block_inner_depth"), 0u);
  EXPECT_EQ(base_meta.count("tconst.generate_window"), 0u);
}

// ---------------------------------------------------------------------------------------------
// Random models and internal consistency of the reference.

TEST(RandomModel, DeterministicAndFloatExact) {
  const RefShape s{"tconstformer", 17, 8, 2, 1, 2, 3, 3, 12};
  const RefModel a = make_random_model(s, 42), b = make_random_model(s, 42);
  const RefModel c = make_random_model(s, 43);
  expect_same_model(a, b);
  EXPECT_NE(a.embedding, c.embedding);
  expect_same_model(a, rounded_copy(a, "F32"));
  // Pin the generator so a change of weights on some platform is noticed.
  SplitMix64 rng(0);
  EXPECT_EQ(rng.next(), 0xE220A8397B1DCDAFULL);
}

TEST(RandomModel, LogitsHaveUnitOrderSpread) {
  const std::vector<RefShape> shapes = {
      {"tconstformer", 61, 32, 4, 2, 4, 8, 8, 96},
      {"tlinformer", 50, 24, 2, 1, 3, 4, 8, 64},
      {"transformer", 40, 64, 4, 2, 0, 0, 0, 128, false},
      {"tconstformer", 100, 96, 4, 1, 2, 4, 4, 160, false},
  };
  for (size_t i = 0; i < shapes.size(); ++i) {
    const RefModel m = make_random_model(shapes[i], 9 + i);
    const std::vector<int> t = random_tokens(21, m.V, 77 + i);  // Lc > Hh where it applies
    for (int L : {1, 5, 21}) {
      const auto logits = naive_last_logits(m, std::vector<int>(t.begin(), t.begin() + L));
      const auto mm = std::minmax_element(logits.begin(), logits.end());
      const double spread = *mm.second - *mm.first;
      std::printf("[spread] %s d=%d L=%d: %.3f\n", m.arch.c_str(), m.d, L, spread);
      EXPECT_GT(spread, 0.5);
      EXPECT_LT(spread, 50.0);
    }
  }
}

// With no context (L <= W) every layer is plain causal self-attention at positions 0.., so a
// TConstFormer equals the baseline made of its B*D layers in order, and TLinFormer equals it too.
TEST(NaiveForward, NoContextEqualsChainedBaseline) {
  const RefModel tc = make_random_model({"tconstformer", 31, 16, 2, 2, 3, 6, 4, 32, false}, 5);
  RefModel tl = tc;
  tl.arch = "tlinformer";
  RefModel base = tc;
  base.arch = "transformer";
  base.D = base.W = base.Hh = 0;
  base.blocks.clear();
  for (const auto& block : tc.blocks)
    for (const auto& layer : block) base.blocks.push_back({layer});
  base.B = static_cast<int>(base.blocks.size());

  const std::vector<int> t = random_tokens(6, tc.V, 3);
  for (int L = 1; L <= 6; ++L) {
    const std::vector<int> prefix(t.begin(), t.begin() + L);
    const auto a = naive_last_logits(tc, prefix);
    EXPECT_LE(max_abs_diff(a, naive_last_logits(base, prefix)), 1e-12) << "L = " << L;
    EXPECT_LE(max_abs_diff(a, naive_last_logits(tl, prefix)), 1e-12) << "L = " << L;
  }
  // With context, the architectures differ.
  const std::vector<int> longer = random_tokens(9, tc.V, 4);
  EXPECT_GT(max_abs_diff(naive_last_logits(tc, longer), naive_last_logits(tl, longer)), 1e-6);
}

// Once Lc > Hh, context rows before hs still matter (through the compress layer's keys), and the
// logits depend on the tokens of the window.
TEST(NaiveForward, EarlyContextStillMatters) {
  const RefModel m = make_random_model({"tconstformer", 31, 16, 2, 1, 2, 4, 4, 32}, 6);
  std::vector<int> t = random_tokens(13, m.V, 8);  // Lc = 12, hs = 8
  const auto a = naive_last_logits(m, t);
  t[0] = (t[0] + 1) % m.V;
  EXPECT_GT(max_abs_diff(a, naive_last_logits(m, t)), 1e-6);
}

TEST(NaiveForward, RejectsBadInput) {
  const RefModel m = make_random_model({"transformer", 11, 8, 2, 1, 0, 0, 0, 8}, 1);
  EXPECT_THROW(naive_last_logits(m, {}), std::invalid_argument);
  EXPECT_THROW(naive_last_logits(m, {11}), std::invalid_argument);
  EXPECT_THROW(naive_last_logits(m, {-1}), std::invalid_argument);
}

}  // namespace
}  // namespace tconst_test
