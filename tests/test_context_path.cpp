// The resync (context_path.hpp): bounded working memory, and the same logits whether a resync
// recomputes each block's context rows from the tokens or keeps them, both against the naive
// SPEC §4 forward, for shapes of one to four blocks and for contexts of many chunks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "support/naive_forward.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "support/tokens.hpp"
#include "tconst/batch.hpp"
#include "tconst/tconst.hpp"

namespace {

using tconst_test::RefModel;
using tconst_test::RefShape;

struct Case {
  const char* name;
  RefShape shape;
};

// B = 1..4; Hh below, at and above W; TLinFormer too.
const Case kCases[] = {
    {"tconst_B1", {"tconstformer", 23, 12, 2, 1, 3, 4, 4, 20}},
    {"tconst_B2_HgtW", {"tconstformer", 29, 12, 2, 2, 2, 3, 5, 24}},
    {"tconst_B3_HltW", {"tconstformer", 31, 8, 2, 3, 3, 5, 3, 16}},
    {"tconst_B4_D2", {"tconstformer", 19, 12, 3, 4, 2, 4, 6, 20}},
    {"tlin_B3", {"tlinformer", 21, 12, 2, 3, 3, 4, 4, 20}},
};

std::string temp_model(const std::string& name) {
  return tconst_test::temp_path(name + ".safetensors");
}

std::vector<int> tokens_for(const RefShape& s, int n) {
  return tconst_test::random_tokens(n, s.V, 4321);
}

class ResyncModes : public ::testing::TestWithParam<Case> {};

template <typename Scalar>
void check_modes(const Case& c, double tol, double modes_tol) {
  const RefModel ref = tconst_test::make_random_model(c.shape, 2024);
  const std::string path = temp_model(std::string(c.name) + (sizeof(Scalar) == 8 ? "_d" : "_f"));
  tconst_test::write_model(ref, path, "F32");
  auto model = tconst::Model<Scalar>::load(path);
  tconst::SessionOptions bounded, kept;
  kept.bounded_resync = false;
  tconst::TConstSession<Scalar> a(model, bounded), b(model, kept);
  const std::vector<int> tokens = tokens_for(c.shape, 5 * c.shape.W + 3);
  const auto expected = tconst_test::naive_stream_logits(ref, tokens);
  for (size_t p = 0; p < tokens.size(); ++p) {
    const tconst::Vector<Scalar> la = a.feed(tokens[p]);
    const tconst::Vector<Scalar>& lb = b.feed(tokens[p]);
    double worst = 0;
    for (size_t i = 0; i < expected[p].size(); ++i) {
      worst = std::max(
          worst, std::abs(static_cast<double>(la[static_cast<Eigen::Index>(i)]) - expected[p][i]));
    }
    ASSERT_LE(worst, tol) << c.name << " bounded, position " << p;
    ASSERT_LE(static_cast<double>((la - lb).cwiseAbs().maxCoeff()), modes_tol)
        << c.name << " bounded vs kept, position " << p;
  }
  EXPECT_GE(a.resync_count(), 5);
  EXPECT_EQ(a.resync_count(), b.resync_count());
}

TEST_P(ResyncModes, BoundedAndKeptEqualFullForwardDouble) {
  check_modes<double>(GetParam(), 1e-9, 1e-12);
}

TEST_P(ResyncModes, BoundedAndKeptEqualFullForwardFloat) {
  check_modes<float>(GetParam(), 1e-4, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ResyncModes, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// Contexts of many 256-row chunks: 2600 and 2800 rows (ten full chunks and a short one, in up to
// eight runs of chunks with an accumulator each, merged at the end), 300 history rows (more than
// a chunk, their first row inside a chunk). The last logits equal the naive forward's, bounded and
// kept (three blocks), in double and float.
template <typename Scalar>
void check_long_context(const char* name, const RefShape& shape, double tol) {
  const RefModel ref = tconst_test::make_random_model(shape, 77);
  const std::string path = temp_model(std::string(name) + (sizeof(Scalar) == 8 ? "_d" : "_f"));
  tconst_test::write_model(ref, path, "F32");
  auto model = tconst::Model<Scalar>::load(path);
  const std::vector<int> tokens = tokens_for(shape, 2801);
  const std::vector<int32_t> ids(tokens.begin(), tokens.end());
  for (bool bounded : {true, false}) {
    tconst::SessionOptions o;
    o.bounded_resync = bounded;
    tconst::TConstSession<Scalar> s(model, o);
    size_t done = 0;
    for (size_t upto : {size_t{2601}, size_t{2801}}) {
      const tconst::Vector<Scalar> got = s.prefill(ids.data() + done, upto - done);
      done = upto;
      const std::vector<double> want = tconst_test::naive_last_logits(
          ref, std::vector<int>(tokens.begin(), tokens.begin() + static_cast<long>(upto)));
      double worst = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        worst = std::max(
            worst, std::abs(static_cast<double>(got[static_cast<Eigen::Index>(i)]) - want[i]));
      }
      EXPECT_LE(worst, tol) << name << (bounded ? " bounded" : " kept") << ", " << upto
                            << " tokens";
    }
    EXPECT_EQ(s.resync_count(), 2);  // a prefill resyncs once, over its last whole window
  }
}

TEST(ResyncChunks, ManyChunksEqualFullForward) {
  const RefShape b2{"tconstformer", 23, 12, 2, 2, 3, 100, 300, 20};
  const RefShape b3{"tconstformer", 19, 8, 2, 3, 2, 100, 300, 16};
  check_long_context<double>("chunks_b2", b2, 1e-9);
  check_long_context<double>("chunks_b3", b3, 1e-9);
  check_long_context<float>("chunks_b2", b2, 1e-4);
  check_long_context<float>("chunks_b3", b3, 1e-4);
}

// Resync buffers held after resyncs at context lengths 600 and 2400 (kept between resyncs, so
// that they can be read), both above the 256-row chunk: a bounded resync's do not grow with the
// context; with three blocks and bounded_resync = false they do, by the kept context rows.
TEST(ResyncMemory, BoundedResyncBuffersDoNotGrowWithTheContext) {
  const RefShape shape{"tconstformer", 23, 16, 2, 3, 3, 4, 4, 24};
  const std::string path = temp_model("memory");
  tconst_test::write_model(tconst_test::make_random_model(shape, 9), path, "F32");
  auto model = tconst::Model<float>::load(path);
  const std::vector<int> tokens = tokens_for(shape, 2401);
  const std::vector<int32_t> ids(tokens.begin(), tokens.end());
  for (bool bounded : {true, false}) {
    tconst::SessionOptions o;
    o.keep_resync_buffers = true;
    o.bounded_resync = bounded;
    // One thread: with several, the threads take runs of chunks as they come free, and one that
    // got none in the first prefill (it woke late) grows its own chunk buffers in the second.
    // Those are bounded by the chunk size, but when they grow depends on timing.
    o.threads = 1;
    tconst::TConstSession<float> s(model, o);
    s.prefill(ids.data(), 601);
    const size_t at_600 = s.resync_buffer_bytes();
    s.prefill(ids.data() + 601, 1800);
    const size_t at_2400 = s.resync_buffer_bytes();
    ASSERT_GT(at_600, 0u);
    if (bounded) {
      EXPECT_EQ(at_2400, at_600);
    } else {
      // Context rows [Lc, d] of one block: 1800 rows more.
      EXPECT_EQ(at_2400 - at_600, sizeof(float) * 1800 * shape.d);
    }
  }
}

}  // namespace
