// The threaded paths (built with OpenMP): products split by output rows over threads, one query
// row's attention split by heads, and several streams stepped together attending on several
// threads. In float, with 3 threads (an uneven
// split), a session's logits and those of streams stepped together equal, within float rounding,
// the same sessions fed one token at a time on one thread, across several resyncs.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "tconst/batch.hpp"
#include "tconst/tconst.hpp"

namespace {

using tconst_test::RefShape;

/// Wide enough that the head (V rows) and qkv (3d rows) are split over threads.
std::shared_ptr<const tconst::Model<float>> model_for(const std::string& arch) {
  const RefShape shape{arch, 301, 48, 4, 2, 3, 6, 5, 40};
  const std::string path = tconst_test::temp_path(arch + ".safetensors");
  tconst_test::write_model(tconst_test::make_random_model(shape, 29), path, "F32");
  return tconst::Model<float>::load(path);
}

/// Restores the thread count when a test ends, however it ends.
struct Threads {
  explicit Threads(int n) : before(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~Threads() { omp_set_num_threads(before); }
  int before;
};

TEST(OpenMP, ThreadedSessionEqualsOneThread) {
  for (const char* arch : {"tconstformer", "tlinformer"}) {
    auto model = model_for(arch);
    tconst::TConstSession<float> threaded(model), single(model);
    for (int step = 0; step < 40; ++step) {  // W = 6: six resyncs
      const int32_t token = (step * 37 + 11) % 301;
      Eigen::VectorXf want;
      {
        Threads one(1);
        want = single.feed(token);
      }
      Threads three(3);
      ASSERT_LE(tconst_test::max_rel_diff(threaded.feed(token), want), 1e-5f)
          << arch << " step " << step;
    }
  }
}

// A resync over 2600 context rows (eleven chunks in eight runs) takes whole runs of chunks on as
// many threads as there are, each chunk's layers on one thread, or on one thread one chunk at a
// time: the same bits either way.
TEST(OpenMP, ResyncOverManyChunksGivesTheSameBitsOnAnyThreadCount) {
  const RefShape shape{"tconstformer", 301, 48, 4, 2, 3, 100, 300, 40};
  const std::string path = tconst_test::temp_path("many_chunks.safetensors");
  tconst_test::write_model(tconst_test::make_random_model(shape, 31), path, "F32");
  auto model = tconst::Model<float>::load(path);
  std::vector<int32_t> ids(2601);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 97 + 5) % 301);
  Eigen::VectorXf want;
  for (int threads : {1, 2, 3}) {
    Threads t(threads);
    tconst::TConstSession<float> s(model);
    const Eigen::VectorXf got = s.prefill(ids);
    ASSERT_EQ(s.resync_count(), 1);
    if (threads == 1) {
      want = got;
    } else {
      EXPECT_EQ((got - want).cwiseAbs().maxCoeff(), 0.0f) << threads << " threads";
    }
  }
}

TEST(OpenMP, StreamsSteppedTogetherOnThreadsEqualEachAlone) {
  for (const char* arch : {"tconstformer", "tlinformer"}) {
    auto model = model_for(arch);
    for (size_t S : {size_t{5}, size_t{9}}) {
      std::vector<std::unique_ptr<tconst::TConstSession<float>>> batched, alone;
      std::vector<tconst::TConstSession<float>*> ptrs;
      for (size_t i = 0; i < S; ++i) {
        batched.push_back(std::make_unique<tconst::TConstSession<float>>(model));
        alone.push_back(std::make_unique<tconst::TConstSession<float>>(model));
        for (size_t k = 0; k < i; ++k) {  // stream i starts at position i
          batched.back()->feed(static_cast<int32_t>(k + 1));
          alone.back()->feed(static_cast<int32_t>(k + 1));
        }
        ptrs.push_back(batched.back().get());
      }
      tconst::StreamBatch<float> batch;
      for (int step = 0; step < 20; ++step) {
        std::vector<int32_t> tokens;
        for (size_t i = 0; i < S; ++i)
          tokens.push_back(static_cast<int32_t>((step * 13 + i) % 301));
        {
          Threads three(3);
          batch.feed(ptrs, tokens);
        }
        Threads one(1);
        for (size_t i = 0; i < S; ++i) {
          const Eigen::VectorXf want = alone[i]->feed(tokens[i]);
          ASSERT_LE(tconst_test::max_rel_diff(batched[i]->logits(), want), 1e-5f)
              << arch << " S " << S << " stream " << i << " step " << step;
        }
      }
    }
  }
}

