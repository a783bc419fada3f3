// Comparing numbers in tests: files of reference floats, bit-for-bit equality, largest
// differences, the first largest element. The vector arguments are Eigen vectors (or maps) or
// std::vectors: anything with size(), operator[] and, for same_bits, data().
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace tconst_test {
namespace detail {

/// The number of elements of an Eigen vector or std::vector.
template <typename V>
size_t length(const V& v) {
  return static_cast<size_t>(v.size());
}

/// Element i of an Eigen vector or std::vector.
template <typename V>
auto element(const V& v, size_t i) {
  return v[static_cast<decltype(v.size())>(i)];
}

}  // namespace detail

/// The values of a file of little-endian float32s (such as a golden ref_logits.f32); throws
/// std::runtime_error when it cannot be read or its size is not a multiple of 4.
inline std::vector<float> read_f32(const std::string& path) {
  std::ifstream is(path, std::ios::binary);
  if (!is) throw std::runtime_error("cannot open " + path);
  const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(is)),
                                         std::istreambuf_iterator<char>());
  if (bytes.size() % 4 != 0) throw std::runtime_error(path + " is not a whole number of floats");
  std::vector<float> out(bytes.size() / 4);
  for (size_t i = 0; i < out.size(); ++i) {
    uint32_t u = 0;
    for (int b = 0; b < 4; ++b) u |= static_cast<uint32_t>(bytes[4 * i + b]) << (8 * b);
    std::memcpy(&out[i], &u, 4);
  }
  return out;
}

/// Whether a and b have the same length and the same bits in every element (NaNs, signed zeros).
template <typename V>
bool same_bits(const V& a, const V& b) {
  return a.size() == b.size() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), sizeof(*a.data()) * detail::length(a)) == 0);
}

/// The largest |a[i] - b[i]|, in double; NaN when any difference is NaN, and infinity (with a test
/// failure) when the lengths differ, so that neither passes a bound.
template <typename A, typename B>
double max_abs_diff(const A& a, const B& b) {
  EXPECT_EQ(detail::length(a), detail::length(b)) << "vectors of different lengths";
  if (detail::length(a) != detail::length(b)) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (size_t i = 0; i < detail::length(b); ++i) {
    const double d = std::abs(static_cast<double>(detail::element(a, i)) -
                              static_cast<double>(detail::element(b, i)));
    if (std::isnan(d)) return d;
    m = std::max(m, d);
  }
  return m;
}

/// max_abs_diff(a, b) over the reference b's scale: max(1, largest |b[i]|).
template <typename A, typename B>
double max_rel_diff(const A& a, const B& b) {
  double scale = 1;
  for (size_t i = 0; i < detail::length(b); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(detail::element(b, i))));
  }
  return max_abs_diff(a, b) / scale;
}

/// The first index of the largest element, by the plainest loop there is (0 for an empty v).
template <typename V>
int32_t argmax(const V& v) {
  size_t best = 0;
  for (size_t i = 1; i < detail::length(v); ++i) {
    if (detail::element(v, i) > detail::element(v, best)) best = i;
  }
  return static_cast<int32_t>(best);
}

}  // namespace tconst_test
