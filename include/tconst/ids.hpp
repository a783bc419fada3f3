#pragma once
// Token ids as text: whitespace-separated decimal integers (SPEC §7's ids files).

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
namespace tconst {
inline namespace TCONST_ABI {

/// Parses whitespace-separated decimal ids. Throws Error naming the first bad token and where it
/// is (line and column) for anything else: signs, letters, fractions, values above int32 range,
/// or (when vocab_size > 0) ids outside [0, vocab_size).
inline std::vector<int32_t> parse_ids(std::string_view text, int64_t vocab_size = 0) {
  std::vector<int32_t> ids;
  size_t i = 0, line = 1, line_start = 0;
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  };
  while (i < text.size()) {
    const char c = text[i];
    if (is_space(c)) {
      if (c == '\n') {
        ++line;
        line_start = i + 1;
      }
      ++i;
      continue;
    }
    const size_t begin = i;
    while (i < text.size() && !is_space(text[i])) ++i;
    const std::string_view word = text.substr(begin, i - begin);
    const std::string where =
        " at line " + std::to_string(line) + ", column " + std::to_string(begin - line_start + 1);
    const std::string shown(word.substr(0, 32));
    int64_t value = 0;
    for (char ch : word) {
      if (ch < '0' || ch > '9') throw Error("malformed token id '" + shown + "'" + where);
      value = value * 10 + (ch - '0');
      if (value > std::numeric_limits<int32_t>::max()) {
        throw Error("token id '" + shown + "' is out of range" + where);
      }
    }
    if (vocab_size > 0 && value >= vocab_size) {
      throw Error("token id " + std::to_string(value) + where + " is outside [0, " +
                  std::to_string(vocab_size) + ")");
    }
    ids.push_back(static_cast<int32_t>(value));
  }
  return ids;
}

/// Reads a whole file into a string; throws Error if it cannot be read.
inline std::string read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error("'" + path + "' is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open '" + path + "'");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error("cannot read '" + path + "'");
  return s;
}

/// parse_ids over a file's contents.
inline std::vector<int32_t> read_ids_file(const std::string& path, int64_t vocab_size = 0) {
  try {
    return parse_ids(read_file(path), vocab_size);
  } catch (const Error& e) {
    throw Error("ids file '" + path + "': " + e.what());
  }
}

}  // namespace TCONST_ABI
}  // namespace tconst
