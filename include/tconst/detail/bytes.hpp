#pragma once
// Byte strings of a session's state (session snapshots): plain values and arrays appended in host
// order (hosts are little-endian, as the model file), read back with every length checked against
// what is left, and the parts every architecture's state shares: the token log and the logits.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tconst/config.hpp"
#include "tconst/error.hpp"

namespace tconst {

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

/// Reads a snapshot's token log: at most max_context tokens, every id in [0, V). The bytes must
/// be present before anything is sized by the claimed count (a short file may claim 2^30).
inline std::vector<int32_t> read_token_log(ByteReader& r, const ModelConfig& c,
                                           int64_t max_context) {
  const uint64_t n = r.get<uint64_t>("token log");
  if (n > static_cast<uint64_t>(max_context)) {
    throw Error("snapshot holds " + std::to_string(n) + " tokens, more than max_context");
  }
  const uint8_t* tokens = r.span<int32_t>(n, "token log");
  std::vector<int32_t> log(static_cast<size_t>(n));
  if (n > 0) std::memcpy(log.data(), tokens, n * sizeof(int32_t));
  for (int32_t t : log) {
    if (t < 0 || t >= c.vocab_size) throw Error("snapshot token log holds an id out of range");
  }
  return log;
}

/// Reads the last part of a snapshot's state: the logits after the last token (none before the
/// first), and checks that nothing follows them. Returns where the V scalars start.
template <typename Scalar>
const uint8_t* read_logits_tail(ByteReader& r, const ModelConfig& c, uint64_t n_tokens,
                                uint64_t* count) {
  const uint64_t nl = r.get<uint64_t>("logits");
  if (nl != (n_tokens > 0 ? static_cast<uint64_t>(c.vocab_size) : 0)) {
    throw Error("snapshot logits disagree with the model");
  }
  const uint8_t* logits = r.span<Scalar>(nl, "logits");
  if (r.left() != 0) throw Error("snapshot has trailing bytes");
  *count = nl;
  return logits;
}

}  // namespace detail
}  // namespace tconst
