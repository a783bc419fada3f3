// libFuzzer target: arbitrary text as an ids file (tconst::parse_ids), without a vocabulary bound
// and with one. The bound may only reject more: what parses under it parses the same without it.
#include <cstdint>
#include <string_view>
#include <vector>

#include "fuzz/fuzz_common.hpp"

namespace {

bool parse(std::string_view text, int64_t vocab, std::vector<int32_t>* out) {
  try {
    *out = tconst::parse_ids(text, vocab);
    return true;
  } catch (const tconst::Error&) {
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<int32_t> unbounded, bounded;
  const bool ok = parse(text, 0, &unbounded);
  for (int32_t v : unbounded) TCONST_FUZZ_CHECK(v >= 0);
  // The bound: fixed ones (1, GPT-2's 50257, int32 max + 1) and one taken from the input.
  const int64_t data_bound = size > 0 ? 1 + data[0] * 37 : 1;
  for (int64_t vocab : {int64_t{1}, int64_t{50257}, int64_t{1} << 31, data_bound}) {
    const bool bounded_ok = parse(text, vocab, &bounded);
    if (!ok) {
      TCONST_FUZZ_CHECK(!bounded_ok);
      continue;
    }
    bool in_range = true;
    for (int32_t v : unbounded) in_range = in_range && v < vocab;
    TCONST_FUZZ_CHECK(bounded_ok == in_range);
    if (bounded_ok) TCONST_FUZZ_CHECK(bounded == unbounded);
  }
  return 0;
}
