// Cache-hit steps make no heap allocation: a replaced global operator new counts them.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>

#include "support/counting_new.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "tconst/tconst.hpp"

namespace {

template <typename Scalar>
void check_no_allocation(const tconst_test::RefShape& shape) {
  const std::string path = ::testing::TempDir() + "tconst_alloc_" +
                           ::testing::UnitTest::GetInstance()->current_test_info()->name() +
                           ".safetensors";
  tconst_test::write_model(tconst_test::make_random_model(shape, 11), path, "F32");
  auto model = tconst::Model<Scalar>::load(path);
  tconst::Scheduler<Scalar> s(model);
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

}  // namespace
