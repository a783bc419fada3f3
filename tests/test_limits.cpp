// Limits of a session: SessionOptions::max_context and the token id range. A call that would break
// either throws tconst::Error with a message that says which, and leaves the session exactly as it
// was: position, tokens, logits, caches (write_state's bytes), and the next feed gives the logits
// of a fresh session fed the same tokens. For every architecture, in float and double.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/resource.h>
#endif

#include "support/compare.hpp"
#include "support/errors.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "tconst/tconst.hpp"
#include "tconst/tokenizer/gpt2_bpe.hpp"

namespace {

using tconst_test::expect_error;
using tconst_test::RefShape;
using tconst_test::same_bits;
using tconst_test::temp_path;

// W = 4, so that streams of a few tokens cross resyncs (p = 4, 8).
const RefShape kShapes[] = {
    {"tconstformer", 13, 8, 2, 2, 3, 4, 3, 12},
    {"tlinformer", 13, 8, 2, 2, 3, 4, 5, 12},
    {"transformer", 13, 8, 2, 2, 0, 0, 0, 12},
};
constexpr int32_t kV = 13;

template <typename Scalar>
std::shared_ptr<const tconst::Model<Scalar>> load(const RefShape& shape) {
  const std::string path =
      temp_path(shape.arch + (sizeof(Scalar) == 8 ? "_d" : "_f") + ".safetensors");
  tconst_test::write_model(tconst_test::make_random_model(shape, 31), path, "F32");
  return tconst::Model<Scalar>::load(path);
}

int32_t token(int64_t p) {
  return static_cast<int32_t>((p * 5 + 3) % kV);
}

/// Everything observable about a session.
template <typename Scalar>
struct Observed {
  int64_t position;
  std::vector<int32_t> tokens;
  tconst::Vector<Scalar> logits;
  int64_t resyncs;
  size_t cache_bytes;
  std::string state;

  explicit Observed(const tconst::Session<Scalar>& s)
      : position(s.position()),
        tokens(s.tokens()),
        logits(s.logits()),
        resyncs(s.resync_count()),
        cache_bytes(s.cache_bytes()) {
    s.write_state(state);
  }
};

template <typename Scalar>
void expect_same(const Observed<Scalar>& before, const tconst::Session<Scalar>& s) {
  const Observed<Scalar> now(s);
  EXPECT_EQ(now.position, before.position);
  EXPECT_EQ(now.tokens, before.tokens);
  EXPECT_TRUE(same_bits(now.logits, before.logits)) << "the logits changed";
  EXPECT_EQ(now.resyncs, before.resyncs);
  EXPECT_EQ(now.cache_bytes, before.cache_bytes);
  EXPECT_TRUE(now.state == before.state) << "the session's state bytes changed";
}

/// A session fed `n` tokens one by one.
template <typename Scalar>
std::unique_ptr<tconst::Session<Scalar>> fed(const std::shared_ptr<const tconst::Model<Scalar>>& m,
                                             tconst::SessionOptions o, int64_t n) {
  auto s = tconst::make_session(m, o);
  for (int64_t p = 0; p < n; ++p) s->feed(token(p));
  return s;
}

/// Feeds one more token and checks its logits bit for bit against a fresh session (same model
/// and options) fed the same tokens one by one.
template <typename Scalar>
void expect_next_feed_like_fresh(const std::shared_ptr<const tconst::Model<Scalar>>& m,
                                 tconst::Session<Scalar>& s) {
  std::vector<int32_t> ids = s.tokens();
  ids.push_back(token(static_cast<int64_t>(ids.size()) + 7));
  const tconst::Vector<Scalar> got = s.feed(ids.back());
  auto fresh = tconst::make_session(m, s.options());
  for (int32_t id : ids) fresh->feed(id);
  EXPECT_TRUE(same_bits(got, fresh->logits())) << "the next feed differs from a fresh session's";
  EXPECT_EQ(s.tokens(), fresh->tokens());
}

template <typename Scalar>
class Limits : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Limits, Scalars);

