// tconst tokenize / detokenize: text on standard input to ids on standard output, and back.

#include <cstdio>
#include <memory>
#include <string>

#include "commands.hpp"
#include "tconst/tconst.hpp"

namespace tconst_cli {
namespace {

/// The tokenizer a model names (--model), or the one given by --tokenizer.
std::unique_ptr<tconst::Tokenizer> tokenizer_from_flags(const Args& args) {
  if (!args.has("model")) return tokenizer_for(nullptr, args);
  auto model = tconst::Model<float>::load(args.str("model"));
  return tokenizer_for(&model->config(), args);
}

}  // namespace

int cmd_tokenize(const Args& args) {
  const auto tok = tokenizer_from_flags(args);
  print_ids(tok->encode(read_stdin()));
  return 0;
}

int cmd_detokenize(const Args& args) {
  const auto tok = tokenizer_from_flags(args);
  const auto ids = tconst::parse_ids(read_stdin(), tok->vocab_size());
  const std::string text = tok->decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

}  // namespace tconst_cli
