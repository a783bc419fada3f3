// libFuzzer target: GPT-2 BPE tokenizer files. The input is split at its first NUL byte (JSON
// holds none) into vocab.json text and merges text for Gpt2BpeTokenizer::from_strings; the whole
// input is also tried as a tokenizer.json. A tokenizer that loads must encode and decode: ids in
// range, and decode(encode(s)) == s (with the leading space that add_prefix_space adds).
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/fuzz_common.hpp"
#include "tconst/tokenizer/gpt2_bpe.hpp"

namespace {

void exercise(const tconst::Gpt2BpeTokenizer& tok, std::string_view extra) {
  const int32_t V = tok.vocab_size();
  TCONST_FUZZ_CHECK(V >= 256);
  // A fixed text with multi-byte characters, contractions and runs of spaces, then up to 64
  // bytes of the input itself (arbitrary bytes, possibly invalid UTF-8).
  std::string text = "Hello, world! It's 2024:  caf\xC3\xA9 \xE2\x82\xAC\n\tok";
  text.append(extra.substr(0, 64));
  for (std::string_view s : {std::string_view(text), std::string_view(" a"), std::string_view()}) {
    const std::vector<int32_t> ids = tok.encode(s);
    for (int32_t id : ids) TCONST_FUZZ_CHECK(id >= 0 && id < V);
    const std::string back = tok.decode(ids);
    const bool prefixed = tok.add_prefix_space() && !s.empty() && s.front() != ' ';
    TCONST_FUZZ_CHECK(back == (prefixed ? " " + std::string(s) : std::string(s)));
  }
  for (int32_t bad : {-1, V}) {
    try {
      (void)tok.token_bytes(bad);
      TCONST_FUZZ_CHECK(!"an out-of-range id was decoded");
    } catch (const tconst::Error&) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string_view vocab = input.substr(0, nul);
  const std::string_view merges =
      nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1);

  std::unique_ptr<tconst::Gpt2BpeTokenizer> tok;
  try {
    tok = tconst::Gpt2BpeTokenizer::from_strings(vocab, merges);
  } catch (const tconst::Error&) {
  }
  if (tok) exercise(*tok, merges);

  tok.reset();
  try {
    tok = tconst::Gpt2BpeTokenizer::from_tokenizer_json_string(input);
  } catch (const tconst::Error&) {
  }
  if (tok) exercise(*tok, input);
  return 0;
}
