#pragma once
// The matrix and vector types of the API and the views of a layer's weights: what the kernels,
// samplers and sessions share without the model loader (model.hpp).

#include <Eigen/Core>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/weight_matrix.hpp"

namespace tconst {
inline namespace TCONST_ABI {

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

}  // namespace TCONST_ABI
}  // namespace tconst
