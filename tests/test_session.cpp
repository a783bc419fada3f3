// The session against the naive SPEC §4 forward: streaming logits for many shapes across several
// resyncs, in double and float; prefill and score against token-by-token feeding; the fixed cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/naive_forward.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "support/tokens.hpp"
#include "tconst/batch.hpp"
#include "tconst/tconst.hpp"

namespace {

using tconst_test::max_abs_diff;
using tconst_test::random_tokens;
using tconst_test::RefModel;
using tconst_test::RefShape;
using tconst_test::temp_path;

struct Case {
  const char* name;
  RefShape shape;
};

// D = 2, 3, 4; B = 1, 2, 3; Hh < W, = W, > W; odd V; dh = 2, 6, 12; TLinFormer; baseline.
const Case kCases[] = {
    {"tconst_D2_B1_HeqW_dh6", {"tconstformer", 31, 12, 2, 1, 2, 4, 4, 20}},
    {"tconst_D3_B2_HltW_dh2", {"tconstformer", 23, 8, 4, 2, 3, 4, 2, 16}},
    {"tconst_D4_B3_HgtW_dh12", {"tconstformer", 37, 24, 2, 3, 4, 3, 7, 40}},
    {"tconst_D4_B2_W5_dh6_untied", {"tconstformer", 29, 12, 2, 2, 4, 5, 5, 24, false}},
    {"tconst_D3_B1_H1", {"tconstformer", 17, 8, 2, 1, 3, 2, 1, 12}},
    {"tlin_D3_B2_HltW", {"tlinformer", 19, 12, 2, 2, 3, 4, 3, 20}},
    {"tlin_D2_B1_HgtW_dh2", {"tlinformer", 21, 8, 4, 1, 2, 3, 8, 16}},
    {"tlin_D4_B2_dh12", {"tlinformer", 25, 24, 2, 2, 4, 3, 3, 32}},
    {"transformer_B3", {"transformer", 27, 12, 2, 3, 0, 0, 0, 20}},
    {"transformer_B1_dh2", {"transformer", 15, 8, 4, 1, 0, 0, 0, 12}},
};

int stream_length(const RefShape& s) {
  // At least 4 resyncs for the windowed architectures, plus a partial window.
  return s.arch == "transformer" ? 23 : 5 * s.W + 2;
}

class SessionVsReference : public ::testing::TestWithParam<Case> {};

template <typename Scalar>
void check_stream(const Case& c, double tol) {
  const RefModel ref = tconst_test::make_random_model(c.shape, 1234);
  const std::string path =
      temp_path(std::string(c.name) + (sizeof(Scalar) == 8 ? "_d" : "_f") + ".safetensors");
  tconst_test::write_model(ref, path, "F32");
  auto model = tconst::Model<Scalar>::load(path);
  auto session = tconst::make_session(model);
  const std::vector<int> tokens = random_tokens(stream_length(c.shape), c.shape.V, 99);
  const auto expected = tconst_test::naive_stream_logits(ref, tokens);
  double worst = 0;
  for (size_t p = 0; p < tokens.size(); ++p) {
    const auto& logits = session->feed(tokens[p]);
    const double diff = max_abs_diff(logits, expected[p]);
    worst = std::max(worst, diff);
    ASSERT_LE(diff, tol) << c.name << " at position " << p;
  }
  if (c.shape.arch != "transformer") {
    EXPECT_EQ(session->resync_count(), static_cast<int64_t>((tokens.size() - 1) / c.shape.W));
    EXPECT_GE(session->resync_count(), 4);
  }
  ::testing::Test::RecordProperty("max_abs_diff", std::to_string(worst));
}

TEST_P(SessionVsReference, StreamingEqualsFullForwardDouble) {
  check_stream<double>(GetParam(), 1e-9);
}

TEST_P(SessionVsReference, StreamingEqualsFullForwardFloat) {
  check_stream<float>(GetParam(), 1e-4);
}

// Prefill of any length leaves the state of token-by-token feeding; so does score(), which must
// also report every row's logits.
TEST_P(SessionVsReference, PrefillAndScoreEqualFeeding) {
  const Case& c = GetParam();
  const RefModel ref = tconst_test::make_random_model(c.shape, 77);
  const std::string path = temp_path(std::string(c.name) + "_prefill.safetensors");
  tconst_test::write_model(ref, path, "F32");
  auto model = tconst::Model<double>::load(path);
  const int W = c.shape.arch == "transformer" ? 4 : c.shape.W;
  const int total = 4 * W + 3;
  const std::vector<int> ids = random_tokens(total, c.shape.V, 5);
  const std::vector<int32_t> ids32(ids.begin(), ids.end());

  auto fed = tconst::make_session(model);
  std::vector<tconst::Vector<double>> fed_logits;
  for (int32_t t : ids32) fed_logits.push_back(fed->feed(t));

  for (int len : {1, W - 1, W, W + 1, 2 * W, 3 * W + 2}) {
    if (len < 1 || len >= total) continue;
    auto s = tconst::make_session(model);
    const auto& after = s->prefill(ids32.data(), static_cast<size_t>(len));
    EXPECT_LE(max_abs_diff(after, fed_logits[len - 1]), 1e-10) << "prefill length " << len;
    EXPECT_EQ(s->position(), len);
    if (c.shape.arch != "transformer") {
      EXPECT_EQ(s->resync_count(), len > W ? 1 : 0) << "one resync for a prefill of " << len;
    }
    // Continue token by token, across the next resync.
    for (int p = len; p < total; ++p) {
      ASSERT_LE(max_abs_diff(s->feed(ids32[p]), fed_logits[p]), 1e-10)
          << "prefill " << len << ", then position " << p;
    }
  }

  // Prefill in pieces that end anywhere relative to the window boundaries.
  auto pieces = tconst::make_session(model);
  int at = 0;
  for (int piece : {2, W, 1, W + 1, 3}) {
    piece = std::min(piece, total - at);
    pieces->prefill(ids32.data() + at, static_cast<size_t>(piece));
    at += piece;
    ASSERT_LE(max_abs_diff(pieces->logits(), fed_logits[at - 1]), 1e-10) << "after " << at;
  }

  auto scored = tconst::make_session(model);
  std::vector<size_t> seen;
  scored->score(ids32.data(), ids32.size(), [&](size_t i, const tconst::Vector<double>& l) {
    seen.push_back(i);
    EXPECT_LE(max_abs_diff(l, fed_logits[i]), 1e-10) << "score row " << i;
  });
  ASSERT_EQ(seen.size(), ids32.size());
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], i);
  EXPECT_LE(max_abs_diff(scored->feed(3), fed->feed(3)), 1e-10);
}

