#pragma once
// The reference quantizer of SPEC §6.1: float32 matrices to BF16 (round to nearest even) and to
// Q8 (per block of B weights along a row: scale = max|w| / 127, q = round(w / scale), ties to
// even), and a whole model file re-written with its matrices in one of those formats.
// tools/tconst_torch/export.py implements the same rules, so both give the same bytes.

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/weight_matrix.hpp"
#include "tconst/error.hpp"
#include "tconst/model.hpp"
#include "tconst/model/reference_quantizer.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/model/safetensors_writer.hpp"
#include "tconst/model/tensor_values.hpp"
#include "tconst/model/weight_formats.hpp"
namespace tconst {
inline namespace TCONST_ABI {

/// How quantize_model() re-writes a file: the format of its matrices, the Q8 block size, and the
/// matrices to leave as they are.
struct QuantizeOptions {
  WeightFormat format = WeightFormat::q8;
  int64_t block = 32;
  std::set<std::string> keep;
};

namespace detail {

/// The float32 values of a 2-D F32, F16, BF16 or F64 tensor.
inline std::vector<float> tensor_floats(const TensorInfo& t) {
  std::vector<float> v(static_cast<size_t>(t.numel));
  for (int64_t i = 0; i < t.numel; ++i) v[static_cast<size_t>(i)] = load_element<float>(t, i);
  return v;
}

/// Tensor t re-encoded in `o.format` (Q8: the tensor and its scale tensor) into `out`.
inline void quantized_tensor(const TensorInfo& t, const QuantizeOptions& o,
                             std::vector<TensorOut>& out) {
  const std::vector<float> w = tensor_floats(t);
  const int64_t rows = t.shape[0], cols = t.shape[1];
  TensorOut m{t.name, "", t.shape, nullptr, 0, {}};
  if (o.format == WeightFormat::bf16) {
    m.dtype = "BF16";
    m.owned.resize(2 * w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      const uint16_t b = float_to_bf16(w[i]);
      m.owned[2 * i] = static_cast<uint8_t>(b & 0xffu);
      m.owned[2 * i + 1] = static_cast<uint8_t>(b >> 8);
    }
    out.push_back(std::move(m));
    return;
  }
  const int64_t blocks = (cols + o.block - 1) / o.block;
  m.dtype = "I8";
  m.owned.resize(w.size());
  std::vector<float> scales(static_cast<size_t>(rows * blocks));
  quantize_q8(w.data(), rows, cols, o.block, reinterpret_cast<int8_t*>(m.owned.data()),
              scales.data());
  TensorOut s{t.name + kQ8ScaleSuffix, "F32", {rows, blocks}, nullptr, 0, {}};
  s.owned.resize(4 * scales.size());
  std::memcpy(s.owned.data(), scales.data(), s.owned.size());  // little-endian hosts (model.hpp)
  out.push_back(std::move(m));
  out.push_back(std::move(s));
}

}  // namespace detail

/// The bytes of `in` (a model file the loader accepts) with every SPEC §6.1 matrix not in
/// o.keep re-encoded in o.format from its float32 values; every other tensor and every metadata
/// key copied byte for byte; `tconst.q8_block` set for Q8. Throws Error naming the problem: a
/// file with Q8 matrices already, a --keep name that is no matrix of the file, a block size
/// outside SPEC §6.1's set, a weight that cannot be quantized.
inline std::vector<uint8_t> quantize_model(const SafetensorsFile& in, const QuantizeOptions& o) {
  Model<float>::from_file(in);  // the input is a valid model (errors name its problem)
  const int64_t B = o.block;
  if (o.format == WeightFormat::q8 && (B < 16 || B > 256 || (B & (B - 1)) != 0)) {
    throw Error("Q8 block size " + std::to_string(B) + " is not a power of two from 16 to 256");
  }
  if (q8_block_of(in) != 0) {
    throw Error("'" + in.label() + "' already has Q8 matrices; quantize the float file instead");
  }
  for (const std::string& name : o.keep) {
    if (in.find(name) == nullptr || !is_quantizable_matrix(name)) {
      throw Error("--keep '" + name + "' is not a weight matrix of '" + in.label() + "'");
    }
  }
  std::vector<TensorOut> out;
  for (const auto& kv : in.tensors()) {
    const TensorInfo& t = kv.second;
    if (o.format != WeightFormat::f32 && is_quantizable_matrix(t.name) && t.shape.size() == 2 &&
        o.keep.count(t.name) == 0) {
      try {
        detail::quantized_tensor(t, o, out);
      } catch (const Error& e) {
        throw Error("tensor '" + t.name + "': " + e.what());
      }
      continue;
    }
    out.push_back(TensorOut{t.name, t.dtype_name, t.shape, t.data, t.nbytes, {}});
  }
  std::map<std::string, std::string> meta = in.metadata();
  const bool any_q8 =
      std::any_of(out.begin(), out.end(), [](const TensorOut& t) { return t.dtype == "I8"; });
  if (any_q8) meta[kQ8BlockKey] = std::to_string(B);
  return safetensors_bytes(out, meta);
}

}  // namespace TCONST_ABI
}  // namespace tconst
