#include <cstdio>
#include <tconst/tconst.hpp>

int main(int argc, char** argv) {
  auto model = tconst::Model<float>::load(argc > 1 ? argv[1] : "models/kjv-tconst.safetensors");
  auto session = tconst::make_session(model);  // fixed-size cache, allocated once
  auto tokenizer = tconst::make_tokenizer(model->config().tokenizer, "");
  tconst::StreamDecoder text(*tokenizer);  // prints whole UTF-8 characters only
  tconst::GenerateOptions options;
  options.max_new_tokens = 200;
  options.sampler.temperature = 0.8f;
  tconst::generate(*session, tokenizer->encode("In the beginning"), options, [&](int32_t id) {
    std::fputs(text.push(id).c_str(), stdout);
    return true;  // false stops generation
  });
  std::printf("%s\n[cache: %zu bytes]\n", text.flush().c_str(), session->cache_bytes());
}
