#pragma once
// ModelConfig: the hyperparameters of SPEC §1, read from a model file's metadata and validated.

#include <cstdint>
#include <limits>
#include <map>
#include <string>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
namespace tconst {
inline namespace TCONST_ABI {

enum class Architecture { kTConstFormer, kTLinFormer, kTransformer };

inline const char* to_string(Architecture a) {
  switch (a) {
    case Architecture::kTConstFormer:
      return "tconstformer";
    case Architecture::kTLinFormer:
      return "tlinformer";
    case Architecture::kTransformer:
      return "transformer";
  }
  return "?";
}

inline Architecture parse_architecture(const std::string& name) {
  if (name == "tconstformer") return Architecture::kTConstFormer;
  if (name == "tlinformer") return Architecture::kTLinFormer;
  if (name == "transformer") return Architecture::kTransformer;
  throw Error("unknown architecture '" + name +
              "' (expected tconstformer, tlinformer or transformer)");
}

namespace detail {

// Sizes that come from a file are multiplied before anything is allocated; every such product
// goes through here so that a hostile file cannot wrap an int64.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  if (a < 0 || b < 0 || (a != 0 && b > std::numeric_limits<int64_t>::max() / a)) {
    throw Error(std::string("size overflow computing ") + what);
  }
  return a * b;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  if (a < 0 || b < 0 || a > std::numeric_limits<int64_t>::max() - b) {
    throw Error(std::string("size overflow computing ") + what);
  }
  return a + b;
}

}  // namespace detail

/// The hyperparameters of one model (SPEC §1). For the baseline Transformer `n_block` is its number
/// of layers and the window fields are 0.
struct ModelConfig {
  Architecture arch = Architecture::kTConstFormer;
  int64_t vocab_size = 0;       // V
  int64_t n_embd = 0;           // d
  int64_t n_head = 0;           // h
  int64_t n_block = 0;          // B
  int64_t inner_depth = 0;      // D (0 for the baseline)
  int64_t history_window = 0;   // Hh, compressed context rows
  int64_t generate_window = 0;  // W, the resync period k
  int64_t ffn_hidden = 0;       // f, from the shape of ffn.w1
  double rope_base = 10000.0;
  double norm_eps = 1e-5;
  bool tied_head = true;  // false when transformer.lm_head.weight is present
  std::string tokenizer;  // metadata tconst.tokenizer, empty when absent

  int64_t head_dim() const { return n_head > 0 ? n_embd / n_head : 0; }
  bool is_baseline() const { return arch == Architecture::kTransformer; }
  /// Inner layers per block: D, or 1 for the baseline (whose "blocks" are its layers).
  int64_t layers_per_block() const { return is_baseline() ? 1 : inner_depth; }
  int64_t total_layers() const { return n_block * layers_per_block(); }

  /// Scalars held by the fixed cache of a TConstFormer session (SPEC §5):
  /// B * ((D-1)*Hh + D*W) * 2d. Zero for the baseline, whose cache grows.
  int64_t fixed_cache_scalars() const {
    if (is_baseline()) return 0;
    using detail::checked_add;
    using detail::checked_mul;
    const int64_t rows =
        checked_add(checked_mul(inner_depth - 1, history_window, "cache rows"),
                    checked_mul(inner_depth, generate_window, "cache rows"), "cache rows");
    return checked_mul(checked_mul(n_block, rows, "cache size"), 2 * n_embd, "cache size");
  }