// Feeding past max_context throws and changes nothing, also where the token would start a resync.
TYPED_TEST(Limits, FeedPastMaxContext) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    auto model = load<TypeParam>(shape);
    for (int64_t max : {0, 1, 7, 8, 9}) {
      SCOPED_TRACE("max_context " + std::to_string(max));
      tconst::SessionOptions o;
      o.max_context = max;
      auto s = fed(model, o, max);  // feeding up to max_context itself is fine
      ASSERT_EQ(s->position(), max);
      const Observed<TypeParam> before(*s);
      expect_error([&] { s->feed(1); },
                   {"max_context = " + std::to_string(max), "position " + std::to_string(max)});
      expect_same(before, *s);
      const int32_t one[] = {1};
      expect_error([&] { s->prefill(one, 1); }, {"max_context"});
      expect_same(before, *s);
      bool called = false;
      expect_error([&] { s->score(one, 1, [&](size_t, const auto&) { called = true; }); },
                   {"max_context"});
      EXPECT_FALSE(called);
      expect_same(before, *s);
      // Nothing more is also nothing past the limit.
      s->prefill(nullptr, 0);
      s->score(nullptr, 0, [&](size_t, const auto&) { called = true; });
      EXPECT_FALSE(called);
      expect_same(before, *s);
      // reset() makes room again.
      s->reset();
      if (max > 0) expect_next_feed_like_fresh(model, *s);
    }
  }
}

// A prefill or score that would cross max_context consumes nothing; one that reaches it exactly is
// fine.
TYPED_TEST(Limits, PrefillAndScorePastMaxContext) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    auto model = load<TypeParam>(shape);
    tconst::SessionOptions o;
    o.max_context = 11;
    auto s = fed(model, o, 6);
    const Observed<TypeParam> before(*s);
    std::vector<int32_t> batch;  // tokens 6..10, which just fit
    for (int64_t p = 6; p < 11; ++p) batch.push_back(token(p));
    batch.push_back(token(11));  // six tokens: one too many
    expect_error([&] { s->prefill(batch); }, {"max_context = 11", "position 6", "6 more"});
    expect_same(before, *s);
    int rows = 0;
    expect_error(
        [&] { s->score(batch.data(), batch.size(), [&](size_t, const auto&) { ++rows; }); },
        {"max_context = 11"});
    EXPECT_EQ(rows, 0);
    expect_same(before, *s);
    expect_next_feed_like_fresh(model, *s);  // position 7

    // Exactly up to the limit: accepted, and then full.
    auto t = fed(model, o, 6);
    batch.pop_back();
    t->prefill(batch);
    EXPECT_EQ(t->position(), 11);
    const Observed<TypeParam> full(*t);
    expect_error([&] { t->feed(0); }, {"max_context = 11"});
    expect_same(full, *t);
  }
}

// Ids outside [0, V) are rejected by feed, prefill and score, wherever they are in the batch.
TYPED_TEST(Limits, TokenIdsOutOfRange) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    auto model = load<TypeParam>(shape);
    for (int64_t n : {0, 4, 6}) {  // empty, at a resync boundary, inside a window
      SCOPED_TRACE("position " + std::to_string(n));
      auto s = fed(model, tconst::SessionOptions{}, n);
      const Observed<TypeParam> before(*s);
      for (int32_t bad : {-1, kV, kV + 1, std::numeric_limits<int32_t>::min(),
                          std::numeric_limits<int32_t>::max()}) {
        const std::string shown = "token id " + std::to_string(bad);
        expect_error([&] { s->feed(bad); }, {shown, "outside [0, 13)"});
        expect_same(before, *s);
        // One bad id in the middle of a batch that would cross a resync: nothing is consumed.
        const std::vector<int32_t> batch = {1, 2, 3, bad, 4, 5, 6};
        expect_error([&] { s->prefill(batch); }, {shown});
        expect_same(before, *s);
        int rows = 0;
        expect_error(
            [&] { s->score(batch.data(), batch.size(), [&](size_t, const auto&) { ++rows; }); },
            {shown});
        EXPECT_EQ(rows, 0);
        expect_same(before, *s);
        const std::vector<int32_t> last = {0, 1, bad};
        expect_error([&] { s->prefill(last); }, {shown});
        expect_same(before, *s);
      }
      expect_next_feed_like_fresh(model, *s);
    }
  }
}

