// Streams a model's continuation of a prompt to the terminal: the program to copy.
//   stream MODEL.safetensors ["PROMPT"] [TOKENIZER_PATH (gpt2 models only)]
#include <cstdio>
#include <exception>
#include <string>

#include "tconst/generate.hpp"
#include "tconst/tconst.hpp"
#include "tconst/tokenizer/tokenizer.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors [PROMPT] [TOKENIZER_PATH]\n", argv[0]);
    return 2;
  }
  try {
    auto model = tconst::Model<float>::load(argv[1]);
    auto session = tconst::make_session(model);
    // The model names its tokenizer: "bytes" needs no files, "gpt2" needs its vocabulary.
    const std::string name =
        model->config().tokenizer.empty() ? "bytes" : model->config().tokenizer;
    auto tokenizer = tconst::make_tokenizer(name, argc > 3 ? argv[3] : "");
    const std::string prompt = argc > 2 ? argv[2] : "And God said";

    tconst::GenerateOptions options;
    options.max_new_tokens = 200;
    options.sampler.temperature = 0.8f;
    options.sampler.top_p = 0.95f;
    options.sampler.seed = 1;

    // A token can end halfway through a UTF-8 character; the decoder hands out whole ones only.
    tconst::StreamDecoder decoder(*tokenizer);
    auto print = [](const std::string& text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);  // show each piece now, not when the buffer fills
    };
    print(prompt);
    const tconst::GenerateStats stats =
        tconst::generate(*session, tokenizer->encode(prompt), options, [&](int32_t id) {
          print(decoder.push(id));
          return true;  // returning false would stop the generation here
        });
    print(decoder.flush() + "\n");
    std::fprintf(stderr, "%lld tokens in %.2f s (%s)\n", static_cast<long long>(stats.generated),
                 stats.generate_seconds, stats.stop_reason.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