  /// Throws Error naming the first inconsistency. Sizes are capped so that every product used to
  /// size a buffer fits comfortably in int64 and in a 32-bit Eigen index per dimension.
  void validate() const {
    constexpr int64_t kMaxDim = int64_t{1} << 24;
    auto positive = [&](int64_t v, const char* name) {
      if (v <= 0) throw Error(std::string(name) + " must be positive, got " + std::to_string(v));
      if (v > kMaxDim)
        throw Error(std::string(name) + " is implausibly large: " + std::to_string(v));
    };
    positive(vocab_size, "vocab_size");
    positive(n_embd, "n_embd");
    positive(n_head, "n_head");
    positive(n_block, "n_block");
    positive(ffn_hidden, "ffn hidden size");
    if (n_embd % n_head != 0) {
      throw Error("n_embd (" + std::to_string(n_embd) + ") is not divisible by n_head (" +
                  std::to_string(n_head) + ")");
    }
    if (head_dim() % 2 != 0) {
      throw Error("head dimension n_embd/n_head = " + std::to_string(head_dim()) +
                  " is odd; RoPE needs an even head dimension");
    }
    if (!is_baseline()) {
      if (inner_depth < 2) {
        throw Error("block_inner_depth must be at least 2, got " + std::to_string(inner_depth));
      }
      positive(inner_depth, "block_inner_depth");
      positive(history_window, "history_window");
      positive(generate_window, "generate_window");
    }
    if (!(rope_base > 0.0) || rope_base == std::numeric_limits<double>::infinity()) {
      throw Error("rope_base must be a positive finite number");
    }
    if (!(norm_eps > 0.0) || norm_eps == std::numeric_limits<double>::infinity()) {
      throw Error("norm_eps must be a positive finite number");
    }
    (void)fixed_cache_scalars();  // throws on overflow
    (void)detail::checked_mul(vocab_size, n_embd, "embedding size");
    (void)detail::checked_mul(ffn_hidden, n_embd, "ffn size");
  }
};

namespace detail {

// Strict decimal parse: optional sign, digits only, no trailing text, in range.
inline int64_t parse_int_field(const std::string& key, const std::string& text) {
  if (text.empty()) throw Error("metadata " + key + " is empty");
  size_t i = 0;
  bool negative = false;
  if (text[0] == '-' || text[0] == '+') {
    negative = text[0] == '-';
    i = 1;
  }
  if (i == text.size()) throw Error("metadata " + key + " is not an integer: '" + text + "'");
  int64_t value = 0;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c < '0' || c > '9') throw Error("metadata " + key + " is not an integer: '" + text + "'");
    if (value > (std::numeric_limits<int64_t>::max() - (c - '0')) / 10) {
      throw Error("metadata " + key + " is out of range: '" + text + "'");
    }
    value = value * 10 + (c - '0');
  }
  return negative ? -value : value;
}

inline double parse_double_field(const std::string& key, const std::string& text) {
  size_t used = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    throw Error("metadata " + key + " is not a number: '" + text + "'");
  }
  while (used < text.size() && (text[used] == ' ' || text[used] == '\t')) ++used;
  if (used != text.size()) throw Error("metadata " + key + " is not a number: '" + text + "'");
  return value;
}

}  // namespace detail

/// Reads the `tconst.*` metadata of SPEC §6. `ffn_hidden` and `tied_head` come from the tensors and
/// are filled in by the loader; validate() is called by the loader once they are known.
inline ModelConfig config_from_metadata(const std::map<std::string, std::string>& meta) {
  auto get = [&](const std::string& key) -> const std::string& {
    auto it = meta.find(key);
    if (it == meta.end()) throw Error("model metadata lacks " + key);
    return it->second;
  };
  auto get_int = [&](const std::string& key) { return detail::parse_int_field(key, get(key)); };
  const std::string& format = get("tconst.format");
  if (format != "1") {
    throw Error("unsupported model format version tconst.format = '" + format +
                "' (this library reads version 1)");
  }
  ModelConfig c;
  c.arch = parse_architecture(get("tconst.architecture"));
  c.vocab_size = get_int("tconst.vocab_size");
  c.n_embd = get_int("tconst.n_embd");
  c.n_head = get_int("tconst.n_head");
  c.n_block = get_int("tconst.n_block");
  if (!c.is_baseline()) {
    c.inner_depth = get_int("tconst.block_inner_depth");
    c.history_window = get_int("tconst.history_window");
    c.generate_window = get_int("tconst.generate_window");
  }
  if (auto it = meta.find("tconst.rope_base"); it != meta.end()) {
    c.rope_base = detail::parse_double_field(it->first, it->second);
  }
  if (auto it = meta.find("tconst.norm_eps"); it != meta.end()) {
    c.norm_eps = detail::parse_double_field(it->first, it->second);
  }
  if (auto it = meta.find("tconst.tokenizer"); it != meta.end()) c.tokenizer = it->second;
  return c;
}

}  // namespace TCONST_ABI
}  // namespace tconst
