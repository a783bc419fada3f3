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
#include <type_traits>
#include <vector>

#include "tconst/compute.hpp"
#include "tconst/config.hpp"
#include "tconst/detail/abi.hpp"
#include "tconst/detail/big_buffer.hpp"
#include "tconst/detail/weight_matrix.hpp"
#include "tconst/error.hpp"
#include "tconst/matrix.hpp"

namespace tconst {
inline namespace TCONST_ABI {

class SafetensorsFile;
struct TensorInfo;
namespace detail {
class FileBytes;
template <typename Scalar>
struct ComputeModels;
}  // namespace detail

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

/// Immutable weights and config. Create with load(); share through std::shared_ptr.
template <typename Scalar>
class Model {
  static_assert(std::is_same<Scalar, float>::value || std::is_same<Scalar, double>::value,
                "tconst::Model supports float and double");

 public:
  /// Loads and validates a SPEC §6 file. Throws Error naming the problem; never returns a
  /// partially loaded model.
  static std::shared_ptr<const Model> load(const std::string& path);
  /// The same from bytes already in memory (used for models made in a program, e.g. benchmarks).
  static std::shared_ptr<const Model> load_from_bytes(std::vector<uint8_t> bytes,
                                                      const std::string& label = "<memory>");
  static std::shared_ptr<const Model> from_file(const SafetensorsFile& file);

  /// `model` prepared for `compute` (SPEC §6.3): `model` itself for Compute::f32; otherwise the
  /// same model with its matrices converted for that compute (BF16, or Q8 by the reference
  /// quantizer; matrices already in that format are used in place), made once, on first use, and
  /// kept as long as `model` is. Thread-safe. Throws Error for a double model, or for a matrix
  /// that cannot be quantized (a NaN or infinite weight).
  static std::shared_ptr<const Model> for_compute(const std::shared_ptr<const Model>& model,
                                                  Compute compute);
  /// The compute this model's products run in (Compute::f32 for a model as loaded).
  Compute compute() const { return compute_; }

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

  void build(const SafetensorsFile& file);

  static Error invalid(const SafetensorsFile& file, const std::string& what);

  // The metadata's config with the sizes that only tensors give (f, a separate head), validated.
  static ModelConfig read_config(const SafetensorsFile& file);

  // Every tensor of SPEC §6 into its view, checked for presence, shape and dtype; returns them in
  // the order taken (the identity hashes that order), a Q8 matrix's scales after it.
  std::vector<const TensorInfo*> take_tensors(const SafetensorsFile& file);

  // The tensor `name`, checked for shape and dtype: F32, F16, BF16 or F64, and I8 for a matrix
  // (SPEC §6.1).
  static const TensorInfo* checked_tensor(const SafetensorsFile& file, const std::string& name,
                                          const std::vector<int64_t>& shape, bool matrix);

  // Anything beyond the tensors taken (an extra layer or block, a stray buffer) means the metadata
  // and the tensors disagree; only stored RoPE buffers are ignored (SPEC §6).
  static void reject_unused(const SafetensorsFile& file,
                            const std::vector<const TensorInfo*>& used);

  // FNV-1a over metadata and tensor descriptors (not the values: a snapshot is tied to a model's
  // shape and settings; hashing gigabytes at every load would be too slow).
  static uint64_t fingerprint(const SafetensorsFile& file,
                              const std::vector<const TensorInfo*>& used);

  // A vector: in place when the bytes already are Scalar and suitably aligned; converted otherwise.
  WeightView<Scalar> view(const TensorInfo& t);

  // A buffer of n converted scalars that the model keeps (counted in converted_bytes()).
  Scalar* owned(int64_t n);

  // A 2-D weight (scale: its Q8 scales, checked, or null). Float: F32, BF16 and Q8 in place (a
  // misaligned F32/BF16 tensor or scale copied), F16 and F64 widened to F32. Double: every format
  // widened; a Q8 value is SPEC §6.1's float32 product, then widened.
  MatrixOf<Scalar> matrix(const TensorInfo& t, const TensorInfo* scale);

  // The float32 values of tensor t in a buffer of the model's own (float models only).
  const float* copied_floats(const TensorInfo& t);

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
  Compute compute_ = Compute::f32;
  // A loaded model's versions for the other computes (for_compute); null in those versions.
  std::shared_ptr<detail::ComputeModels<Scalar>> compute_models_;
  std::vector<detail::BigBuffer<uint16_t>> owned_bf16_;  // matrices converted to BF16
  std::vector<detail::BigBuffer<int8_t>> owned_q8_;      // matrices quantized to Q8
  std::vector<detail::BigBuffer<int32_t>> owned_sums_;   // the int8 compute's block sums

  // This model's matrices converted for `compute`, in a new Model that views everything else of
  // this one (which must outlive it).
  std::unique_ptr<const Model> converted_for(Compute compute) const;
  // One matrix converted for `compute` into buffers of this model.
  detail::WeightMatrix converted_matrix(const detail::WeightMatrix& W, Compute compute);
};

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class Model<float>;
extern template class Model<double>;
#endif

}  // namespace TCONST_ABI
}  // namespace tconst

#if TCONST_DEFINITIONS
#include "tconst/model/model_load.hpp"
#endif