template <typename S>
void expect_split_attention_identical() {
  constexpr Eigen::Index heads = 4, dh = 12, d = heads * dh;
  tconst_test::SplitMix64 gen(41);
  // 10 keys stay on one thread; 600 and 2000 are split (4 heads over 3 threads: 1, 1, 2).
  for (Eigen::Index nk : {10, 600, 2000}) {
    ASSERT_EQ(nk * d >= tconst::detail::kMinAttendSplitFloats, nk > 10);
    std::vector<S> q(d), K(static_cast<size_t>(nk * d)), V(K.size()), scores(heads * nk);
    for (S& x : q) x = static_cast<S>(gen.uniform_float(-1.0, 1.0));
    for (S& x : K) x = static_cast<S>(gen.uniform_float(-1.0, 1.0));
    for (S& x : V) x = static_cast<S>(gen.uniform_float(-1.0, 1.0));
    for (bool accumulate : {false, true}) {
      std::vector<S> want(d, S(0.25)), got(d, S(0.25));
      const auto Kv = tconst::detail::rows_view(K.data(), nk, d);
      const auto Vv = tconst::detail::rows_view(V.data(), nk, d);
      const tconst::detail::Heads hd{heads, dh};
      {
        Threads one(1);
        tconst::detail::attend_one(q.data(), Kv, Vv, hd, scores.data(), want.data(), accumulate);
      }
      Threads three(3);
      tconst::detail::attend_one(q.data(), Kv, Vv, hd, scores.data(), got.data(), accumulate);
      // Each head's arithmetic is the same on any thread: the same bits.
      EXPECT_EQ(got, want) << "nk " << nk << " accumulate " << accumulate;
    }
  }
}

TEST(OpenMP, OneQueryAttentionSplitByHeadsGivesTheSameBits) {
  expect_split_attention_identical<float>();
  expect_split_attention_identical<double>();
}

