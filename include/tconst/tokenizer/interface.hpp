// The tokenizer interface. Implementations: bytes.hpp (one token per byte) and gpt2_bpe.hpp (GPT-2
// byte-level BPE). tokenizer.hpp includes everything and has the factory functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tconst/detail/abi.hpp"

namespace tconst {
inline namespace TCONST_ABI {

/// Turns text into token ids and back. Every implementation here is byte-level: any byte string,
/// valid UTF-8 or not, encodes, and decode(encode(s)) == s. An id outside [0, vocab_size()) given
/// to decode or token_bytes is a user error and throws tconst::Error.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  virtual std::vector<int32_t> encode(std::string_view text) const = 0;

  /// The concatenated bytes of the tokens. A token can end in the middle of a multi-byte UTF-8
  /// character, so the result of decoding a prefix of a sequence may be invalid UTF-8; use
  /// StreamDecoder (stream_decoder.hpp) to print tokens as they are generated.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;

  /// The raw bytes of one token.
  virtual std::string token_bytes(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;

  /// "bytes" or "gpt2": the value that model metadata stores under `tconst.tokenizer`.
  virtual std::string name() const = 0;
};

}  // namespace TCONST_ABI
}  // namespace tconst
