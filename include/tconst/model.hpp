#pragma once
// Model<Scalar>: the immutable weights and config of one model file (SPEC §6).
//
// A float model keeps its 2-D weight matrices in the file's format (SPEC §6.1): F32, BF16 and Q8
// are used in place, straight from the memory mapping; F16 (or F64) matrices, and every vector, are
// converted once at load. A double model converts every tensor that is not F64 to double. A Model
// is never modified after load() returns, so one instance may serve any number of sessions on any
// number of threads.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "tconst/config.hpp"
#include "tconst/detail/big_buffer.hpp"
#include "tconst/detail/weight_matrix.hpp"
#include "tconst/error.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/model/weight_formats.hpp"

namespace tconst {

template <typename Scalar>
using MatrixRM = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
template <typename Scalar>
using ConstMatrixMap = Eigen::Map<const MatrixRM<Scalar>>;
template <typename Scalar>
using ConstVectorMap = Eigen::Map<const Vector<Scalar>>;

/// A read-only [rows, cols] row-major view of weights (PyTorch [out, in] layout).
template <typename Scalar>
struct WeightView {
  const Scalar* data = nullptr;
  Eigen::Index rows = 0, cols = 0;

  ConstMatrixMap<Scalar> mat() const { return ConstMatrixMap<Scalar>(data, rows, cols); }
  ConstVectorMap<Scalar> vec() const { return ConstVectorMap<Scalar>(data, rows * cols); }
  /// Rows [r0, r0 + n), e.g. the k and v parts of qkv_proj.
  WeightView row_block(Eigen::Index r0, Eigen::Index n) const {
    return {data + r0 * cols, n, cols};
  }
};

/// How a Model<Scalar> holds a 2-D weight matrix: a float model in its file's format (SPEC §6.1),
/// read by the products of detail/quant_linear.hpp; a double model as doubles.
template <typename Scalar>
struct MatrixHolder {
  using type = WeightView<Scalar>;
};
template <>
struct MatrixHolder<float> {
  using type = detail::WeightMatrix;
};
template <typename Scalar>
using MatrixOf = typename MatrixHolder<Scalar>::type;

/// One inner layer's parameters (SPEC §2); the context and generation streams share them.
template <typename Scalar>
struct LayerWeights {
  WeightView<Scalar> norm1_w, norm1_b;  // [d]
  MatrixOf<Scalar> qkv_w;               // [3d, d]
  WeightView<Scalar> qkv_b;             // [3d]
  MatrixOf<Scalar> out_w;               // [d, d]
  WeightView<Scalar> out_b;             // [d]
  WeightView<Scalar> norm2_w, norm2_b;  // [d]
  MatrixOf<Scalar> w1, w3;              // [f, d]
  MatrixOf<Scalar> w2;                  // [d, f]
};

/// The SPEC §6 name prefix of layer j of block b (for the baseline, layer b; j = 0), e.g.
/// "transformer.transformer_layers.0.compress_context_layer".
inline std::string layer_prefix(const ModelConfig& c, int64_t b, int64_t j) {
  std::string p = "transformer.transformer_layers." + std::to_string(b);
  if (c.is_baseline()) return p;
  if (j == 0) return p + ".compress_context_layer";
  if (j == c.inner_depth - 1) return p + ".restore_context_shape_layer";
  return p + ".hidden_layers." + std::to_string(j - 1);
}

/// One tensor of an inner layer (SPEC §6): its name after the layer prefix, its shape and where
/// it goes in LayerWeights: `vec` for a vector, `mat` for a matrix (the other null).
template <typename Scalar>
struct LayerTensor {
  const char* suffix;
  std::vector<int64_t> shape;
  WeightView<Scalar> LayerWeights<Scalar>::*vec;
  MatrixOf<Scalar> LayerWeights<Scalar>::*mat;
};

/// The tensors of one inner layer of a model of config c, in file order.
template <typename Scalar>
std::vector<LayerTensor<Scalar>> layer_tensors(const ModelConfig& c) {
  using L = LayerWeights<Scalar>;
  const int64_t d = c.n_embd, f = c.ffn_hidden;
  // The order the loader takes them in, which the model's identity hashes.
  return {{".norm1.weight", {d}, &L::norm1_w, nullptr},
          {".norm1.bias", {d}, &L::norm1_b, nullptr},
          {".norm2.weight", {d}, &L::norm2_w, nullptr},
          {".norm2.bias", {d}, &L::norm2_b, nullptr},
          {".qkv_proj.weight", {3 * d, d}, nullptr, &L::qkv_w},
          {".qkv_proj.bias", {3 * d}, &L::qkv_b, nullptr},
          {".out_proj.weight", {d, d}, nullptr, &L::out_w},
          {".out_proj.bias", {d}, &L::out_b, nullptr},
          {".ffn.w1.weight", {f, d}, nullptr, &L::w1},
          {".ffn.w3.weight", {f, d}, nullptr, &L::w3},
          {".ffn.w2.weight", {d, f}, nullptr, &L::w2}};
}

/// Every tensor a model file of config c holds (SPEC §6), name and shape, in file order.
inline std::vector<std::pair<std::string, std::vector<int64_t>>> model_tensor_shapes(
    const ModelConfig& c) {
  const int64_t V = c.vocab_size, d = c.n_embd;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out = {{"embedding.weight", {V, d}},
                                                                   {"transformer.norm.weight", {d}},
                                                                   {"transformer.norm.bias", {d}}};
  if (!c.tied_head) out.push_back({"transformer.lm_head.weight", {V, d}});
  for (int64_t b = 0; b < c.n_block; ++b) {
    for (int64_t j = 0; j < c.layers_per_block(); ++j) {
      for (const auto& t : layer_tensors<float>(c)) {
        out.push_back({layer_prefix(c, b, j) + t.suffix, t.shape});
      }
    }
  }
  return out;
}

namespace detail {

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Element i of a little-endian tensor as Scalar. (Hosts are assumed little-endian, as everywhere
// Eigen's vectorised paths run; a static_assert in model loading would be the place for
// big-endian.)
template <typename Scalar>
Scalar load_element(const TensorInfo& t, int64_t i) {
  const uint8_t* p = t.data;
  switch (t.dtype) {
    case DType::kF64: {
      double v;
      std::memcpy(&v, p + 8 * i, 8);
      return static_cast<Scalar>(v);
    }
    case DType::kF32: {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      return static_cast<Scalar>(v);
    }
    case DType::kF16: {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      return static_cast<Scalar>(half_to_float(v));
    }
    case DType::kBF16: {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      return static_cast<Scalar>(bf16_bits_to_float(v));
    }
    case DType::kI8:  // a Q8 matrix is widened with its scales (Model::widened_q8)
    case DType::kU8:
    case DType::kOther:
      break;
  }
  return Scalar(0);
}

template <typename Scalar>
constexpr DType native_dtype() {
  return sizeof(Scalar) == 8 ? DType::kF64 : DType::kF32;
}

}  // namespace detail

/// Immutable weights and config. Create with load(); share through std::shared_ptr.
template <typename Scalar>
class Model {
  static_assert(std::is_same<Scalar, float>::value || std::is_same<Scalar, double>::value,
                "tconst::Model supports float and double");

