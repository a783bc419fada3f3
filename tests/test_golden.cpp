// The session against the authors' PyTorch model: per-token logits and greedy continuations of
// the three committed golden cases (tests/data/golden/), in float and double.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "tconst/tconst.hpp"

namespace {

const std::string kDir = std::string(TCONST_TEST_DATA_DIR) + "/golden/";

class Golden : public ::testing::TestWithParam<const char*> {};

template <typename Scalar>
void check_logits(const std::string& name) {
  auto model = tconst::Model<Scalar>::load(kDir + name + "/model.safetensors");
  const auto ids = tconst::read_ids_file(kDir + name + "/ids.txt");
  const std::vector<float> ref = tconst_test::read_f32(kDir + name + "/ref_logits.f32");
  const auto V = static_cast<size_t>(model->config().vocab_size);
  ASSERT_EQ(ref.size(), ids.size() * V);
  auto session = tconst::make_session(model);
  for (size_t p = 0; p < ids.size(); ++p) {
    const auto& logits = session->feed(ids[p]);
    double max_ref = 0, diff = 0;
    for (size_t v = 0; v < V; ++v) {
      max_ref = std::max(max_ref, std::abs(double(ref[p * V + v])));
      diff = std::max(diff, std::abs(double(logits[Eigen::Index(v)]) - ref[p * V + v]));
    }
    ASSERT_LE(diff, 2e-4 * (1 + max_ref)) << name << " position " << p;
  }
}

TEST_P(Golden, LogitsFloat) {
  check_logits<float>(GetParam());
}
TEST_P(Golden, LogitsDouble) {
  check_logits<double>(GetParam());
}

TEST_P(Golden, GreedyContinuation) {
  const std::string name = GetParam();
  auto model = tconst::Model<float>::load(kDir + name + "/model.safetensors");
  const auto prompt = tconst::read_ids_file(kDir + name + "/prompt.txt");
  const auto expected = tconst::read_ids_file(kDir + name + "/ref_greedy.txt");
  auto session = tconst::make_session(model);
  const auto* logits = &session->prefill(prompt);
  std::vector<int32_t> got;
  for (size_t i = 0; i < expected.size(); ++i) {
    Eigen::Index best;
    logits->maxCoeff(&best);
    got.push_back(static_cast<int32_t>(best));
    logits = &session->feed(static_cast<int32_t>(best));
  }
  EXPECT_EQ(got, expected) << name;
}

INSTANTIATE_TEST_SUITE_P(Cases, Golden,
                         ::testing::Values("tconst_D4_W8_H8", "tlin_D4_W8_H8", "transformer_L4"));

}  // namespace
