#pragma once
// FixedKVCache: the one allocation a TConstFormer session streams against (SPEC §5).
//
// Per block b it holds, for every hidden and restore layer j = 1..D-1, the rotated compressed keys
// Kz and values Vz ([Hh, d] each, Z rows valid), and for every layer j = 0..D-1 the rotated window
// keys and values ([W, d] each, one row per token since the last resync). Its size is
// B * ((D-1)*Hh + D*W) * 2d scalars, fixed at construction; nothing ever reallocates it.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "tconst/config.hpp"
#include "tconst/detail/abi.hpp"
#include "tconst/detail/big_buffer.hpp"
#include "tconst/error.hpp"

namespace tconst {
inline namespace TCONST_ABI {

template <typename Scalar>
class FixedKVCache {
 public:
  using Index = Eigen::Index;

  explicit FixedKVCache(const ModelConfig& c)
      : n_block_(c.n_block),
        depth_(c.inner_depth),
        d_(c.n_embd),
        hist_(c.history_window),
        win_(c.generate_window),
        scalars_(c.fixed_cache_scalars()),
        storage_(allocate(scalars_)) {}

  FixedKVCache(FixedKVCache&&) noexcept = default;
  FixedKVCache& operator=(FixedKVCache&&) noexcept = default;
  // Copying a cache copies megabytes: it is spelled copy(), never done implicitly.
  FixedKVCache(const FixedKVCache&) = delete;
  FixedKVCache& operator=(const FixedKVCache&) = delete;

  FixedKVCache copy() const {
    FixedKVCache out(*this, 0);
    std::memcpy(out.storage_.data(), storage_.data(), bytes());
    return out;
  }

  /// [Hh, d] rotated compressed keys of block b, layer j in 1..D-1; row i is at position hs + i.
  Scalar* z_keys(Index b, Index j) { return storage_.data() + z_offset(b, j); }
  /// [Hh, d] compressed values of block b, layer j in 1..D-1.
  Scalar* z_values(Index b, Index j) { return z_keys(b, j) + hist_ * d_; }
  /// [W, d] rotated window keys of block b, layer j in 0..D-1; row i is at position Lc + i.
  Scalar* window_keys(Index b, Index j) { return storage_.data() + w_offset(b, j); }
  /// [W, d] window values of block b, layer j in 0..D-1.
  Scalar* window_values(Index b, Index j) { return window_keys(b, j) + win_ * d_; }
  const Scalar* z_keys(Index b, Index j) const { return storage_.data() + z_offset(b, j); }
  const Scalar* z_values(Index b, Index j) const { return z_keys(b, j) + hist_ * d_; }
  const Scalar* window_keys(Index b, Index j) const { return storage_.data() + w_offset(b, j); }
  const Scalar* window_values(Index b, Index j) const { return window_keys(b, j) + win_ * d_; }

  /// Lc: tokens summarised by the compressed rows (a multiple of W).
  int64_t context_length() const { return context_length_; }
  /// Z = Lc - hs: valid compressed rows (0 before the first resync, Hh once Lc >= Hh).
  Index z_rows() const { return z_rows_; }
  /// Valid window rows: tokens since the last resync, at most W.
  Index window_rows() const { return window_rows_; }
  Index window_capacity() const { return win_; }
  /// d: the width of every key and value row.
  Index width() const { return d_; }

  void set_context(int64_t context_length, Index z_rows) noexcept {
    context_length_ = context_length;
    z_rows_ = z_rows;
    window_rows_ = 0;
  }
  void set_window_rows(Index n) noexcept { window_rows_ = n; }
  void clear() noexcept { set_context(0, 0); }

  /// Bytes of storage: B * ((D-1)*Hh + D*W) * 2d * sizeof(Scalar).
  size_t bytes() const { return static_cast<size_t>(scalars_) * sizeof(Scalar); }
  const Scalar* data() const { return storage_.data(); }
  Scalar* data() { return storage_.data(); }

 private:
  static detail::BigBuffer<Scalar> allocate(int64_t scalars) {
    return detail::BigBuffer<Scalar>(static_cast<size_t>(scalars), "the fixed cache");
  }

  // Same geometry, fresh storage (contents copied by copy()).
  FixedKVCache(const FixedKVCache& o, int)
      : n_block_(o.n_block_),
        depth_(o.depth_),
        d_(o.d_),
        hist_(o.hist_),
        win_(o.win_),
        scalars_(o.scalars_),
        storage_(allocate(scalars_)),
        context_length_(o.context_length_),
        z_rows_(o.z_rows_),
        window_rows_(o.window_rows_) {}

  Index block_stride() const { return ((depth_ - 1) * hist_ + depth_ * win_) * 2 * d_; }
  Index z_offset(Index b, Index j) const { return b * block_stride() + (j - 1) * 2 * hist_ * d_; }
  Index w_offset(Index b, Index j) const {
    return b * block_stride() + (depth_ - 1) * 2 * hist_ * d_ + j * 2 * win_ * d_;
  }

  Index n_block_, depth_, d_, hist_, win_;
  int64_t scalars_;
  detail::BigBuffer<Scalar> storage_;
  int64_t context_length_ = 0;
  Index z_rows_ = 0;
  Index window_rows_ = 0;
};

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class FixedKVCache<float>;
extern template class FixedKVCache<double>;
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