 public:
  /// Loads and validates a SPEC §6 file. Throws Error naming the problem; never returns a
  /// partially loaded model.
  static std::shared_ptr<const Model> load(const std::string& path) {
    return from_file(SafetensorsFile::open(path));
  }
  /// The same from bytes already in memory (used for models made in a program, e.g. benchmarks).
  static std::shared_ptr<const Model> load_from_bytes(std::vector<uint8_t> bytes,
                                                      const std::string& label = "<memory>") {
    return from_file(SafetensorsFile::from_bytes(std::move(bytes), label));
  }
  static std::shared_ptr<const Model> from_file(const SafetensorsFile& file) {
    std::shared_ptr<Model> m(new Model());
    m->build(file);
    return m;
  }

  const ModelConfig& config() const { return config_; }
  /// Layer j of block b. TConstFormer/TLinFormer: j = 0 compress, 1..D-2 hidden, D-1 restore.
  /// Baseline: block b is layer b, j = 0.
  const LayerWeights<Scalar>& layer(int64_t b, int64_t j) const {
    return layers_[static_cast<size_t>(b * config_.layers_per_block() + j)];
  }
  const MatrixOf<Scalar>& embedding() const { return embedding_; }  // [V, d]
  const MatrixOf<Scalar>& lm_head() const { return lm_head_; }      // [V, d], tied or not
  const WeightView<Scalar>& norm_w() const { return norm_w_; }      // [d]
  const WeightView<Scalar>& norm_b() const { return norm_b_; }      // [d]
  /// RoPE frequencies theta_m = base^(-2m/dh), m = 0..dh/2-1, in double (SPEC §2).
  const std::vector<double>& rope_theta() const { return rope_theta_; }
  /// Parameters that the forward uses (the tied head counted once; Q8 scales not counted).
  int64_t parameter_count() const { return parameter_count_; }
  /// Bytes of weights held in memory converted (0 when every tensor is used in place).
  size_t converted_bytes() const { return converted_bytes_; }
  /// A 64-bit fingerprint of the metadata (the Q8 block size included) and every tensor's name,
  /// dtype (so the format of each matrix) and shape: what a saved session must match to be
  /// restored into this model.
  uint64_t identity() const { return identity_; }