// copy() gives an independent session; reset() forgets the stream.
TEST_P(SessionVsReference, CopyAndReset) {
  const Case& c = GetParam();
  const RefModel ref = tconst_test::make_random_model(c.shape, 8);
  const std::string path = temp_path(std::string(c.name) + "_copy.safetensors");
  tconst_test::write_model(ref, path, "F32");
  auto model = tconst::Model<double>::load(path);
  const std::vector<int> ids = random_tokens(3 * std::max(c.shape.W, 4) + 1, c.shape.V, 6);
  auto a = tconst::make_session(model);
  for (size_t i = 0; i + 2 < ids.size(); ++i) a->feed(ids[i]);
  auto b = a->copy();
  const tconst::Vector<double> la = a->feed(ids[ids.size() - 2]);
  const tconst::Vector<double> lb = b->feed(ids[ids.size() - 2]);
  EXPECT_EQ(max_abs_diff(la, lb), 0.0);
  a->feed(ids.back());
  EXPECT_EQ(b->position() + 1, a->position());
  a->reset();
  EXPECT_EQ(a->position(), 0);
  EXPECT_EQ(a->logits().size(), 0);
  auto fresh = tconst::make_session(model);
  EXPECT_EQ(max_abs_diff(a->feed(ids[0]), fresh->feed(ids[0])), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SessionVsReference, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// F16 and BF16 files load and give the logits of their rounded weights; F64 loads too.
TEST(SessionDtypes, HalfAndDoubleFilesLoad) {
  const RefShape shape{"tconstformer", 19, 12, 2, 2, 3, 3, 4, 16};
  const RefModel ref = tconst_test::make_random_model(shape, 21);
  const std::vector<int> tokens = random_tokens(4 * shape.W + 1, shape.V, 2);
  for (const char* dtype : {"F16", "BF16", "F64"}) {
    const std::string path = temp_path(std::string("dtype_") + dtype + ".safetensors");
    tconst_test::write_model(ref, path, dtype);
    const RefModel rounded = tconst_test::rounded_copy(ref, dtype);
    const auto expected = tconst_test::naive_stream_logits(rounded, tokens);
    auto session = tconst::make_session(tconst::Model<double>::load(path));
    for (size_t p = 0; p < tokens.size(); ++p) {
      ASSERT_LE(max_abs_diff(session->feed(tokens[p]), expected[p]), 1e-9) << dtype << " " << p;
    }
  }
}

// The fixed cache: its size is SPEC §5's formula, and over 10*W tokens neither its size nor its
// storage address changes. TLinFormer's and the baseline's caches grow.
TEST(FixedCache, NeverGrowsOrMoves) {
  const RefShape shape{"tconstformer", 23, 16, 4, 2, 4, 4, 6, 24};
  const RefModel ref = tconst_test::make_random_model(shape, 3);
  const std::string path = temp_path("fixed.safetensors");
  tconst_test::write_model(ref, path, "F32");
  auto model = tconst::Model<float>::load(path);
  tconst::TConstSession<float> s(model);
  const size_t formula = static_cast<size_t>(shape.B) *
                         ((shape.D - 1) * shape.Hh + shape.D * shape.W) * 2 * shape.d *
                         sizeof(float);
  EXPECT_EQ(s.cache_bytes(), formula);
  EXPECT_EQ(s.cache().bytes(), formula);
  const float* storage = s.cache().data();
  for (int p = 0; p < 10 * shape.W; ++p) {
    s.feed(p % shape.V);
    ASSERT_EQ(s.cache_bytes(), formula);
    ASSERT_EQ(s.cache().data(), storage);
    ASSERT_LE(s.cache().window_rows(), shape.W);
    ASSERT_LE(s.cache().z_rows(), shape.Hh);
  }
  EXPECT_EQ(s.resync_count(), (10 * shape.W - 1) / shape.W);
}

TEST(FixedCache, TLinAndBaselineGrow) {
  const RefShape tl{"tlinformer", 23, 16, 4, 2, 3, 4, 4, 24};
  const RefShape tr{"transformer", 23, 16, 4, 3, 0, 0, 0, 24};
  for (const RefShape& shape : {tl, tr}) {
    const std::string path = temp_path("grow_" + shape.arch + ".safetensors");
    tconst_test::write_model(tconst_test::make_random_model(shape, 4), path, "F32");
    auto s = tconst::make_session(tconst::Model<float>::load(path));
    std::vector<size_t> sizes;
    for (int p = 0; p < 40; ++p) {
      s->feed(p % shape.V);
      sizes.push_back(s->cache_bytes());
    }
    EXPECT_GT(sizes.back(), sizes[8]) << shape.arch;
  }
}

}  // namespace

namespace {

// Several streams stepped together give the logits of stepping each alone, across resyncs, and
// with streams at different positions.
TEST(FeedStreams, EqualsFeedingEachSession) {
  for (const char* arch : {"tconstformer", "tlinformer"}) {
    const RefShape shape{arch, 29, 12, 2, 2, 3, 4, 5, 20};
    const std::string path = temp_path(std::string("streams_") + arch + ".safetensors");
    tconst_test::write_model(tconst_test::make_random_model(shape, 17), path, "F32");
    auto model = tconst::Model<double>::load(path);
    const size_t S = 5;
    std::vector<std::unique_ptr<tconst::TConstSession<double>>> batched, alone;
    for (size_t i = 0; i < S; ++i) {
      batched.push_back(std::make_unique<tconst::TConstSession<double>>(model));
      alone.push_back(std::make_unique<tconst::TConstSession<double>>(model));
      // Different starting positions: stream i has consumed i tokens.
      for (size_t k = 0; k < i; ++k) {
        batched.back()->feed(static_cast<int32_t>(k + 1));
        alone.back()->feed(static_cast<int32_t>(k + 1));
      }
    }
    std::vector<tconst::TConstSession<double>*> ptrs;
    for (auto& b : batched) ptrs.push_back(b.get());
    tconst::StreamBatch<double> batch;
    for (int step = 0; step < 5 * shape.W + 3; ++step) {
      std::vector<int32_t> tokens;
      for (size_t i = 0; i < S; ++i)
        tokens.push_back(static_cast<int32_t>((step * 7 + i * 3) % 29));
      batch.feed(ptrs, tokens);
      for (size_t i = 0; i < S; ++i) {
        const auto& expected = alone[i]->feed(tokens[i]);
        ASSERT_LE(max_abs_diff(batched[i]->logits(), expected), 1e-10)
            << arch << " stream " << i << " step " << step;
        ASSERT_EQ(batched[i]->position(), alone[i]->position());
      }
    }
    // A bad id changes nothing in any stream.
    const auto before = batched[0]->position();
    EXPECT_THROW(batch.feed(ptrs, std::vector<int32_t>(S, 29)), tconst::Error);
    EXPECT_EQ(batched[0]->position(), before);
  }
}

}  // namespace
