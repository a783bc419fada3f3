// Test-only writer of SPEC.md §6 model files (safetensors), plus the low-level pieces that the
// loader tests use to craft malformed files. Independent of include/tconst/.
//
// File layout: 8-byte little-endian header length N, N bytes of JSON header, then the raw
// little-endian tensor data; each header entry gives dtype, shape and [begin, end) byte offsets
// relative to the start of the data section.
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "ref_model.hpp"

namespace tconst_test {

struct RawTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// ---------------------------------------------------------------------------------------------
// Scalar conversions (all round-to-nearest-even, written from the IEEE 754 / bfloat16 layouts).

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

inline float bits_to_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// float -> IEEE binary16 bits, round to nearest even; overflow gives +-inf, NaN stays NaN.
inline uint16_t float_to_f16_bits(float x) {
  const uint32_t u = float_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t exp = (u >> 23) & 0xFFu;
  const uint32_t mant = u & 0x7FFFFFu;
  if (exp == 0xFFu) {  // inf or NaN (keep NaN quiet and non-zero)
    return static_cast<uint16_t>(sign | 0x7C00u | (mant ? 0x200u | (mant >> 13) : 0u));
  }
  if (exp == 0) return sign;  // float zero or float subnormal (< 2^-126): far below half's range
  const int e = static_cast<int>(exp) - 127;  // unbiased exponent
  if (e >= -14) {
    // Normal half range (or overflow). Drop 13 mantissa bits with RNE; a carry out of the
    // mantissa correctly bumps the exponent, and reaching 0x7C00 means infinity.
    if (e > 15) return static_cast<uint16_t>(sign | 0x7C00u);
    uint32_t h = (static_cast<uint32_t>(e + 15) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    if (h >= 0x7C00u) h = 0x7C00u;
    return static_cast<uint16_t>(sign | h);
  }
  // Half subnormal: value = m * 2^(e-23) with the implicit bit, in units of 2^-24 that is
  // m * 2^(e+1), i.e. a right shift by -(e+1) >= 14.
  const uint32_t m = mant | 0x800000u;
  const int shift = -(e + 1);
  if (shift >= 25) return sign;  // below half of the smallest subnormal (m < 2^24)
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;  // may become 0x400: smallest normal
  return static_cast<uint16_t>(sign | q);
}

inline float f16_bits_to_float(uint16_t hbits) {
  const uint32_t sign = static_cast<uint32_t>(hbits & 0x8000u) << 16;
  const uint32_t exp = (hbits >> 10) & 0x1Fu;
  uint32_t mant = hbits & 0x3FFu;
  if (exp == 0x1Fu) return bits_to_float(sign | 0x7F800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // Subnormal half: normalise into a float (always a normal float).
    int e = -14;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --e;
    }
    mant &= 0x3FFu;
    return bits_to_float(sign | (static_cast<uint32_t>(e + 127) << 23) | (mant << 13));
  }
  return bits_to_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

// float -> bfloat16 bits (the top 16 bits of a float), round to nearest even.
inline uint16_t float_to_bf16_bits(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x7FFFFFu)) {
    return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN, never rounds to inf
  }
  const uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);  // carries into exponent if needed
  return static_cast<uint16_t>(rounded >> 16);
}

inline float bf16_bits_to_float(uint16_t b) {
  return bits_to_float(static_cast<uint32_t>(b) << 16);
}