 private:
  Model() = default;

  void build(const SafetensorsFile& file) {
    file_ = file.bytes();
    config_ = read_config(file);
    q8_block_ = q8_block_of(file);
    std::vector<const TensorInfo*> used = take_tensors(file);
    reject_unused(file, used);
    parameter_count_ = 0;
    for (const TensorInfo* t : used) {
      if (!is_q8_scale_name(t->name)) parameter_count_ += t->numel;
    }
    const int64_t dh = config_.head_dim();
    for (int64_t m = 0; m < dh / 2; ++m) {
      rope_theta_.push_back(std::pow(config_.rope_base, -2.0 * static_cast<double>(m) / dh));
    }
    identity_ = fingerprint(file, used);
  }

  static Error invalid(const SafetensorsFile& file, const std::string& what) {
    return detail::invalid_file(file, what);
  }

  // The metadata's config with the sizes that only tensors give (f, a separate head), validated.
  static ModelConfig read_config(const SafetensorsFile& file) {
    ModelConfig c;
    try {
      c = config_from_metadata(file.metadata());
    } catch (const Error& e) {
      throw invalid(file, e.what());
    }
    // f comes from a tensor shape; read it before validating the config.
    const std::string w1_name = layer_prefix(c, 0, 0) + ".ffn.w1.weight";
    const TensorInfo* w1 = file.find(w1_name);
    if (w1 == nullptr) throw invalid(file, "missing tensor '" + w1_name + "'");
    if (w1->shape.size() != 2) {
      throw invalid(file, "tensor '" + w1->name + "' has a " + std::to_string(w1->shape.size()) +
                              "-dimensional shape, expected [ffn hidden, n_embd]");
    }
    c.ffn_hidden = w1->shape[0];
    c.tied_head = file.find("transformer.lm_head.weight") == nullptr;
    try {
      c.validate();
    } catch (const Error& e) {
      throw invalid(file, std::string("inconsistent metadata: ") + e.what());
    }
    return c;
  }

