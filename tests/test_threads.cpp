// Thread safety (session.hpp): a Model is immutable and may be shared by any number of sessions on
// any number of threads; each Session belongs to one thread. One loaded model serves 8 threads at
// once, each streaming its own tokens through its own session across several resyncs, and every
// logit equals, bit for bit, the one computed beforehand on a single thread. The model lives as
// long as its last session (shared_ptr<const Model>), whichever thread releases it.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "support/compare.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "support/tokens.hpp"
#include "tconst/tconst.hpp"
#include "tconst/tokenizer/gpt2_bpe.hpp"

namespace {

using tconst_test::random_tokens;
using tconst_test::RefShape;
using tconst_test::same_bits;

constexpr int kThreads = 8;
constexpr int kTokens = 40;  // with W = 4: nine resyncs per stream

const RefShape kShapes[] = {
    {"tconstformer", 29, 16, 2, 2, 3, 4, 6, 24},
    {"tlinformer", 29, 16, 2, 2, 3, 4, 3, 24},
    {"transformer", 29, 16, 2, 3, 0, 0, 0, 24},
};

static_assert(std::is_same_v<decltype(tconst::Model<float>::load("")),
                             std::shared_ptr<const tconst::Model<float>>>,
              "a loaded model is handed out as shared_ptr<const Model>");

std::string write_model(const RefShape& shape) {
  const std::string path = tconst_test::temp_path(shape.arch + ".safetensors");
  tconst_test::write_model(tconst_test::make_random_model(shape, 77), path, "F32");
  return path;
}

template <typename Scalar>
using Rows = std::vector<tconst::Vector<Scalar>>;

/// What one thread computes: every logit row of feeding `ids` token by token, then every row of
/// score() over them on a second session.
template <typename Scalar>
struct Stream {
  Rows<Scalar> fed, scored;
  int64_t resyncs = -1;
};

template <typename Scalar>
Stream<Scalar> run_stream(const std::shared_ptr<const tconst::Model<Scalar>>& model,
                          const std::vector<int32_t>& ids) {
  Stream<Scalar> out;
  auto s = tconst::make_session(model);
  for (int32_t id : ids) out.fed.push_back(s->feed(id));
  out.resyncs = s->resync_count();
  auto t = tconst::make_session(model);
  t->score(ids.data(), ids.size(),
           [&](size_t, const tconst::Vector<Scalar>& row) { out.scored.push_back(row); });
  return out;
}

/// Starts all the threads' work at once, so that their resyncs and steps overlap.
class StartLine {
 public:
  explicit StartLine(int n) : waiting_(n) {}
  void arrive_and_wait() {
    waiting_.fetch_sub(1);
    while (waiting_.load() > 0) std::this_thread::yield();
  }

 private:
  std::atomic<int> waiting_;
};

template <typename Scalar>
void check_threads_match_single_thread(const RefShape& shape) {
  auto model = tconst::Model<Scalar>::load(write_model(shape));
  std::vector<std::vector<int32_t>> ids;
  std::vector<Stream<Scalar>> expected;
  for (int t = 0; t < kThreads; ++t) {
    ids.push_back(random_tokens(kTokens, shape.V, 1000 + t));
    expected.push_back(run_stream(model, ids.back()));
  }

  std::vector<Stream<Scalar>> got(kThreads);
  StartLine start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      got[static_cast<size_t>(t)] = run_stream(model, ids[static_cast<size_t>(t)]);
    });
  }
  for (auto& th : threads) th.join();

  const int64_t resyncs = shape.arch == "transformer" ? 0 : (kTokens - 1) / shape.W;
  for (int t = 0; t < kThreads; ++t) {
    const Stream<Scalar>& e = expected[static_cast<size_t>(t)];
    const Stream<Scalar>& g = got[static_cast<size_t>(t)];
    EXPECT_EQ(g.resyncs, resyncs) << "thread " << t;
    ASSERT_EQ(g.fed.size(), static_cast<size_t>(kTokens)) << "thread " << t;
    ASSERT_EQ(g.scored.size(), static_cast<size_t>(kTokens)) << "thread " << t;
    for (int p = 0; p < kTokens; ++p) {
      EXPECT_TRUE(same_bits(g.fed[p], e.fed[p])) << "thread " << t << ", feed, token " << p;
      EXPECT_TRUE(same_bits(g.scored[p], e.scored[p])) << "thread " << t << ", score, token " << p;
    }
  }
}

TEST(Threads, SharedModelFloat) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    check_threads_match_single_thread<float>(shape);
  }
}

TEST(Threads, SharedModelDouble) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    check_threads_match_single_thread<double>(shape);
  }
}

