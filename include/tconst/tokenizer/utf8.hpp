// UTF-8 helpers shared by the GPT-2 pre-tokeniser and the streaming decoder.
//
// Decoding follows the Unicode standard's well-formedness table (no overlong forms, no surrogates,
// nothing above U+10FFFF). When a sequence is broken, the bytes that are replaced by one U+FFFD are
// the "maximal subpart" (Unicode 15, section 3.9, U+FFFD substitution of maximal subparts), which
// is also what browsers' TextDecoder and Python's bytes.decode(errors="replace") do, so text that
// we print matches what those tools would print for the same bytes.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "tconst/detail/abi.hpp"

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

enum class Utf8Status {
  kValid,      // a complete, well-formed character of `length` bytes
  kInvalid,    // `length` bytes (>= 1) that can never start a character: replace them by U+FFFD
  kTruncated,  // the rest of the input is a well-formed prefix of a character: wait for more
};

struct Utf8Step {
  Utf8Status status;
  std::size_t length;
  char32_t code_point;  // only meaningful for kValid
};

/// Looks at the character that starts at s[pos] (pos < s.size()).
inline Utf8Step decode_utf8_at(std::string_view s, std::size_t pos) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  if (lead < 0x80) return {Utf8Status::kValid, 1, lead};
  std::size_t trail = 0;
  char32_t cp = 0;
  // The bounds of the first continuation byte depend on the lead byte; that is how the standard
  // rules out overlong forms (E0, F0), surrogates (ED) and values above U+10FFFF (F4).
  unsigned char low = 0x80;
  unsigned char high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    trail = 1;
    cp = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    trail = 2;
    cp = lead & 0x0F;
    if (lead == 0xE0) low = 0xA0;
    if (lead == 0xED) high = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    trail = 3;
    cp = lead & 0x07;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;
  } else {
    return {Utf8Status::kInvalid, 1, 0};  // 80..BF, C0, C1, F5..FF never start a character
  }
  for (std::size_t i = 1; i <= trail; ++i) {
    if (pos + i >= s.size()) return {Utf8Status::kTruncated, s.size() - pos, 0};
    const auto b = static_cast<unsigned char>(s[pos + i]);
    if (b < low || b > high) return {Utf8Status::kInvalid, i, 0};
    low = 0x80;
    high = 0xBF;
    cp = (cp << 6) | (b & 0x3F);
  }
  return {Utf8Status::kValid, trail + 1, cp};
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace detail

/// True when `s` is well-formed UTF-8 in its entirety.
inline bool is_valid_utf8(std::string_view s) {
  for (std::size_t pos = 0; pos < s.size();) {
    const detail::Utf8Step step = detail::decode_utf8_at(s, pos);
    if (step.status != detail::Utf8Status::kValid) return false;
    pos += step.length;
  }
  return true;
}

/// Returns `s` with every ill-formed part (including a cut-off character at the end) replaced by
/// U+FFFD; well-formed input comes back unchanged.
inline std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t pos = 0; pos < s.size();) {
    const detail::Utf8Step step = detail::decode_utf8_at(s, pos);
    if (step.status == detail::Utf8Status::kValid) {
      out.append(s.substr(pos, step.length));
    } else {
      out.append(detail::kReplacementCharacter);
    }
    pos += step.length;
  }
  return out;
}

}  // namespace TCONST_ABI
}  // namespace tconst