inline size_t dtype_size(const std::string& dtype) {
  if (dtype == "F64") return 8;
  if (dtype == "F32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  throw std::invalid_argument("unsupported dtype '" + dtype + "'");
}

// The value that a tensor of `dtype` stores for x. Every narrower format is reached through float
// (the values of our models are float-exact, so this is a single rounding for them).
inline double round_to_dtype(double x, const std::string& dtype) {
  if (dtype == "F64") return x;
  const float xf = static_cast<float>(x);
  if (dtype == "F32") return xf;
  if (dtype == "F16") return f16_bits_to_float(float_to_f16_bits(xf));
  if (dtype == "BF16") return bf16_bits_to_float(float_to_bf16_bits(xf));
  throw std::invalid_argument("unsupported dtype '" + dtype + "'");
}

// Little-endian bytes of `values` stored as `dtype`, independent of the host's byte order.
inline std::vector<uint8_t> encode_values(const std::vector<double>& values,
                                          const std::string& dtype) {
  const size_t sz = dtype_size(dtype);
  std::vector<uint8_t> out(values.size() * sz);
  for (size_t i = 0; i < values.size(); ++i) {
    uint64_t bits = 0;
    if (dtype == "F64") {
      std::memcpy(&bits, &values[i], 8);
    } else if (dtype == "F32") {
      bits = float_bits(static_cast<float>(values[i]));
    } else if (dtype == "F16") {
      bits = float_to_f16_bits(static_cast<float>(values[i]));
    } else {
      bits = float_to_bf16_bits(static_cast<float>(values[i]));
    }
    for (size_t b = 0; b < sz; ++b) out[i * sz + b] = static_cast<uint8_t>(bits >> (8 * b));
  }
  return out;
}

// Text that parses back to exactly x: integers as plain digits ("10000"), anything else as the
// shortest "%.{p}g" that round-trips ("1e-05").
inline std::string format_double_exact(double x) {
  char buf[64];
  if (x == std::floor(x) && std::fabs(x) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", x);
    return buf;
  }
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*g", p, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Raw file writers.

// Writes 8-byte LE length of header_json, the header text verbatim, then `data`. The bytes go to a
// file named after this process first, which is then renamed over `path`: ctest runs the tests of
// one program as parallel processes, and a model file that another process has memory-mapped must
// be replaced, never rewritten in place (a mapped file cut short under its reader raises SIGBUS).
inline void write_raw_file(const std::string& path, const std::string& header_json,
                           const std::vector<uint8_t>& data) {
  const std::string part = path + ".part" + std::to_string(::getpid());
  {
    std::ofstream os(part, std::ios::binary | std::ios::trunc);
    if (!os) throw std::runtime_error("cannot open '" + part + "' for writing");
    const uint64_t n = header_json.size();
    char len[8];
    for (int b = 0; b < 8; ++b) len[b] = static_cast<char>((n >> (8 * b)) & 0xFFu);
    os.write(len, 8);
    os.write(header_json.data(), static_cast<std::streamsize>(header_json.size()));
    if (!data.empty()) {
      os.write(reinterpret_cast<const char*>(data.data()),
               static_cast<std::streamsize>(data.size()));
    }
    if (!os.flush()) throw std::runtime_error("error writing '" + part + "'");
  }
  if (std::rename(part.c_str(), path.c_str()) != 0) {
    std::remove(part.c_str());
    throw std::runtime_error("cannot rename '" + part + "' to '" + path + "'");
  }
}

// The JSON header for `tensors` laid out contiguously in the given order (no padding). Exposed so
// that a test can edit it (e.g. make ranges overlap) and write it with write_raw_file. Nothing is
// validated: dtype, shape and byte count are written as given, so inconsistent files can be made.
// An empty `metadata` omits "__metadata__".
inline nlohmann::json safetensors_header(const std::vector<RawTensor>& tensors,
                                         const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& kv : metadata) meta[kv.first] = kv.second;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const RawTensor& t : tensors) {
    const uint64_t end = offset + t.bytes.size();
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  return header;
}

// All tensor bytes, concatenated in the given order (the data section matching safetensors_header).
inline std::vector<uint8_t> concat_tensor_bytes(const std::vector<RawTensor>& tensors) {
  std::vector<uint8_t> data;
  for (const RawTensor& t : tensors) data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  return data;
}

// A complete safetensors file; the header is padded with spaces to a multiple of 8 bytes.
inline void write_safetensors_file(const std::string& path, const std::vector<RawTensor>& tensors,
                                   const std::map<std::string, std::string>& metadata) {
  std::string text = safetensors_header(tensors, metadata).dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  write_raw_file(path, text, concat_tensor_bytes(tensors));
}

// ---------------------------------------------------------------------------------------------
// Model <-> tensors.

// SPEC §6 name prefix of layer j of block b (for the baseline, b is the layer index, j = 0).
inline std::string model_layer_prefix(const RefModel& m, int b, int j) {
  const std::string blk = "transformer.transformer_layers." + std::to_string(b);
  if (m.arch == "transformer") return blk;
  if (j == 0) return blk + ".compress_context_layer";
  if (j == m.D - 1) return blk + ".restore_context_shape_layer";
  return blk + ".hidden_layers." + std::to_string(j - 1);
}

inline std::vector<RawTensor> model_tensors(const RefModel& m, const std::string& dtype) {
  std::vector<RawTensor> out;
  auto add = [&](const std::string& name, const std::vector<double>& v,
                 std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    if (static_cast<int64_t>(v.size()) != n) {
      throw std::invalid_argument("model_tensors: '" + name + "' has " + std::to_string(v.size()) +
                                  " values, shape wants " + std::to_string(n));
    }
    out.push_back(RawTensor{name, dtype, std::move(shape), encode_values(v, dtype)});
  };
  const int64_t V = m.V, d = m.d, f = m.f;
  add("embedding.weight", m.embedding, {V, d});
  add("transformer.norm.weight", m.norm_w, {d});
  add("transformer.norm.bias", m.norm_b, {d});
  if (!m.lm_head.empty()) add("transformer.lm_head.weight", m.lm_head, {V, d});
  for (size_t b = 0; b < m.blocks.size(); ++b) {
    for (size_t j = 0; j < m.blocks[b].size(); ++j) {
      const RefLayer& L = m.blocks[b][j];
      const std::string P = model_layer_prefix(m, static_cast<int>(b), static_cast<int>(j));
      add(P + ".norm1.weight", L.norm1_w, {d});
      add(P + ".norm1.bias", L.norm1_b, {d});
      add(P + ".norm2.weight", L.norm2_w, {d});
      add(P + ".norm2.bias", L.norm2_b, {d});
      add(P + ".qkv_proj.weight", L.qkv_w, {3 * d, d});
      add(P + ".qkv_proj.bias", L.qkv_b, {3 * d});
      add(P + ".out_proj.weight", L.out_w, {d, d});
      add(P + ".out_proj.bias", L.out_b, {d});
      add(P + ".ffn.w1.weight", L.w1, {f, d});
      add(P + ".ffn.w3.weight", L.w3, {f, d});
      add(P + ".ffn.w2.weight", L.w2, {d, f});
    }
  }
  return out;
}

inline std::map<std::string, std::string> model_metadata(const RefModel& m) {
  std::map<std::string, std::string> meta;
  meta["tconst.format"] = "1";
  meta["tconst.architecture"] = m.arch;
  meta["tconst.vocab_size"] = std::to_string(m.V);
  meta["tconst.n_embd"] = std::to_string(m.d);
  meta["tconst.n_head"] = std::to_string(m.h);
  meta["tconst.n_block"] = std::to_string(m.B);
  if (m.arch != "transformer") {
    meta["tconst.block_inner_depth"] = std::to_string(m.D);
    meta["tconst.history_window"] = std::to_string(m.Hh);
    meta["tconst.generate_window"] = std::to_string(m.W);
  }
  meta["tconst.rope_base"] = format_double_exact(m.base);
  meta["tconst.norm_eps"] = format_double_exact(m.eps);
  return meta;
}

inline void write_model(const RefModel& m, const std::string& path,
                        const std::string& dtype = "F32") {
  write_safetensors_file(path, model_tensors(m, dtype), model_metadata(m));
}

// Calls fn on every weight vector of m (embedding, final norm, head, every layer's tensors).
inline void for_each_weight(RefModel& m, const std::function<void(std::vector<double>&)>& fn) {
  fn(m.embedding);
  fn(m.norm_w);
  fn(m.norm_b);
  fn(m.lm_head);
  for (auto& block : m.blocks) {
    for (RefLayer& L : block) {
      for (auto* v : {&L.norm1_w, &L.norm1_b, &L.norm2_w, &L.norm2_b, &L.qkv_w, &L.qkv_b, &L.out_w,
                      &L.out_b, &L.w1, &L.w3, &L.w2}) {
        fn(*v);
      }
    }
  }
}

// The model as a file of `dtype` stores it: every weight rounded the way that dtype rounds it.
inline RefModel rounded_copy(const RefModel& m, const std::string& dtype) {
  dtype_size(dtype);  // rejects unknown dtypes
  RefModel r = m;
  for_each_weight(r, [&](std::vector<double>& v) {
    for (double& x : v) x = round_to_dtype(x, dtype);
  });
  return r;
}

}  // namespace tconst_test
