#pragma once
// GrowingKV: keys and values that grow with the stream, by design of the architectures that keep
// them (the baseline's per-layer cache, TLinFormer's per-block compress-layer context keys).

#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "tconst/detail/abi.hpp"

namespace tconst {
inline namespace TCONST_ABI {

/// Keys and values that grow with the stream: the baseline's per-layer cache and TLinFormer's
/// per-block compress-layer context keys. Capacity grows geometrically, so appends are amortised
/// O(1); `bytes()` counts the rows held, `capacity_bytes()` what is allocated.
namespace detail {

template <typename Scalar>
class GrowingKV {
 public:
  using Index = Eigen::Index;

  GrowingKV() = default;
  GrowingKV(Index layers, Index d) : layers_(layers), d_(d), k_(layers), v_(layers) {}

  /// Makes room for `rows` rows in every layer, keeping the rows held.
  void reserve(Index rows) {
    if (rows <= capacity_) return;
    Index cap = std::max<Index>(rows, capacity_ + capacity_ / 2);
    cap = std::max<Index>(cap, 64);
    for (Index l = 0; l < layers_; ++l) {
      k_[l].resize(static_cast<size_t>(cap * d_));
      v_[l].resize(static_cast<size_t>(cap * d_));
    }
    capacity_ = cap;
  }
  /// [rows, d] rotated keys of layer l; row i at position i.
  Scalar* keys(Index l) { return k_[l].data(); }
  Scalar* values(Index l) { return v_[l].data(); }
  const Scalar* keys(Index l) const { return k_[l].data(); }
  const Scalar* values(Index l) const { return v_[l].data(); }

  Index rows() const { return rows_; }
  void set_rows(Index rows) noexcept { rows_ = rows; }
  Index capacity() const { return capacity_; }
  Index layers() const { return layers_; }
  size_t bytes() const { return static_cast<size_t>(rows_ * d_ * 2 * layers_) * sizeof(Scalar); }
  size_t capacity_bytes() const {
    return static_cast<size_t>(capacity_ * d_ * 2 * layers_) * sizeof(Scalar);
  }

 private:
  Index layers_ = 0, d_ = 0, rows_ = 0, capacity_ = 0;
  std::vector<std::vector<Scalar>> k_, v_;  // per layer [capacity, d]
};

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
