#pragma once
// Views instead of argument lists: a strided block of rows (data, rows, cols, leading dimension)
// and the heads of an attention row (count, size) travel together, so that a function's
// signature reads like its maths. Views hold no memory; copying one copies four words.

#include <Eigen/Core>
#include <type_traits>

#include "tconst/detail/abi.hpp"

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

/// rows x cols scalars, row i at data + i * ld (ld >= cols). S may be const (a read-only view);
/// a view of S converts to one of const S.
template <typename S>
struct RowsView {
  S* data = nullptr;
  Eigen::Index rows = 0, cols = 0, ld = 0;

  /// Row i's first scalar.
  S* row(Eigen::Index i) const noexcept { return data + i * ld; }
  /// Rows [r0, r0 + n), every column.
  RowsView block(Eigen::Index r0, Eigen::Index n) const noexcept {
    return {data + r0 * ld, n, cols, ld};
  }
  /// Columns [c0, c0 + n) of every row (one head's slice of a row of heads).
  RowsView cols_from(Eigen::Index c0, Eigen::Index n) const noexcept {
    return {data + c0, rows, n, ld};
  }
  /// The same rows, read-only.
  template <typename T = S,
            typename = std::enable_if_t<std::is_same_v<T, S> && !std::is_const_v<T>>>
  operator RowsView<const T>() const noexcept {
    return {data, rows, cols, ld};
  }
};

/// A view of rows x cols scalars at data, rows ld apart (cols apart by default: contiguous).
template <typename S>
RowsView<S> rows_view(S* data, Eigen::Index rows, Eigen::Index cols, Eigen::Index ld) noexcept {
  return {data, rows, cols, ld};
}
template <typename S>
RowsView<S> rows_view(S* data, Eigen::Index rows, Eigen::Index cols) noexcept {
  return {data, rows, cols, cols};
}

/// T, in a context from which a template argument is not deduced.
template <typename T>
struct NoDeduce {
  using type = T;
};
/// A read-only view as a template's parameter: S comes from the other parameters, so that a view
/// of S (or of const S) converts to it.
template <typename S>
using ConstRows = RowsView<const typename NoDeduce<S>::type>;

/// The heads of an attention row: `count` slices of `size` (dh) scalars side by side.
struct Heads {
  Eigen::Index count = 0, size = 0;

  /// Scalars of all heads together (the model width d).
  Eigen::Index width() const noexcept { return count * size; }
};

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
