// Printing generated tokens one at a time.
//
// A byte-level token can end in the middle of a multi-byte UTF-8 character (GPT-2 spells most
// emoji and CJK characters with two or three tokens), so writing each token's bytes as it comes
// would put half characters on the terminal. StreamDecoder returns only complete characters and
// holds back the last 1-3 bytes while they are still the beginning of a character.
//
// Bytes that can never form a character are replaced by U+FFFD, one per maximal ill-formed part
// (the same rule as to_valid_utf8 in utf8.hpp, TextDecoder and Python's errors="replace"), so the
// output is always valid UTF-8 and the concatenation of everything push() and flush() return
// equals to_valid_utf8(tokenizer.decode(all ids)). For text that was valid UTF-8 when it was
// encoded, that is the text itself. InvalidBytes::kPassThrough writes such bytes unchanged
// instead, for a caller that wants the exact bytes; then the concatenation equals decode(all ids).
//
// Not thread-safe (it has state); use one per output stream. It keeps a reference to the
// tokenizer, which must outlive it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/tokenizer/interface.hpp"
#include "tconst/tokenizer/utf8.hpp"
namespace tconst {
inline namespace TCONST_ABI {

class StreamDecoder {
 public:
  enum class InvalidBytes { kReplace, kPassThrough };

  explicit StreamDecoder(const Tokenizer& tokenizer,
                         InvalidBytes invalid_bytes = InvalidBytes::kReplace)
      : tokenizer_(tokenizer), invalid_bytes_(invalid_bytes) {}

  /// Adds one token; returns the text that is now complete (often empty for a partial character).
  /// An out-of-range id throws tconst::Error and leaves the decoder unchanged.
  std::string push(int32_t id) { return push_bytes(tokenizer_.token_bytes(id)); }

  /// Adds several tokens; all ids are checked before any is taken.
  std::string push(const std::vector<int32_t>& ids) {
    std::string bytes;
    for (const int32_t id : ids) bytes += tokenizer_.token_bytes(id);
    return push_bytes(bytes);
  }

  /// Adds raw bytes (for callers that already have them).
  std::string push_bytes(std::string_view bytes) {
    pending_.append(bytes);
    std::string out;
    std::size_t pos = 0;
    while (pos < pending_.size()) {
      const detail::Utf8Step step = detail::decode_utf8_at(pending_, pos);
      if (step.status == detail::Utf8Status::kTruncated) break;  // wait for the next token
      emit(step, pos, out);
      pos += step.length;
    }
    pending_.erase(0, pos);
    return out;
  }

  /// Ends the stream: returns what was held back (an unfinished character, as U+FFFD or raw) and
  /// makes the decoder ready for a new stream.
  std::string flush() {
    std::string out;
    if (!pending_.empty()) {
      out = invalid_bytes_ == InvalidBytes::kReplace ? std::string(detail::kReplacementCharacter)
                                                     : pending_;
    }
    pending_.clear();
    return out;
  }

  /// Drops anything held back.
  void reset() { pending_.clear(); }

  /// Bytes held back, waiting for the rest of a character (0..3).
  std::size_t pending_bytes() const { return pending_.size(); }

 private:
  void emit(const detail::Utf8Step& step, std::size_t pos, std::string& out) const {
    if (step.status == detail::Utf8Status::kValid || invalid_bytes_ == InvalidBytes::kPassThrough) {
      out.append(pending_, pos, step.length);
    } else {
      out.append(detail::kReplacementCharacter);
    }
  }

  const Tokenizer& tokenizer_;
  InvalidBytes invalid_bytes_;
  std::string pending_;
};

}  // namespace TCONST_ABI
}  // namespace tconst
