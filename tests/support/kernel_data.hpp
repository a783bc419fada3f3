// Test data for the kernel tests: uniform random floats from tconst::Rng (the same for a seed on
// every platform), and the value that fills the padding around their inputs and outputs.
#pragma once

#include <cstdint>
#include <vector>

#include "tconst/synthetic.hpp"

namespace tconst_test {

/// What the kernel tests put in the padding of their buffers, to see any read or write of it.
constexpr float kPad = -7777.0f;

/// n floats uniform in [lo, hi), drawn from tconst::Rng with `seed`.
inline std::vector<float> random_floats(size_t n, uint64_t seed, double lo = -1.0,
                                        double hi = 1.0) {
  tconst::Rng rng(seed);
  std::vector<float> v(n);
  tconst::fill_uniform(rng, v.data(), static_cast<int64_t>(n), lo, hi);
  return v;
}

}  // namespace tconst_test