  // Every tensor of SPEC §6 into its view, checked for presence, shape and dtype; returns them in
  // the order taken (the identity hashes that order), a Q8 matrix's scales after it.
  std::vector<const TensorInfo*> take_tensors(const SafetensorsFile& file) {
    const ModelConfig& c = config_;
    const int64_t d = c.n_embd, V = c.vocab_size;
    std::vector<const TensorInfo*> used;
    auto vec = [&](const std::string& name, const std::vector<int64_t>& shape) {
      const TensorInfo* t = checked_tensor(file, name, shape, false);
      used.push_back(t);
      return view(*t);
    };
    auto mat = [&](const std::string& name, const std::vector<int64_t>& shape) {
      const TensorInfo* t = checked_tensor(file, name, shape, true);
      used.push_back(t);
      const TensorInfo* scale = nullptr;
      if (t->dtype == DType::kI8) {
        scale = &q8_scale_of(file, *t, q8_block_);
        used.push_back(scale);
      } else if (const TensorInfo* stray = file.find(name + kQ8ScaleSuffix)) {
        throw invalid(file, "scale tensor '" + stray->name + "' belongs to '" + name +
                                "', which is " + t->dtype_name + ", not I8 (Q8)");
      }
      return matrix(*t, scale);
    };
    embedding_ = mat("embedding.weight", {V, d});
    norm_w_ = vec("transformer.norm.weight", {d});
    norm_b_ = vec("transformer.norm.bias", {d});
    lm_head_ = c.tied_head ? embedding_ : mat("transformer.lm_head.weight", {V, d});
    for (int64_t b = 0; b < c.n_block; ++b) {
      for (int64_t j = 0; j < c.layers_per_block(); ++j) {
        const std::string p = layer_prefix(c, b, j);
        LayerWeights<Scalar> L;
        for (const LayerTensor<Scalar>& t : layer_tensors<Scalar>(c)) {
          if (t.mat != nullptr) {
            L.*t.mat = mat(p + t.suffix, t.shape);
          } else {
            L.*t.vec = vec(p + t.suffix, t.shape);
          }
        }
        layers_.push_back(L);
      }
    }
    return used;
  }

  // The tensor `name`, checked for shape and dtype: F32, F16, BF16 or F64, and I8 for a matrix
  // (SPEC §6.1).
  static const TensorInfo* checked_tensor(const SafetensorsFile& file, const std::string& name,
                                          const std::vector<int64_t>& shape, bool matrix) {
    const TensorInfo* t = file.find(name);
    if (t == nullptr) throw invalid(file, "missing tensor '" + name + "'");
    if (t->shape != shape) {
      auto str = [](const std::vector<int64_t>& s) {
        std::string out = "[";
        for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
        return out + "]";
      };
      throw invalid(file, "tensor '" + name + "' has shape " + str(t->shape) + ", expected " +
                              str(shape) + " from the metadata");
    }
    if (t->dtype == DType::kI8 && !matrix) {
      throw invalid(file, "tensor '" + name +
                              "' is I8, but only the 2-D weight matrices may be Q8 (SPEC §6.1)");
    }
    if (t->dtype == DType::kOther || t->dtype == DType::kU8) {
      throw invalid(file, "tensor '" + name + "' has unsupported dtype " + t->dtype_name +
                              (matrix ? " (F32, F16, BF16, F64 or I8 expected)"
                                      : " (F32, F16, BF16 or F64 expected)"));
    }
    return t;
  }

  // Anything beyond the tensors taken (an extra layer or block, a stray buffer) means the metadata
  // and the tensors disagree; only stored RoPE buffers are ignored (SPEC §6).
  static void reject_unused(const SafetensorsFile& file,
                            const std::vector<const TensorInfo*>& used) {
    const std::set<const TensorInfo*> used_set(used.begin(), used.end());
    const std::string ignored = "rope.inv_freq";
    for (const auto& kv : file.tensors()) {
      const std::string& name = kv.first;
      const size_t n = ignored.size();
      const bool is_ignored = name.size() >= n && name.compare(name.size() - n, n, ignored) == 0;
      if (is_ignored || used_set.count(&kv.second) != 0) continue;
      if (is_q8_scale_name(name)) {
        const std::string base = name.substr(0, name.size() - std::strlen(kQ8ScaleSuffix));
        throw invalid(file, "scale tensor '" + name + "' has no Q8 matrix '" + base + "'");
      }
      if (kv.second.dtype == DType::kI8) {
        throw invalid(file, "tensor '" + name +
                                "' is I8, but only the 2-D weight matrices may be Q8 (SPEC §6.1)");
      }
      throw invalid(file, "unexpected tensor '" + name +
                              "' (not part of the model that the metadata describes)");
    }
  }

  // FNV-1a over metadata and tensor descriptors (not the values: a snapshot is tied to a model's
  // shape and settings; hashing gigabytes at every load would be too slow).
  static uint64_t fingerprint(const SafetensorsFile& file,
                              const std::vector<const TensorInfo*>& used) {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](const std::string& s) {
      for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
      h = (h ^ 0xff) * 1099511628211ull;
    };
    for (const auto& kv : file.metadata()) {
      mix(kv.first);
      mix(kv.second);
    }
    for (const TensorInfo* t : used) {
      mix(t->name);
      mix(t->dtype_name);
      for (int64_t s : t->shape) mix(std::to_string(s));
    }
    return h;
  }

