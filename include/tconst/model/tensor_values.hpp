#pragma once
// A tensor's elements as float or double, whatever its dtype (SPEC §6): what the model loader and
// the quantizer read values with.

#include <cstdint>
#include <cstring>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/weight_matrix.hpp"
#include "tconst/model/safetensors.hpp"

namespace tconst {
inline namespace TCONST_ABI {

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

}  // namespace TCONST_ABI
}  // namespace tconst
