#pragma once
// Byte strings: plain values and arrays appended in host order (hosts are little-endian, as the
// model file), read back with every length checked against what is left.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
namespace tconst {
inline namespace TCONST_ABI {

namespace detail {

inline uint64_t fnv1a(const uint8_t* p, size_t n, uint64_t h = 1469598103934665603ull) {
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Appends plain values and arrays to a byte string (hosts are little-endian, as the model file).
class ByteWriter {
 public:
  explicit ByteWriter(std::string& out) : out_(out) {}
  template <typename T>
  void put(const T& v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  template <typename T>
  void put_array(const T* p, size_t n) {
    out_.append(reinterpret_cast<const char*>(p), n * sizeof(T));
  }

 private:
  std::string& out_;
};

// Reads what ByteWriter wrote, checking every length against what is left.
class ByteReader {
 public:
  ByteReader(const uint8_t* p, size_t n) : p_(p), left_(n) {}
  template <typename T>
  T get(const char* what) {
    T v;
    need(sizeof(T), what);
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    left_ -= sizeof(T);
    return v;
  }
  /// A pointer to n elements of T inside the buffer (possibly unaligned: copy with memcpy).
  template <typename T>
  const uint8_t* span(uint64_t n, const char* what) {
    if (n > left_ / sizeof(T)) throw Error(std::string("snapshot truncated in ") + what);
    const uint8_t* at = p_;
    p_ += n * sizeof(T);
    left_ -= n * sizeof(T);
    return at;
  }
  size_t left() const { return left_; }

 private:
  void need(size_t n, const char* what) {
    if (n > left_) throw Error(std::string("snapshot truncated in ") + what);
  }
  const uint8_t* p_;
  size_t left_;
};

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