// The resync's attentions (many query rows: the restore and hidden layers' attend_rows, the
// compress layer's online attention) split their heads over the threads when given room for a
// block of scores per thread; the result has the same bits as on one thread.
template <typename S>
void expect_split_row_attention_identical(bool through_gemm) {
  constexpr Eigen::Index heads = 4, dh = 32, d = heads * dh, nq = 64, nk = 96;
  tconst_test::SplitMix64 gen(43);
  auto random = [&](Eigen::Index n) {
    std::vector<S> v(static_cast<size_t>(n));
    for (S& x : v) x = static_cast<S>(gen.uniform_float(-1.0, 1.0));
    return v;
  };
  const std::vector<S> Q = random(nq * d), K = random(nk * d), V = random(nk * d);
  ASSERT_GE(heads * 2 * nq * nk * dh, tconst::detail::kMinSplitWork) << "large enough to split";
  std::vector<S> scores(static_cast<size_t>(3 * nq * nk));
  const Eigen::Index len = static_cast<Eigen::Index>(scores.size());
  tconst::detail::AttentionWorkers<S> workers;
  workers.workers.resize(3);
  tconst::detail::AttentionWorkers<S>* al = through_gemm ? &workers : nullptr;
  // Causal (the window's) and not (the resync's, which in float takes the panel kernels).
  const auto Qv = tconst::detail::rows_view(Q.data(), nq, d);
  const auto Kv = tconst::detail::rows_view(K.data(), nk, d);
  const auto Vv = tconst::detail::rows_view(V.data(), nk, d);
  const tconst::detail::Heads hd{heads, dh};
  for (Eigen::Index causal : {Eigen::Index{7}, Eigen::Index{-1}}) {
    std::vector<S> want(nq * d, S(0.5)), got(nq * d, S(0.5));
    {
      Threads one(1);
      tconst::detail::attend_rows(Qv, Kv, Vv, hd, causal,
                                  tconst::detail::rows_view(want.data(), nq, d), true,
                                  {scores.data(), len, al});
    }
    {
      Threads three(3);
      tconst::detail::attend_rows(Qv, Kv, Vv, hd, causal,
                                  tconst::detail::rows_view(got.data(), nq, d), true,
                                  {scores.data(), len, al});
    }
    EXPECT_EQ(got, want) << "attend_rows, causal_base " << causal;
  }
  std::vector<S> online_want(nq * d), online_got(nq * d);
  for (int threads : {1, 3}) {
    Threads t(threads);
    tconst::detail::OnlineAttention<S> online;
    online.reset(Q.data(), d, nq, heads, dh);
    online.add(K.data(), V.data(), d, nk / 2, scores.data(), len, al);
    online.add(K.data() + nk / 2 * d, V.data() + nk / 2 * d, d, nk - nk / 2, scores.data(), len,
               al);
    online.finish(threads == 1 ? online_want.data() : online_got.data(), d);
  }
  EXPECT_EQ(online_got, online_want) << "OnlineAttention";
}

TEST(OpenMP, ManyRowAttentionSplitByHeadsGivesTheSameBits) {
  for (bool through_gemm : {false, true}) {
    expect_split_row_attention_identical<float>(through_gemm);
    expect_split_row_attention_identical<double>(through_gemm);
  }
}

}  // namespace

// SessionOptions::threads: a session's calls use its own count, whatever the calling thread's,
// and leave the caller's count as it was. The resync's buffers are sized per worker, so a session
// of 1 worker on a 3-thread caller holds what a session on a 1-thread caller holds.
TEST(OpenMP, SessionThreadsOverrideTheCallersCount) {
  auto model = model_for("tconstformer");
  std::vector<int32_t> ids(2601);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 53 + 7) % 301);
  tconst::SessionOptions one_worker;
  one_worker.threads = 1;
  tconst::TConstSession<float> own(model, one_worker), single(model), many(model);
  Eigen::VectorXf want;
  size_t single_bytes = 0;
  {
    Threads one(1);
    want = single.prefill(ids);
    single_bytes = single.resync_buffer_bytes();
  }
  Threads three(3);
  const Eigen::VectorXf got = own.prefill(ids);
  EXPECT_EQ(omp_get_max_threads(), 3) << "the caller's count is restored";
  EXPECT_EQ(own.resync_buffer_bytes(), single_bytes);
  many.prefill(ids);
  EXPECT_GT(many.resync_buffer_bytes(), single_bytes) << "3 workers hold more buffers than 1";
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), sizeof(float) * got.size()));
  // A feed that resyncs, and a batch with its own count: the same bits as on one thread.
  tconst::SessionOptions two_workers;
  two_workers.threads = 2;
  tconst::TConstSession<float> a(model, two_workers), b(model);
  a.prefill(ids);
  b.prefill(ids);
  tconst::StreamBatch<float> batch(2);
  for (int step = 0; step < 8; ++step) {
    const int32_t t = (step * 31 + 5) % 301;
    const Eigen::VectorXf fed = a.feed(t);
    batch.feed({&b}, {t});
    EXPECT_EQ(omp_get_max_threads(), 3);
    EXPECT_LE(tconst_test::max_rel_diff(b.logits(), fed), 1e-5f) << "step " << step;
  }
}
