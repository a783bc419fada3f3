#pragma once
// The definitions of Model<Scalar>'s loading (model.hpp): reading a SPEC §6 file through the
// safetensors parser, checking every tensor, and holding each in its format. model.hpp includes
// this where the definitions are compiled: in a header-only unit, and in tconst::precompiled.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/compute_linear.hpp"
#include "tconst/model.hpp"
#include "tconst/model/reference_quantizer.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/model/tensor_values.hpp"
#include "tconst/model/weight_formats.hpp"

namespace tconst {
inline namespace TCONST_ABI {

template <typename Scalar>
auto Model<Scalar>::load(const std::string& path) -> std::shared_ptr<const Model> {
  return from_file(SafetensorsFile::open(path));
}

template <typename Scalar>
auto Model<Scalar>::load_from_bytes(std::vector<uint8_t> bytes, const std::string& label)
    -> std::shared_ptr<const Model> {
  return from_file(SafetensorsFile::from_bytes(std::move(bytes), label));
}

template <typename Scalar>
auto Model<Scalar>::from_file(const SafetensorsFile& file) -> std::shared_ptr<const Model> {
  std::shared_ptr<Model> m(new Model());
  m->build(file);
  m->compute_models_ = std::make_shared<detail::ComputeModels<Scalar>>();
  return m;
}

template <typename Scalar>
auto Model<Scalar>::build(const SafetensorsFile& file) -> void {
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

template <typename Scalar>
auto Model<Scalar>::invalid(const SafetensorsFile& file, const std::string& what) -> Error {
  return detail::invalid_file(file, what);
}

template <typename Scalar>
auto Model<Scalar>::read_config(const SafetensorsFile& file) -> ModelConfig {
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

template <typename Scalar>
auto Model<Scalar>::take_tensors(const SafetensorsFile& file) -> std::vector<const TensorInfo*> {
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

template <typename Scalar>
auto Model<Scalar>::checked_tensor(const SafetensorsFile& file, const std::string& name,
                                   const std::vector<int64_t>& shape, bool matrix)
    -> const TensorInfo* {
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

template <typename Scalar>
auto Model<Scalar>::reject_unused(const SafetensorsFile& file,
                                  const std::vector<const TensorInfo*>& used) -> void {
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

template <typename Scalar>
auto Model<Scalar>::fingerprint(const SafetensorsFile& file,
                                const std::vector<const TensorInfo*>& used) -> uint64_t {
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

template <typename Scalar>
auto Model<Scalar>::view(const TensorInfo& t) -> WeightView<Scalar> {
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

template <typename Scalar>
auto Model<Scalar>::owned(int64_t n) -> Scalar* {
  detail::BigBuffer<Scalar> buf(static_cast<size_t>(n), "a converted tensor");
  converted_bytes_ += buf.size() * sizeof(Scalar);
  owned_.push_back(std::move(buf));
  return owned_.back().data();
}

template <typename Scalar>
auto Model<Scalar>::matrix(const TensorInfo& t, const TensorInfo* scale) -> MatrixOf<Scalar> {
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

template <typename Scalar>
auto Model<Scalar>::copied_floats(const TensorInfo& t) -> const float* {
  if constexpr (std::is_same_v<Scalar, float>) {
    float* out = owned(t.numel);
    std::memcpy(out, t.data, 4 * static_cast<size_t>(t.numel));
    return out;
  } else {
    throw Error("internal: float32 copies are made for float models only");
  }
}

namespace detail {

/// A loaded model's versions for the computes other than f32, made on first use (for_compute).
template <typename Scalar>
struct ComputeModels {
  std::mutex mutex;
  std::unique_ptr<const Model<Scalar>> of[3];  // by Compute
};

}  // namespace detail

template <typename Scalar>
auto Model<Scalar>::for_compute(const std::shared_ptr<const Model>& model, Compute compute)
    -> std::shared_ptr<const Model> {
  if (!model) throw Error("Model::for_compute needs a model");
  if (compute == model->compute_) return model;
  if constexpr (!std::is_same_v<Scalar, float>) {
    throw Error(std::string("compute ") + to_string(compute) +
                " needs a float model (a double model computes in double)");
  } else {
    if (model->compute_models_ == nullptr) {
      throw Error(std::string("a model prepared for compute ") + to_string(model->compute_) +
                  " cannot be prepared for " + to_string(compute) + "; use the loaded model");
    }
    detail::ComputeModels<Scalar>& all = *model->compute_models_;
    const std::lock_guard<std::mutex> lock(all.mutex);
    std::unique_ptr<const Model>& slot = all.of[static_cast<int>(compute)];
    if (!slot) slot = model->converted_for(compute);
    // Shares ownership with `model`, whose tensors the version views.
    return std::shared_ptr<const Model>(model, slot.get());
  }
}

template <typename Scalar>
auto Model<Scalar>::converted_for(Compute compute) const -> std::unique_ptr<const Model> {
  std::unique_ptr<Model> m(new Model());
  m->config_ = config_;
  m->file_ = file_;
  m->layers_ = layers_;
  m->embedding_ = embedding_;
  m->lm_head_ = lm_head_;
  m->norm_w_ = norm_w_;
  m->norm_b_ = norm_b_;
  m->rope_theta_ = rope_theta_;
  m->parameter_count_ = parameter_count_;
  m->q8_block_ = q8_block_;
  m->identity_ = identity_;
  m->compute_ = compute;
  if constexpr (std::is_same_v<Scalar, float>) {
    const bool tied = lm_head_.data == embedding_.data;
    m->embedding_ = m->converted_matrix(embedding_, compute);
    m->lm_head_ = tied ? m->embedding_ : m->converted_matrix(lm_head_, compute);
    for (LayerWeights<Scalar>& L : m->layers_) {
      for (const LayerTensor<Scalar>& t : layer_tensors<Scalar>(config_)) {
        if (t.mat != nullptr) L.*t.mat = m->converted_matrix(L.*t.mat, compute);
      }
    }
  }
  return m;
}

template <typename Scalar>
auto Model<Scalar>::converted_matrix(const detail::WeightMatrix& W, Compute compute)
    -> detail::WeightMatrix {
  detail::WeightMatrix out = W;
  out.compute = compute;
  const WeightFormat want = compute == Compute::bf16 ? WeightFormat::bf16 : WeightFormat::q8;
  if constexpr (std::is_same_v<Scalar, float>) {
    if (compute == Compute::f32 || (W.format == want && compute == Compute::bf16)) return out;
    const int64_t rows = W.rows, cols = W.cols;
    const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(cols);
    std::vector<float> row(static_cast<size_t>(cols));
    if (compute == Compute::bf16) {
      detail::BigBuffer<uint16_t> bits(n, "a matrix converted to BF16");
      for (int64_t r = 0; r < rows; ++r) {
        detail::dequantize_row(W, r, row.data());
        for (int64_t c = 0; c < cols; ++c) bits.data()[r * cols + c] = float_to_bf16(row[c]);
      }
      out.data = bits.data();
      out.scales = nullptr;
      out.block = 0;
      converted_bytes_ += n * sizeof(uint16_t);
      owned_bf16_.push_back(std::move(bits));
    } else if (W.format != WeightFormat::q8) {
      // The file's Q8 block size where it has one, the reference quantizer's default otherwise.
      const int64_t block = q8_block_ > 0 ? q8_block_ : 32;
      const int64_t blocks = (cols + block - 1) / block;
      detail::BigBuffer<int8_t> q(n, "a matrix quantized to Q8");
      float* scales = owned(rows * blocks);
      for (int64_t r = 0; r < rows; ++r) {
        detail::dequantize_row(W, r, row.data());
        quantize_q8(row.data(), 1, cols, block, q.data() + r * cols, scales + r * blocks);
      }
      out.data = q.data();
      out.scales = scales;
      out.block = block;
      converted_bytes_ += n;
      owned_q8_.push_back(std::move(q));
    }
    out.format = want;
    if (compute == Compute::int8) {
      // The sums of each block's q, which the int8 products subtract (compute_linear.hpp).
      detail::BigBuffer<int32_t> sums(static_cast<size_t>(rows * out.blocks()), "block sums");
      detail::int8_block_sums(out, sums.data());
      out.block_sums = sums.data();
      converted_bytes_ += sums.size() * sizeof(int32_t);
      owned_sums_.push_back(std::move(sums));
    }
  }
  return out;
}

}  // namespace TCONST_ABI
}  // namespace tconst
