// Everything about tokenizers, and the functions that pick one.
//
// A model's metadata names its tokenizer under `tconst.tokenizer`: "bytes" needs no files, "gpt2"
// needs its vocabulary, carried in the model file itself (embedded.hpp, SPEC §6.2) or in files the
// user points at with --tokenizer PATH. make_tokenizer() joins a name and a path.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/tokenizer/interface.hpp"
#include "tconst/tokenizer/stream_decoder.hpp"
#include "tconst/tokenizer/utf8.hpp"
#if TCONST_DEFINE_FUNCTIONS
#include "tconst/tokenizer/bytes.hpp"
#include "tconst/tokenizer/embedded.hpp"
#include "tconst/tokenizer/gpt2_bpe.hpp"
#endif

namespace tconst {
inline namespace TCONST_ABI {

// A unit that links tconst::precompiled sees these declared (their definitions, and the tokenizer
// classes they return, are in the library); include tokenizer/gpt2_bpe.hpp, bytes.hpp or
// embedded.hpp for the classes themselves.
TCONST_FUNCTION std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
TCONST_FUNCTION std::unique_ptr<Tokenizer> make_tokenizer_by_name(const std::string& name);
TCONST_FUNCTION std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name,
                                                          const std::string& path);

#if TCONST_DEFINE_FUNCTIONS

/// Loads a GPT-2 byte-level BPE tokenizer from `path`, which is either
///   * a directory holding vocab.json + merges.txt, or encoder.json + vocab.bpe, or tokenizer.json
///     (tried in that order), or
///   * a Hugging Face tokenizer.json file, or a vocab.json / encoder.json file whose merges file
///     (merges.txt / vocab.bpe) lies beside it.
TCONST_FUNCTION std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  auto is_file = [](const fs::path& f) {
    std::error_code e;
    return fs::is_regular_file(f, e);
  };
  if (!fs::exists(p, ec)) throw Error("tokenizer path '" + path + "' does not exist");

  if (fs::is_directory(p, ec)) {
    const std::pair<const char*, const char*> pairs[] = {{"vocab.json", "merges.txt"},
                                                         {"encoder.json", "vocab.bpe"}};
    for (const auto& [vocab, merges] : pairs) {
      const bool has_vocab = is_file(p / vocab);
      const bool has_merges = is_file(p / merges);
      if (has_vocab && has_merges) {
        return Gpt2BpeTokenizer::from_files((p / vocab).string(), (p / merges).string());
      }
      if (has_vocab != has_merges) {
        throw Error("tokenizer directory '" + path + "' has " + (has_vocab ? vocab : merges) +
                    " but not " + (has_vocab ? merges : vocab));
      }
    }
    if (is_file(p / "tokenizer.json")) {
      return Gpt2BpeTokenizer::from_tokenizer_json((p / "tokenizer.json").string());
    }
    throw Error("tokenizer directory '" + path +
                "' holds no tokenizer files: expected vocab.json + merges.txt, encoder.json + "
                "vocab.bpe, or tokenizer.json");
  }

  const std::string file_name = p.filename().string();
  if (file_name == "vocab.json" || file_name == "encoder.json") {
    const fs::path merges =
        p.parent_path() / (file_name == "vocab.json" ? "merges.txt" : "vocab.bpe");
    if (!is_file(merges)) {
      throw Error("tokenizer file '" + path + "' needs its merges file '" + merges.string() +
                  "' beside it");
    }
    return Gpt2BpeTokenizer::from_files(path, merges.string());
  }
  return Gpt2BpeTokenizer::from_tokenizer_json(path);
}

/// The tokenizers that need no files: only "bytes".
TCONST_FUNCTION std::unique_ptr<Tokenizer> make_tokenizer_by_name(const std::string& name) {
  if (name == "bytes") return std::make_unique<BytesTokenizer>();
  if (name == "gpt2") {
    throw Error(
        "the gpt2 tokenizer needs its vocabulary files; load it with load_tokenizer(PATH) "
        "(--tokenizer PATH)");
  }
  throw Error("unknown tokenizer '" + name + "' (known: bytes, gpt2)");
}

/// The tokenizer a model names in its metadata (`tconst.tokenizer`), with the user's
/// --tokenizer PATH ("" when not given).
TCONST_FUNCTION std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name,
                                                          const std::string& path) {
  if (name == "bytes") {
    // Files for a bytes model mean the user has mixed up models or flags; saying so beats
    // silently ignoring them.
    if (!path.empty()) {
      throw Error("the model uses the bytes tokenizer, which takes no files, but --tokenizer '" +
                  path + "' was given");
    }
    return make_tokenizer_by_name(name);
  }
  if (name == "gpt2") {
    if (path.empty()) {
      throw Error(
          "the model uses the gpt2 tokenizer and does not carry it: pass --tokenizer PATH, a "
          "directory with vocab.json + merges.txt (or encoder.json + vocab.bpe), or a "
          "tokenizer.json");
    }
    return load_tokenizer(path);
  }
  throw Error("the model names an unknown tokenizer '" + name + "' (known: bytes, gpt2)");
}
#endif  // TCONST_DEFINE_FUNCTIONS

}  // namespace TCONST_ABI
}  // namespace tconst
