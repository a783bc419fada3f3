// The two fixed parts of GPT-2's byte-level BPE that do not depend on the vocabulary:
//
//  * the byte <-> "printable character" table with which vocab.json spells raw bytes (a space is
//    written as U+0120 'Ġ', a newline as U+010A 'Ċ', ...), and
//  * the pre-tokenisation rule that cuts text into pieces before BPE runs on each piece, which
//    GPT-2 states as the regular expression
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//    and which is implemented here by hand (no regex engine), alternative by alternative.
//
// Character classes: \p{L} and \p{N} are the Unicode general categories L and N
// (unicode_ranges.hpp); \s is the Unicode White_Space property. The latter is what Python's
// `regex` module (used by OpenAI's encoder.py) means by \s. JavaScript's \s differs in two
// characters that real text hardly has: it adds U+FEFF and lacks U+0085; so for those two the npm
// gpt-3-encoder package splits differently from this code and from OpenAI's.
//
// Bytes that are not well-formed UTF-8 count one by one as "other" characters ([^\s\p{L}\p{N}]):
// they stay in the pieces unchanged, so encoding is still lossless for arbitrary bytes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/tokenizer/unicode_ranges.hpp"
#include "tconst/tokenizer/utf8.hpp"
namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

// ---- byte <-> unicode table --------------------------------------------------------------------

/// GPT-2 keeps the bytes that are visible Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') as
/// themselves and gives the other 68 bytes, in increasing order, the code points 256, 257, ...
/// so that every token is a string of visible characters.
constexpr bool gpt2_byte_is_visible(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

constexpr std::array<char32_t, 256> make_gpt2_byte_to_unicode() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = gpt2_byte_is_visible(b) ? char32_t(b) : next++;
  return table;
}

inline constexpr std::array<char32_t, 256> kGpt2ByteToUnicode = make_gpt2_byte_to_unicode();

/// Number of code points the table uses: 0..255 plus the 68 remapped bytes.
inline constexpr char32_t kGpt2UnicodeLimit = 256 + 68;

constexpr std::array<int16_t, kGpt2UnicodeLimit> make_gpt2_unicode_to_byte() {
  std::array<int16_t, kGpt2UnicodeLimit> table{};
  for (auto& v : table) v = -1;
  for (int b = 0; b < 256; ++b) table[kGpt2ByteToUnicode[b]] = static_cast<int16_t>(b);
  return table;
}

inline constexpr std::array<int16_t, kGpt2UnicodeLimit> kGpt2UnicodeToByte =
    make_gpt2_unicode_to_byte();

/// The byte that code point `cp` stands for in a vocabulary string, or -1 if it stands for none.
inline int gpt2_unicode_to_byte(char32_t cp) {
  return cp < kGpt2UnicodeLimit ? kGpt2UnicodeToByte[cp] : -1;
}

// ---- character classes -------------------------------------------------------------------------

template <std::size_t N>
bool in_ranges(const CodePointRange (&ranges)[N], char32_t cp) {
  std::size_t lo = 0;
  std::size_t hi = N;
  while (lo < hi) {  // first range whose end is >= cp
    const std::size_t mid = (lo + hi) / 2;
    if (ranges[mid].last < cp) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < N && ranges[lo].first <= cp;
}

inline bool is_unicode_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(kLetterRanges, cp);
}

inline bool is_unicode_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(kNumberRanges, cp);
}

/// The Unicode White_Space property (PropList.txt); unchanged since Unicode 6.3.
inline bool is_unicode_space(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

inline CharClass classify(char32_t cp) {
  if (is_unicode_letter(cp)) return CharClass::kLetter;
  if (is_unicode_number(cp)) return CharClass::kNumber;
  if (is_unicode_space(cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

// ---- pre-tokenisation --------------------------------------------------------------------------

struct Gpt2Char {
  std::size_t length;  // bytes
  CharClass cls;
};

/// The character that starts at text[pos]; a byte that is not well-formed UTF-8 is a one-byte
/// "other" character.
inline Gpt2Char gpt2_char_at(std::string_view text, std::size_t pos) {
  const Utf8Step step = decode_utf8_at(text, pos);
  if (step.status == Utf8Status::kValid) return {step.length, classify(step.code_point)};
  return {1, CharClass::kOther};
}

/// Calls `emit(std::string_view piece)` for each piece of `text`, in order. The pieces concatenate
/// to `text` exactly. Works in one pass with constant memory, so the text may be large.
template <typename Emit>
void gpt2_pretokenize(std::string_view text, Emit&& emit) {
  const std::size_t n = text.size();
  // The contractions and the optional leading space are ASCII, and an ASCII byte in UTF-8 is
  // always a whole character, so those tests can look at bytes.
  auto byte_is = [&](std::size_t pos, char c) { return pos < n && text[pos] == c; };
  std::size_t i = 0;
  while (i < n) {
    // 's|'t|'re|'ve|'m|'ll|'d  (lower case only, as in GPT-2)
    if (text[i] == '\'') {
      if (byte_is(i + 1, 's') || byte_is(i + 1, 't') || byte_is(i + 1, 'm') ||
          byte_is(i + 1, 'd')) {
        emit(text.substr(i, 2));
        i += 2;
        continue;
      }
      if ((byte_is(i + 1, 'r') && byte_is(i + 2, 'e')) ||
          (byte_is(i + 1, 'v') && byte_is(i + 2, 'e')) ||
          (byte_is(i + 1, 'l') && byte_is(i + 2, 'l'))) {
        emit(text.substr(i, 3));
        i += 3;
        continue;
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional U+0020 and then a run of one
    // class. A space that is not followed by such a run is left to the whitespace alternatives.
    std::size_t start = i;
    Gpt2Char c = gpt2_char_at(text, i);
    if (text[i] == ' ' && i + 1 < n) {
      const Gpt2Char after = gpt2_char_at(text, i + 1);
      if (after.cls != CharClass::kSpace) {
        start = i + 1;
        c = after;
      }
    }
    if (c.cls != CharClass::kSpace) {
      std::size_t end = start + c.length;
      while (end < n) {
        const Gpt2Char d = gpt2_char_at(text, end);
        if (d.cls != c.cls) break;
        end += d.length;
      }
      emit(text.substr(i, end - i));
      i = end;
      continue;
    }
    // '\s+(?!\S)|\s+': a whitespace run that reaches the end of the text is one piece. Otherwise
    // the first alternative backtracks one character so that the last whitespace character is
    // left to precede the next word (where a ' ' joins it); a run of one falls through to '\s+'.
    std::size_t last = i;  // start of the run's last character
    std::size_t end = i + c.length;
    while (end < n) {
      const Gpt2Char d = gpt2_char_at(text, end);
      if (d.cls != CharClass::kSpace) break;
      last = end;
      end += d.length;
    }
    if (end < n && last > i) end = last;
    emit(text.substr(i, end - i));
    i = end;
  }
}

/// The pieces as a vector (for tests and tools; encode uses the callback form).
inline std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  gpt2_pretokenize(text, [&](std::string_view piece) { pieces.push_back(piece); });
  return pieces;
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
