// The trivial tokenizer: token id = byte value, 256 tokens. Stateless, so safe to share between
// threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/tokenizer/interface.hpp"
namespace tconst {
inline namespace TCONST_ABI {

class BytesTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kVocabSize = 256;

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    for (const char c : text) ids.push_back(static_cast<unsigned char>(c));
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (const int32_t id : ids) out.push_back(byte_of(id));
    return out;
  }

  std::string token_bytes(int32_t id) const override { return std::string(1, byte_of(id)); }

  int32_t vocab_size() const override { return kVocabSize; }

  std::string name() const override { return "bytes"; }

 private:
  static char byte_of(int32_t id) {
    if (id < 0 || id >= kVocabSize) {
      throw Error("token id " + std::to_string(id) +
                  " is out of range for the bytes tokenizer (valid ids are 0..255)");
    }
    return static_cast<char>(static_cast<unsigned char>(id));
  }
};

}  // namespace TCONST_ABI
}  // namespace tconst
