// A unit compiled header-only and without OpenMP, linked into the same program as main.cpp.
#ifdef _OPENMP
#error "plain.cpp must be compiled without OpenMP"
#endif
#include <string>
#include <tconst/tconst.hpp>
#include <typeinfo>
#include <vector>

std::vector<int> plain_greedy(const char* path, std::string& session_type) {
  auto model = tconst::Model<float>::load(path);
  auto session = tconst::make_session(model);
  session_type = typeid(*session).name();
  std::vector<int> ids;
  const auto* logits = &session->prefill({1, 2, 3});
  for (int i = 0; i < 20; ++i) {
    ids.push_back(tconst::greedy_token(*logits));
    logits = &session->feed(ids.back());
  }
  return ids;
}
