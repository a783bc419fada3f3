// Test-only reader of SPEC.md §6 model files into a RefModel. Deliberately tiny and independent
// of both include/tconst/ and safetensors_writer.hpp (its F16/BF16 decoding is written differently
// on purpose, so that a writer bug is not mirrored by the reader). It assumes a well-formed file:
// it checks enough to fail loudly on a surprise, not to validate untrusted input.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "ref_model.hpp"

namespace tconst_test {
namespace loader_detail {

inline uint64_t read_le(const uint8_t* p, int nbytes) {
  uint64_t v = 0;
  for (int b = 0; b < nbytes; ++b) v |= static_cast<uint64_t>(p[b]) << (8 * b);
  return v;
}

// Value of one stored element, decoded arithmetically from its fields.
inline double decode_element(const uint8_t* p, const std::string& dtype) {
  if (dtype == "F64") {
    const uint64_t u = read_le(p, 8);
    double x;
    std::memcpy(&x, &u, 8);
    return x;
  }
  if (dtype == "F32") {
    const uint32_t u = static_cast<uint32_t>(read_le(p, 4));
    float x;
    std::memcpy(&x, &u, 4);
    return x;
  }
  if (dtype == "BF16") {
    const uint32_t u = static_cast<uint32_t>(read_le(p, 2)) << 16;  // bf16 = top half of a float
    float x;
    std::memcpy(&x, &u, 4);
    return x;
  }
  if (dtype == "F16") {
    const uint32_t u = static_cast<uint32_t>(read_le(p, 2));
    const double sign = (u & 0x8000u) ? -1.0 : 1.0;
    const int e = static_cast<int>((u >> 10) & 0x1Fu);
    const int mant = static_cast<int>(u & 0x3FFu);
    if (e == 31) return mant ? NAN : sign * INFINITY;
    if (e == 0) return sign * std::ldexp(mant, -24);  // subnormal: mant * 2^-24
    return sign * std::ldexp(1024 + mant, e - 25);    // (1 + mant/1024) * 2^(e-15)
  }
  throw std::runtime_error("ref_loader: unsupported dtype '" + dtype + "'");
}

inline int dtype_bytes(const std::string& dtype) {
  if (dtype == "F64") return 8;
  if (dtype == "F32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  throw std::runtime_error("ref_loader: unsupported dtype '" + dtype + "'");
}

}  // namespace loader_detail

// Reads `path` (any of F32, F64, F16, BF16, mixed allowed) into a RefModel.
inline RefModel load_ref_model(const std::string& path) {
  std::ifstream is(path, std::ios::binary);
  if (!is) throw std::runtime_error("ref_loader: cannot open '" + path + "'");
  const std::vector<uint8_t> file((std::istreambuf_iterator<char>(is)),
                                  std::istreambuf_iterator<char>());
  if (file.size() < 8) throw std::runtime_error("ref_loader: file too short");
  const uint64_t n = loader_detail::read_le(file.data(), 8);
  if (n > file.size() - 8) throw std::runtime_error("ref_loader: header past end of file");
  const nlohmann::json header =
      nlohmann::json::parse(file.begin() + 8, file.begin() + 8 + static_cast<long>(n));
  const size_t data0 = 8 + static_cast<size_t>(n);

  const auto& meta = header.at("__metadata__");
  auto meta_int = [&](const char* key) { return std::stoi(meta.at(key).get<std::string>()); };
  RefModel m;
  m.arch = meta.at("tconst.architecture").get<std::string>();
  m.V = meta_int("tconst.vocab_size");
  m.d = meta_int("tconst.n_embd");
  m.h = meta_int("tconst.n_head");
  m.B = meta_int("tconst.n_block");
  const bool baseline = m.arch == "transformer";
  if (!baseline) {
    m.D = meta_int("tconst.block_inner_depth");
    m.Hh = meta_int("tconst.history_window");
    m.W = meta_int("tconst.generate_window");
  }
  if (meta.contains("tconst.rope_base")) {
    m.base = std::stod(meta.at("tconst.rope_base").get<std::string>());
  }
  if (meta.contains("tconst.norm_eps")) {
    m.eps = std::stod(meta.at("tconst.norm_eps").get<std::string>());
  }

  // Fetches tensor `name`, checks its shape, returns its values; f is taken from w1's shape.
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    const auto& e = header.at(name);
    const std::string dtype = e.at("dtype").get<std::string>();
    const auto got = e.at("shape").get<std::vector<int64_t>>();
    if (got != shape) throw std::runtime_error("ref_loader: bad shape for '" + name + "'");
    const uint64_t b = e.at("data_offsets").at(0).get<uint64_t>();
    const uint64_t end = e.at("data_offsets").at(1).get<uint64_t>();
    int64_t count = 1;
    for (int64_t s : shape) count *= s;
    const int esz = loader_detail::dtype_bytes(dtype);
    if (end - b != static_cast<uint64_t>(count) * esz || data0 + end > file.size()) {
      throw std::runtime_error("ref_loader: bad data range for '" + name + "'");
    }
    std::vector<double> v(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      v[static_cast<size_t>(i)] =
          loader_detail::decode_element(file.data() + data0 + b + i * esz, dtype);
    }
    return v;
  };

  const int64_t V = m.V, d = m.d;
  m.embedding = get("embedding.weight", {V, d});
  m.norm_w = get("transformer.norm.weight", {d});
  m.norm_b = get("transformer.norm.bias", {d});
  if (header.contains("transformer.lm_head.weight")) {
    m.lm_head = get("transformer.lm_head.weight", {V, d});
  }

  const int per_block = baseline ? 1 : m.D;
  m.blocks.resize(static_cast<size_t>(m.B));
  for (int b = 0; b < m.B; ++b) {
    for (int j = 0; j < per_block; ++j) {
      std::string P = "transformer.transformer_layers." + std::to_string(b);
      if (!baseline) {
        if (j == 0) {
          P += ".compress_context_layer";
        } else if (j == m.D - 1) {
          P += ".restore_context_shape_layer";
        } else {
          P += ".hidden_layers." + std::to_string(j - 1);
        }
      }
      const int64_t f = header.at(P + ".ffn.w1.weight").at("shape").at(0).get<int64_t>();
      m.f = static_cast<int>(f);
      RefLayer L;
      L.norm1_w = get(P + ".norm1.weight", {d});
      L.norm1_b = get(P + ".norm1.bias", {d});
      L.norm2_w = get(P + ".norm2.weight", {d});
      L.norm2_b = get(P + ".norm2.bias", {d});
      L.qkv_w = get(P + ".qkv_proj.weight", {3 * d, d});
      L.qkv_b = get(P + ".qkv_proj.bias", {3 * d});
      L.out_w = get(P + ".out_proj.weight", {d, d});
      L.out_b = get(P + ".out_proj.bias", {d});
      L.w1 = get(P + ".ffn.w1.weight", {f, d});
      L.w3 = get(P + ".ffn.w3.weight", {f, d});
      L.w2 = get(P + ".ffn.w2.weight", {d, f});
      m.blocks[static_cast<size_t>(b)].push_back(std::move(L));
    }
  }
  return m;
}

}  // namespace tconst_test
