#pragma once
// A tokenizer carried inside a model file (SPEC §6.2): the text of its vocabulary and merges, or
// of a tokenizer.json, in the file's metadata, so that the file alone is enough to turn text into
// ids and back.

#include <map>
#include <memory>
#include <string>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/tokenizer/gpt2_bpe.hpp"
#include "tconst/tokenizer/interface.hpp"
namespace tconst {
inline namespace TCONST_ABI {

/// The SPEC §6.2 metadata keys.
inline constexpr const char* kTokenizerVocabKey = "tconst.tokenizer.vocab";
inline constexpr const char* kTokenizerMergesKey = "tconst.tokenizer.merges";
inline constexpr const char* kTokenizerJsonKey = "tconst.tokenizer.json";

/// True when `metadata` carries a tokenizer (any of the SPEC §6.2 keys).
inline bool has_embedded_tokenizer(const std::map<std::string, std::string>& metadata) {
  return metadata.count(kTokenizerVocabKey) || metadata.count(kTokenizerMergesKey) ||
         metadata.count(kTokenizerJsonKey);
}

/// The tokenizer a model file's metadata carries, or nullptr when it carries none. `label` names
/// the file in errors. Throws Error naming the key when the keys are inconsistent or their text
/// does not parse.
inline std::unique_ptr<Tokenizer> embedded_tokenizer(
    const std::map<std::string, std::string>& metadata, const std::string& label) {
  if (!has_embedded_tokenizer(metadata)) return nullptr;
  const auto at = [&](const char* key) -> const std::string* {
    const auto it = metadata.find(key);
    return it == metadata.end() ? nullptr : &it->second;
  };
  const std::string where = "model file '" + label + "'";
  const std::string* name = at("tconst.tokenizer");
  if (name == nullptr || *name != "gpt2") {
    throw Error(where + " carries a tokenizer but its tconst.tokenizer is " +
                (name == nullptr ? std::string("missing") : "'" + *name + "'") +
                ", expected 'gpt2'");
  }
  const std::string *vocab = at(kTokenizerVocabKey), *merges = at(kTokenizerMergesKey),
                    *json = at(kTokenizerJsonKey);
  if (json != nullptr && (vocab != nullptr || merges != nullptr)) {
    throw Error(where + " carries both " + kTokenizerJsonKey + " and " +
                (vocab != nullptr ? kTokenizerVocabKey : kTokenizerMergesKey) +
                "; a file holds one form of its tokenizer");
  }
  if (json != nullptr) {
    return Gpt2BpeTokenizer::from_tokenizer_json_string(*json, where + " " + kTokenizerJsonKey);
  }
  if (vocab == nullptr || merges == nullptr) {
    throw Error(where + " has " + (vocab != nullptr ? kTokenizerVocabKey : kTokenizerMergesKey) +
                " without " + (vocab != nullptr ? kTokenizerMergesKey : kTokenizerVocabKey));
  }
  return Gpt2BpeTokenizer::from_strings(*vocab, *merges, where + " " + kTokenizerVocabKey,
                                        where + " " + kTokenizerMergesKey);
}

/// The tokenizer the model file at `path` carries, or nullptr when it carries none. Reads only the
/// file's header.
inline std::unique_ptr<Tokenizer> embedded_tokenizer(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  return embedded_tokenizer(file.metadata(), file.label());
}

}  // namespace TCONST_ABI
}  // namespace tconst