// Both limits broken at once: still one Error, still nothing consumed.
TYPED_TEST(Limits, BadIdAndPastMaxContext) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    auto model = load<TypeParam>(shape);
    tconst::SessionOptions o;
    o.max_context = 5;
    auto s = fed(model, o, 3);
    const Observed<TypeParam> before(*s);
    const std::vector<int32_t> batch = {1, -7, 2, 3};
    expect_error([&] { s->prefill(batch); }, {"token id -7"});
    expect_same(before, *s);
    expect_next_feed_like_fresh(model, *s);
  }
}

// A snapshot holding more tokens than the restoring session's max_context is refused.
TYPED_TEST(Limits, SnapshotLongerThanMaxContext) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    auto model = load<TypeParam>(shape);
    auto a = fed(model, tconst::SessionOptions{}, 9);
    const std::string path = temp_path(shape.arch + ".snap");
    tconst::save_session(*a, path);
    tconst::SessionOptions o;
    o.max_context = 8;
    auto b = fed(model, o, 2);
    const Observed<TypeParam> before(*b);
    expect_error([&] { tconst::load_session(*b, path); }, {"9 tokens", "max_context"});
    expect_same(before, *b);
    o.max_context = 9;  // exactly enough
    auto c = fed(model, o, 2);
    tconst::load_session(*c, path);
    EXPECT_EQ(c->tokens(), a->tokens());
  }
}

/// The process's peak resident memory so far, in KiB (0 where unknown).
long peak_rss_kib() {
#if defined(__linux__)
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) == 0) return u.ru_maxrss;
#endif
  return 0;
}

// Regression (found by fuzz_snapshot): a snapshot whose token count claims 2^30 tokens, with a
// valid checksum, is refused as truncated before anything is sized by that count (the baseline
// session used to allocate 4 GiB for the token log first).
TYPED_TEST(Limits, SnapshotClaimingAHugeTokenLog) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    auto model = load<TypeParam>(shape);
    const std::string path = temp_path(shape.arch + ".snap");
    tconst::save_session(*tconst::make_session(model), path);
    std::string bytes = tconst::read_file(path);
    const uint64_t n = uint64_t{1} << 30;
    std::memcpy(&bytes[32], &n, 8);  // after magic, version, scalar size, identity, length
    const uint64_t sum =
        tconst::detail::fnv1a(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size() - 8);
    std::memcpy(&bytes[bytes.size() - 8], &sum, 8);
    tconst_test::write_file(path, bytes);
    auto s = fed(model, tconst::SessionOptions{}, 3);
    const Observed<TypeParam> before(*s);
    const long peak_kib = peak_rss_kib();
    expect_error([&] { tconst::load_session(*s, path); }, {"truncated in token log"});
    expect_same(before, *s);
    EXPECT_LT(peak_rss_kib() - peak_kib, 256 * 1024) << "rejecting the file took much memory";
  }
}

// Regression: JSON nested a million levels deep in a tokenizer file overflowed the stack (printing
// the value for the error message recursed once per level). Such nesting is now refused while
// parsing; so is a safetensors header, which never was at risk, still rejected cleanly.
TEST(JsonLimits, DeeplyNestedFilesAreRefused) {
  const std::string nest = std::string(1000000, '[') + std::string(1000000, ']');
  expect_error([&] { tconst::Gpt2BpeTokenizer::from_strings("{\"a\":" + nest + "}", ""); },
               {"vocab.json", "nested deeper than"});
  expect_error(
      [&] {
        tconst::Gpt2BpeTokenizer::from_tokenizer_json_string("{\"model\":{\"type\":" + nest + "}}");
      },
      {"tokenizer.json", "nested deeper than"});
  expect_error(
      [&] {
        tconst::Gpt2BpeTokenizer::from_tokenizer_json_string(
            R"({"model":{"type":"BPE"},"pre_tokenizer":{"type":"ByteLevel","use_regex":)" + nest +
            "}}");
      },
      {"nested deeper than"});
  const std::string header = "{\"__metadata__\":" + nest + "}";
  std::vector<uint8_t> file(8 + header.size());
  for (int i = 0; i < 8; ++i)
    file[static_cast<size_t>(i)] = static_cast<uint8_t>(header.size() >> (8 * i));
  std::copy(header.begin(), header.end(), file.begin() + 8);
  expect_error([&] { tconst::Model<float>::load_from_bytes(file); }, {"__metadata__"});
}

}  // namespace
