// Cache-hit steps make no heap allocation: a replaced global operator new counts them. And the
// large buffers (big_buffer.hpp) start zeroed, on cache lines, and say what failed.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <utility>

#include "support/counting_new.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "tconst/batch.hpp"
#include "tconst/tconst.hpp"

namespace {

template <typename Scalar>
void check_no_allocation(const tconst_test::RefShape& shape,
                         tconst::Compute compute = tconst::Compute::f32) {
  const std::string path = tconst_test::temp_path("model.safetensors");
  tconst_test::write_model(tconst_test::make_random_model(shape, 11), path, "F32");
  auto model = tconst::Model<Scalar>::load(path);
  tconst::SessionOptions options;
  options.compute = compute;
  tconst::TConstSession<Scalar> s(model, options);
  long hit_allocations = 0, hits = 0, resyncs = 0;
  for (int p = 0; p < 10 * shape.W; ++p) {
    const bool hit = p == 0 || p % shape.W != 0;
    const long before = tconst_test::heap_allocations();
    s.feed(p % shape.V);
    if (hit) {
      hit_allocations += tconst_test::heap_allocations() - before;
      ++hits;
    } else {
      ++resyncs;
    }
  }
  EXPECT_EQ(hit_allocations, 0) << "over " << hits << " cache-hit steps";
  EXPECT_EQ(resyncs, 9);
}

TEST(Allocation, CacheHitStepsAllocateNothingFloat) {
  check_no_allocation<float>({"tconstformer", 41, 32, 4, 2, 4, 16, 24, 64});
}
TEST(Allocation, CacheHitStepsAllocateNothingDouble) {
  check_no_allocation<double>({"tconstformer", 41, 32, 4, 2, 3, 16, 8, 64});
}
TEST(Allocation, CacheHitStepsAllocateNothingInBf16AndInt8) {
  for (tconst::Compute c : {tconst::Compute::bf16, tconst::Compute::int8}) {
    SCOPED_TRACE(tconst::to_string(c));
    check_no_allocation<float>({"tconstformer", 41, 32, 4, 2, 4, 16, 24, 64}, c);
  }
}
TEST(Allocation, TLinFormerHitStepsAllocateNothing) {
  check_no_allocation<float>({"tlinformer", 41, 32, 4, 2, 3, 16, 8, 64});
}

// The counter itself works (so a zero above means something).
TEST(Allocation, CounterCounts) {
  const long before = tconst_test::heap_allocations();
  auto* v = new std::string(100, 'x');
  delete v;
  EXPECT_GT(tconst_test::heap_allocations(), before);
}

// Aligned allocations count too (the library's scratch rows use them).
TEST(Allocation, CounterCountsAlignedNew) {
  const long before = tconst_test::heap_allocations();
  tconst::detail::LineVector<float> v(100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % 64, 0u);
  EXPECT_GT(tconst_test::heap_allocations(), before);
}

template <typename T>
bool all_zero(const tconst::detail::BigBuffer<T>& b) {
  for (size_t i = 0; i < b.size(); ++i) {
    if (b.data()[i] != T(0)) return false;
  }
  return true;
}

TEST(BigBuffer, ZeroedOnCacheLinesAndMovable) {
  // Below the huge-page size (heap) and above it (a mapping, on a page).
  for (size_t count : {size_t{1}, size_t{1000}, size_t{3} << 20}) {
    SCOPED_TRACE(count);
    tconst::detail::BigBuffer<float> b(count, "a test buffer");
    ASSERT_EQ(b.size(), count);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
#if defined(__linux__)
    if (count * sizeof(float) >= tconst::detail::BigBuffer<float>::kHugeFrom) {
      // A mapping that starts where a huge page can (2 MiB).
      EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % (size_t{2} << 20), 0u);
    }
#endif
    EXPECT_TRUE(all_zero(b));
    b.data()[count - 1] = 5.0f;
    float* const at = b.data();
    tconst::detail::BigBuffer<float> c(std::move(b));
    EXPECT_EQ(c.data(), at);
    EXPECT_EQ(c.size(), count);
    EXPECT_EQ(c.data()[count - 1], 5.0f);
    EXPECT_EQ(b.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_EQ(b.size(), 0u);
    tconst::detail::BigBuffer<float> d(16, "another");
    d = std::move(c);
    EXPECT_EQ(d.data(), at);
  }
  tconst::detail::BigBuffer<double> empty(0, "an empty buffer");
  EXPECT_EQ(empty.data(), nullptr);
}

TEST(BigBuffer, ImpossibleSizesNameWhatFailed) {
  try {
    tconst::detail::BigBuffer<double> b(SIZE_MAX / 4, "the test's cache");
    FAIL() << "allocated " << b.size() << " doubles";
  } catch (const tconst::Error& e) {
    EXPECT_NE(std::string(e.what()).find("the test's cache"), std::string::npos) << e.what();
  }
}

TEST(BigBuffer, FixedCacheStartsOnACacheLine) {
  tconst::ModelConfig c;
  c.arch = tconst::Architecture::kTConstFormer;
  c.vocab_size = 11;
  c.n_embd = 16;
  c.n_head = 2;
  c.ffn_hidden = 8;
  c.n_block = 2;
  c.inner_depth = 3;
  c.history_window = 4;
  c.generate_window = 5;
  const tconst::FixedKVCache<float> cache(c);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(cache.data()) % 64, 0u);
  const tconst::FixedKVCache<float> copy = cache.copy();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(copy.data()) % 64, 0u);
  for (size_t i = 0; i < cache.bytes() / sizeof(float); ++i) ASSERT_EQ(copy.data()[i], 0.0f);
}

}  // namespace
