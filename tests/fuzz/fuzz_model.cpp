// libFuzzer target: arbitrary bytes as a model file (Model<float>::load_from_bytes). A file that
// loads must also serve a session: a few tokens fed, bad ids rejected without changing it.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "fuzz/fuzz_common.hpp"

namespace {

// A model that loads may still ask for a session far too big for a fuzzing process (the windows
// come from the metadata, not from tensor sizes): such models are only loaded.
bool small_enough_for_a_session(const tconst::ModelConfig& c) {
  constexpr int64_t kMaxScalars = int64_t{1} << 22;
  return c.generate_window <= 1024 && c.history_window <= 1024 &&
         c.fixed_cache_scalars() <= kMaxScalars &&
         c.generate_window * (6 * c.n_embd + 2 * c.ffn_hidden) <= kMaxScalars;
}

void exercise(const std::shared_ptr<const tconst::Model<float>>& model) {
  const tconst::ModelConfig& c = model->config();
  TCONST_FUZZ_CHECK(c.vocab_size > 0 && c.n_embd > 0 && c.ffn_hidden > 0);
  TCONST_FUZZ_CHECK(model->embedding().rows == c.vocab_size);
  if (!small_enough_for_a_session(c)) return;
  auto s = tconst::make_session(model);
  const int32_t V = static_cast<int32_t>(c.vocab_size);
  s->feed(0);
  s->feed(V - 1);
  TCONST_FUZZ_CHECK(s->position() == 2 && s->logits().size() == V);
  for (int32_t bad : {-1, V}) {
    try {
      s->feed(bad);
      TCONST_FUZZ_CHECK(!"an out-of-range id was accepted");
    } catch (const tconst::Error&) {
    }
  }
  TCONST_FUZZ_CHECK(s->position() == 2);
  const int32_t prompt[] = {V / 2, 0, V - 1};
  s->prefill(prompt, 3);
  TCONST_FUZZ_CHECK(s->position() == 5);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::shared_ptr<const tconst::Model<float>> model;
  try {
    model = tconst::Model<float>::load_from_bytes(std::vector<uint8_t>(data, data + size), "fuzz");
  } catch (const tconst::Error&) {
    return 0;  // rejected with a message: expected
  }
  exercise(model);  // a loaded model must work: no Error expected here
  return 0;
}
