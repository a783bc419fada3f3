// Streams a model's greedy continuation of a few ids: proves the installed package is usable. With
// CONSUMER_MIXED, also runs the same stream in plain.cpp (header-only, no OpenMP) and checks that
// the two agree and are distinct instantiations.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <tconst/tconst.hpp>
#include <typeinfo>
#include <vector>

#if CONSUMER_MIXED
std::vector<int> plain_greedy(const char* path, std::string& session_type);
#endif

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer MODEL\n");
    return 2;
  }
  try {
    auto model = tconst::Model<float>::load(argv[1]);
    auto session = tconst::make_session(model);
    std::vector<int> ids;
    const auto* logits = &session->prefill({1, 2, 3});
    for (int i = 0; i < 20; ++i) {
      ids.push_back(tconst::greedy_token(*logits));
      std::printf("%d ", ids.back());
      logits = &session->feed(ids.back());
    }
    // FNV-1a of the last logits' bytes: equal hashes, equal bits.
    uint64_t hash = 1469598103934665603ull;
    const auto* bytes = reinterpret_cast<const unsigned char*>(logits->data());
    for (size_t i = 0; i < sizeof(float) * static_cast<size_t>(logits->size()); ++i) {
      hash = (hash ^ bytes[i]) * 1099511628211ull;
    }
    std::printf("\nlogits fnv1a %016llx\n", static_cast<unsigned long long>(hash));
    std::printf("version %s, cache %zu bytes, kernels %s\n", tconst::kVersion,
                session->cache_bytes(), tconst::vector_kernels());
#if CONSUMER_MIXED
    std::string plain_type;
    const std::vector<int> plain = plain_greedy(argv[1], plain_type);
    const std::string type = typeid(*session).name();
    if (plain != ids) {
      std::fprintf(stderr, "consumer: the unit without OpenMP streamed other tokens\n");
      return 1;
    }
    if (plain_type == type) {
      std::fprintf(stderr, "consumer: both units share one instantiation (%s)\n", type.c_str());
      return 1;
    }
    std::printf("mixed units agree: %s and %s\n", type.c_str(), plain_type.c_str());
#endif
  } catch (const tconst::Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
  return 0;
}
