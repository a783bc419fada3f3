// Streams a model's greedy continuation of a few ids: proves the installed package is usable.
#include <cstdio>
#include <cstdlib>
#include <tconst/tconst.hpp>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer MODEL\n");
    return 2;
  }
  try {
    auto model = tconst::Model<float>::load(argv[1]);
    auto session = tconst::make_session(model);
    const auto* logits = &session->prefill({1, 2, 3});
    for (int i = 0; i < 20; ++i) {
      Eigen::Index next;
      logits->maxCoeff(&next);
      std::printf("%d ", static_cast<int>(next));
      logits = &session->feed(static_cast<int32_t>(next));
    }
    std::printf("\nversion %s, cache %zu bytes\n", tconst::kVersion, session->cache_bytes());
  } catch (const tconst::Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
  return 0;
}
