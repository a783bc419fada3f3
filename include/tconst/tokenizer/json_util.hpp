// Reading tokenizer files: whole-file reads and JSON parsing that turn every failure into a
// tconst::Error that names the file and the problem.
#pragma once

#include <cstddef>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

inline std::string read_text_file(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + std::string(what) + " '" + path + "'");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error("cannot read " + std::string(what) + " '" + path + "'");
  return buffer.str();
}

/// `s` in double quotes with control characters escaped, cut to a readable length, for messages.
inline std::string quote_for_message(std::string_view s, std::size_t max_bytes = 60) {
  std::string out = "\"";
  std::size_t shown = 0;
  for (const char c : s) {
    if (shown++ == max_bytes) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u == 0x7F) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

/// The JSON type of `v` for messages, with the value when it is short ("string \"5\"").
inline std::string describe_json(const nlohmann::json& v) {
  std::string text = v.dump();
  if (text.size() > 40) text = text.substr(0, 40) + "...";
  return std::string(v.type_name()) + " " + text;
}

/// Deepest nesting of arrays and objects that parse_json_strict accepts. Tokenizer files nest
/// four or five levels; the limit matters because copying or printing a json value recurses once
/// per level, so a file of a million '[' would overflow the stack.
constexpr int kMaxJsonDepth = 128;

/// Parses JSON text. Unlike nlohmann's default, a key that appears twice in one object is an error
/// (the default keeps the last one silently, which would hide a corrupt vocabulary), and so is
/// nesting deeper than kMaxJsonDepth.
inline nlohmann::json parse_json_strict(std::string_view text, const std::string& source) {
  // One set of keys per open object; parsing is depth first, so a stack suffices.
  std::vector<std::unordered_set<std::string>> open_objects;
  auto check_keys = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxJsonDepth) {
      throw Error(source + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) +
                  " levels");
    }
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Event::key && !open_objects.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second) {
        throw Error(source + ": the key " + quote_for_message(key) +
                    " appears twice in one JSON object");
      }
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), check_keys);
  } catch (const nlohmann::json::exception& e) {
    throw Error(source + " is not valid JSON: " + e.what());
  }
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
