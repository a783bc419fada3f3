// Token ids for tests, the same on every platform and standard library.
#pragma once

#include <cstdint>
#include <vector>

#include "ref_model.hpp"

namespace tconst_test {

/// `n` token ids, each uniform in [0, V), drawn from SplitMix64(seed): the same ids for the same
/// arguments everywhere.
inline std::vector<int32_t> random_tokens(int n, int V, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.next() % static_cast<uint64_t>(V));
  return ids;
}

}  // namespace tconst_test