// The sessions keep the model alive after the caller lets go of it (and after its file is gone:
// the mapping stays valid); copies share it; the last session to go frees it.
TEST(Threads, ModelOutlivesTheCallersPointer) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    const std::string path = write_model(shape);
    const std::vector<int32_t> ids = random_tokens(kTokens, shape.V, 1000);
    const Stream<float> expected = run_stream(tconst::Model<float>::load(path), ids);

    std::weak_ptr<const tconst::Model<float>> weak;
    std::unique_ptr<tconst::Session<float>> a;
    {
      std::shared_ptr<const tconst::Model<float>> model = tconst::Model<float>::load(path);
      weak = model;
      a = tconst::make_session(model);
      EXPECT_EQ(weak.use_count(), 2);
    }
    std::remove(path.c_str());
    ASSERT_FALSE(weak.expired());
    EXPECT_EQ(weak.use_count(), 1);
    for (int p = 0; p < kTokens / 2; ++p) {
      EXPECT_TRUE(same_bits(a->feed(ids[p]), expected.fed[p])) << "token " << p;
    }
    std::unique_ptr<tconst::Session<float>> b = a->copy();
    EXPECT_EQ(weak.use_count(), 2);
    a.reset();
    ASSERT_FALSE(weak.expired());
    for (int p = kTokens / 2; p < kTokens; ++p) {
      EXPECT_TRUE(same_bits(b->feed(ids[p]), expected.fed[p])) << "token " << p;
    }
    b.reset();
    EXPECT_TRUE(weak.expired());
  }
}

// Sessions handed to other threads: the main thread drops the model first, and whichever thread
// finishes last frees it.
TEST(Threads, LastSessionOnAnyThreadFreesTheModel) {
  for (const RefShape& shape : kShapes) {
    SCOPED_TRACE(shape.arch);
    const std::string path = write_model(shape);
    std::vector<std::vector<int32_t>> ids;
    std::vector<Stream<double>> expected;
    std::weak_ptr<const tconst::Model<double>> weak;
    std::vector<std::unique_ptr<tconst::Session<double>>> sessions;
    {
      auto model = tconst::Model<double>::load(path);
      weak = model;
      for (int t = 0; t < kThreads; ++t) {
        ids.push_back(random_tokens(kTokens, shape.V, 1000 + t));
        expected.push_back(run_stream(model, ids.back()));
        sessions.push_back(tconst::make_session(model));
      }
    }
    EXPECT_EQ(weak.use_count(), kThreads);
    std::vector<int> mismatches(kThreads, 0);
    StartLine start(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t, s = std::move(sessions[static_cast<size_t>(t)])]() mutable {
        start.arrive_and_wait();
        const auto& mine = ids[static_cast<size_t>(t)];
        for (int p = 0; p < kTokens; ++p) {
          if (!same_bits(s->feed(mine[p]), expected[static_cast<size_t>(t)].fed[p])) {
            ++mismatches[static_cast<size_t>(t)];
          }
        }
        s.reset();  // this thread's reference to the model goes here
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
    EXPECT_TRUE(weak.expired());
  }
}

// The GPT-2 tokenizer is documented as usable from several threads at once (its piece cache is
// locked): concurrent encodes give the single-threaded ids.
TEST(Threads, SharedTokenizer) {
  auto spell = [](const std::string& bytes) {
    std::string s;
    for (char c : bytes) {
      tconst::detail::append_utf8(
          s, tconst::detail::kGpt2ByteToUnicode[static_cast<unsigned char>(c)]);
    }
    return s;
  };
  nlohmann::json vocab = nlohmann::json::object();
  int next = 0;
  for (int b = 0; b < 256; ++b) vocab[spell(std::string(1, static_cast<char>(b)))] = next++;
  std::string merges;
  for (const auto& [l, r] : std::vector<std::pair<std::string, std::string>>{{"t", "h"},
                                                                             {"th", "e"},
                                                                             {" ", "the"},
                                                                             {"i", "n"},
                                                                             {" ", "in"},
                                                                             {"a", "n"},
                                                                             {"an", "d"}}) {
    vocab[spell(l + r)] = next++;
    merges += spell(l) + " " + spell(r) + "\n";
  }
  auto tok = tconst::Gpt2BpeTokenizer::from_strings(vocab.dump(), merges);

  std::vector<std::string> texts;
  for (int t = 0; t < kThreads; ++t) {
    std::string text;
    for (int i = 0; i < 200; ++i) {
      text += (i % 3 ? " the" : " and") + std::to_string((i * 7 + t) % 50) + " in" +
              std::string(1, static_cast<char>('a' + (i + t) % 26));
    }
    texts.push_back(text);
  }
  // The expected ids from a fresh tokenizer each, so that the shared one's cache starts cold.
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : texts) {
    expected.push_back(tconst::Gpt2BpeTokenizer::from_strings(vocab.dump(), merges)->encode(text));
  }
  std::vector<std::vector<int32_t>> got(kThreads);
  StartLine start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int rep = 0; rep < 5; ++rep) got[static_cast<size_t>(t)] = tok->encode(texts[t]);
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(got[t], expected[t]) << "thread " << t;
    EXPECT_EQ(tok->decode(got[t]), texts[t]);
  }
}

}  // namespace