  // A vector: in place when the bytes already are Scalar and suitably aligned; converted otherwise.
  WeightView<Scalar> view(const TensorInfo& t) {
    WeightView<Scalar> v;
    v.rows = t.shape.empty() ? 1 : t.shape[0];
    v.cols = t.shape.size() == 2 ? t.shape[1] : 1;
    const bool aligned = reinterpret_cast<uintptr_t>(t.data) % alignof(Scalar) == 0;
    if (t.dtype == detail::native_dtype<Scalar>() && aligned) {
      v.data = reinterpret_cast<const Scalar*>(t.data);
      return v;
    }
    Scalar* out = owned(t.numel);
    for (int64_t i = 0; i < t.numel; ++i) out[i] = detail::load_element<Scalar>(t, i);
    v.data = out;
    return v;
  }

  // A buffer of n converted scalars that the model keeps (counted in converted_bytes()).
  Scalar* owned(int64_t n) {
    detail::BigBuffer<Scalar> buf(static_cast<size_t>(n), "a converted tensor");
    converted_bytes_ += buf.size() * sizeof(Scalar);
    owned_.push_back(std::move(buf));
    return owned_.back().data();
  }

  // A 2-D weight (scale: its Q8 scales, checked, or null). Float: F32, BF16 and Q8 in place (a
  // misaligned F32/BF16 tensor or scale copied), F16 and F64 widened to F32. Double: every format
  // widened; a Q8 value is SPEC §6.1's float32 product, then widened.
  MatrixOf<Scalar> matrix(const TensorInfo& t, const TensorInfo* scale) {
    const Eigen::Index rows = t.shape[0], cols = t.shape[1];
    if constexpr (std::is_same_v<Scalar, float>) {
      detail::WeightMatrix W;
      W.rows = rows;
      W.cols = cols;
      auto aligned = [](const uint8_t* p, size_t a) {
        return reinterpret_cast<uintptr_t>(p) % a == 0;
      };
      if (t.dtype == DType::kI8) {
        W.format = detail::WeightFormat::q8;
        W.data = t.data;
        W.block = q8_block_;
        W.scales = aligned(scale->data, 4) ? reinterpret_cast<const float*>(scale->data)
                                           : copied_floats(*scale);
      } else if (t.dtype == DType::kBF16 && aligned(t.data, 2)) {
        W.format = detail::WeightFormat::bf16;
        W.data = t.data;
      } else {
        W.data = view(t).data;  // F32 in place, or widened
      }
      return W;
    } else {
      if (t.dtype != DType::kI8) return view(t);
      const int64_t blocks = (cols + q8_block_ - 1) / q8_block_;
      Scalar* out = owned(t.numel);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          float s;
          std::memcpy(&s, scale->data + 4 * (r * blocks + c / q8_block_), 4);
          const float q = static_cast<float>(static_cast<int8_t>(t.data[r * cols + c]));
          out[r * cols + c] = static_cast<Scalar>(s * q);
        }
      }
      return WeightView<Scalar>{out, rows, cols};
    }
  }

  // The float32 values of tensor t in a buffer of the model's own (float models only).
  const float* copied_floats(const TensorInfo& t) {
    float* out = owned(t.numel);
    std::memcpy(out, t.data, 4 * static_cast<size_t>(t.numel));
    return out;
  }

  ModelConfig config_;
  std::shared_ptr<const detail::FileBytes> file_;
  std::vector<detail::BigBuffer<Scalar>> owned_;  // converted tensors; moving keeps data() stable
  std::vector<LayerWeights<Scalar>> layers_;
  MatrixOf<Scalar> embedding_, lm_head_;
  WeightView<Scalar> norm_w_, norm_b_;
  std::vector<double> rope_theta_;
  int64_t parameter_count_ = 0;
  size_t converted_bytes_ = 0;
  int64_t q8_block_ = 0;  // SPEC §6.1 B, 0 without Q8 tensors
  uint64_t identity_ = 0;
};

}  // namespace tconst
