#pragma once
// The file side of SPEC §6.1: which tensors may be stored in a reduced-precision format, the Q8
// block size of a file and the companion scale tensor of each Q8 matrix, all checked before a
// model takes them.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/model/safetensors.hpp"
namespace tconst {
inline namespace TCONST_ABI {

/// The metadata key of the Q8 block size, and the suffix of a Q8 matrix's scale tensor.
constexpr const char* kQ8BlockKey = "tconst.q8_block";
constexpr const char* kQ8ScaleSuffix = ".q8_scale";

/// Whether `name` is one of the 2-D weights that SPEC §6.1 lets a file store as BF16 or Q8:
/// embedding.weight, transformer.lm_head.weight, or a layer's qkv_proj, out_proj, ffn.w1, ffn.w3
/// or ffn.w2 weight.
inline bool is_quantizable_matrix(const std::string& name) {
  if (name == "embedding.weight" || name == "transformer.lm_head.weight") return true;
  if (name.rfind("transformer.transformer_layers.", 0) != 0) return false;
  for (const char* s : {".qkv_proj.weight", ".out_proj.weight", ".ffn.w1.weight", ".ffn.w3.weight",
                        ".ffn.w2.weight"}) {
    const size_t n = std::strlen(s);
    if (name.size() > n && name.compare(name.size() - n, n, s) == 0) return true;
  }
  return false;
}

/// Whether `name` ends in kQ8ScaleSuffix.
inline bool is_q8_scale_name(const std::string& name) {
  const size_t n = std::strlen(kQ8ScaleSuffix);
  return name.size() > n && name.compare(name.size() - n, n, kQ8ScaleSuffix) == 0;
}

namespace detail {

inline Error invalid_file(const SafetensorsFile& file, const std::string& what) {
  return Error("invalid model file '" + file.label() + "': " + what);
}

}  // namespace detail

/// The file's Q8 block size B (SPEC §6.1), or 0 when no tensor is I8. Throws when I8 tensors have
/// no valid `tconst.q8_block` (a power of two from 16 to 256), or the key is there without any.
inline int64_t q8_block_of(const SafetensorsFile& file) {
  bool any_i8 = false;
  for (const auto& kv : file.tensors()) any_i8 = any_i8 || kv.second.dtype == DType::kI8;
  const auto it = file.metadata().find(kQ8BlockKey);
  if (!any_i8) {
    if (it != file.metadata().end()) {
      throw detail::invalid_file(
          file, std::string("metadata '") + kQ8BlockKey + "' is given but no tensor is I8 (Q8)");
    }
    return 0;
  }
  if (it == file.metadata().end()) {
    throw detail::invalid_file(
        file, std::string("tensors are I8 (Q8) but metadata '") + kQ8BlockKey + "' is missing");
  }
  const std::string& v = it->second;
  int64_t b = 0;
  bool digits = !v.empty() && v.size() <= 4;
  for (char ch : v) {
    digits = digits && ch >= '0' && ch <= '9';
    if (digits) b = 10 * b + (ch - '0');
  }
  if (!digits || b < 16 || b > 256 || (b & (b - 1)) != 0) {
    throw detail::invalid_file(file, std::string("metadata '") + kQ8BlockKey + "' is '" + v +
                                         "', expected a power of two from 16 to 256");
  }
  return b;
}

/// The scale tensor of the Q8 matrix t ([R, C], I8) in a file of block size `block`, checked:
/// present, F32, shape [R, ceil(C / B)], every value finite.
inline const TensorInfo& q8_scale_of(const SafetensorsFile& file, const TensorInfo& t,
                                     int64_t block) {
  const std::string name = t.name + kQ8ScaleSuffix;
  const TensorInfo* s = file.find(name);
  if (s == nullptr) {
    throw detail::invalid_file(file,
                               "Q8 tensor '" + t.name + "' has no scale tensor '" + name + "'");
  }
  if (s->dtype != DType::kF32) {
    throw detail::invalid_file(
        file, "scale tensor '" + name + "' has dtype " + s->dtype_name + ", expected F32");
  }
  const int64_t R = t.shape[0], blocks = (t.shape[1] + block - 1) / block;
  if (s->shape != std::vector<int64_t>{R, blocks}) {
    std::string got;
    for (size_t i = 0; i < s->shape.size(); ++i) {
      got += (i ? ", " : "") + std::to_string(s->shape[i]);
    }
    throw detail::invalid_file(file, "scale tensor '" + name + "' has shape [" + got +
                                         "], expected [" + std::to_string(R) + ", " +
                                         std::to_string(blocks) + "] (block " +
                                         std::to_string(block) + ")");
  }
  for (int64_t i = 0; i < s->numel; ++i) {
    float v;
    std::memcpy(&v, s->data + 4 * i, 4);
    if (!std::isfinite(v)) {
      throw detail::invalid_file(file, "scale tensor '" + name + "' has a NaN or infinite value " +
                                           "at [" + std::to_string(i / blocks) + ", " +
                                           std::to_string(i % blocks) + "]");
    }
  }
  return *s;
}

}  // namespace TCONST_ABI
}  // namespace tconst
