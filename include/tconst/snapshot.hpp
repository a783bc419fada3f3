#pragma once
// Session snapshots: save a session to a file and restore it, in this process or another, so
// that continuing gives identical logits.
//
// File layout (little-endian):
//   magic "TCSNAPSH" | u32 format version | u32 scalar bytes | u64 model identity |
//   u64 state length | state bytes (Session::write_state) | u64 FNV-1a checksum of all before it
// Restoring into a different model, a truncated or corrupted file, or a future version fails with
// an Error that says which, and leaves the session untouched. Saving writes a temporary file and
// renames it over the target, so an existing snapshot is never left half-written.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tconst/error.hpp"
#include "tconst/session.hpp"

namespace tconst {

constexpr uint32_t kSnapshotVersion = 1;

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
                                           const SessionOptions& o) {
  const uint64_t n = r.get<uint64_t>("token log");
  if (n > static_cast<uint64_t>(o.max_context)) {
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

/// Saves the session to `path` (atomically: temporary file, then rename).
template <typename Scalar>
void save_session(const Session<Scalar>& session, const std::string& path) {
  std::string state;
  session.write_state(state);
  std::string file;
  detail::ByteWriter w(file);
  file.append("TCSNAPSH", 8);
  w.put<uint32_t>(kSnapshotVersion);
  w.put<uint32_t>(sizeof(Scalar));
  w.put<uint64_t>(session.model().identity());
  w.put<uint64_t>(state.size());
  file += state;
  w.put<uint64_t>(detail::fnv1a(reinterpret_cast<const uint8_t*>(file.data()), file.size()));
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("cannot write snapshot '" + tmp + "'");
    out.write(file.data(), static_cast<std::streamsize>(file.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw Error("failed writing snapshot '" + tmp + "'");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("cannot move snapshot into place at '" + path + "'");
  }
}

/// Restores a session saved by save_session() for the same model and precision. On any error the
/// session is unchanged.
template <typename Scalar>
void load_session(Session<Scalar>& session, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open snapshot '" + path + "'");
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  const std::string where = "snapshot '" + path + "': ";
  try {
    if (bytes.size() < 8 + 4 + 4 + 8 + 8 + 8 || std::memcmp(bytes.data(), "TCSNAPSH", 8) != 0) {
      throw Error(bytes.size() >= 8 && std::memcmp(bytes.data(), "TCSNAPSH", 8) == 0
                      ? "file is truncated"
                      : "not a tconst session snapshot");
    }
    const size_t body = bytes.size() - 8;
    uint64_t stored_sum;
    std::memcpy(&stored_sum, bytes.data() + body, 8);
    detail::ByteReader r(bytes.data() + 8, body - 8);
    const uint32_t version = r.get<uint32_t>("header");
    if (version > kSnapshotVersion) {
      throw Error("format version " + std::to_string(version) + " is newer than this library's " +
                  std::to_string(kSnapshotVersion));
    }
    if (version != kSnapshotVersion)
      throw Error("unknown format version " + std::to_string(version));
    const uint32_t scalar = r.get<uint32_t>("header");
    const uint64_t identity = r.get<uint64_t>("header");
    const uint64_t state_len = r.get<uint64_t>("header");
    if (state_len != r.left()) throw Error("file is truncated or has trailing bytes");
    if (detail::fnv1a(bytes.data(), body) != stored_sum) {
      throw Error("checksum mismatch: the file is corrupted");
    }
    if (scalar != sizeof(Scalar)) {
      throw Error(std::string("saved with ") + (scalar == 8 ? "double" : "float") +
                  " precision, restoring into " + (sizeof(Scalar) == 8 ? "double" : "float"));
    }
    if (identity != session.model().identity()) {
      throw Error("saved for a different model (identity mismatch)");
    }
    session.read_state(bytes.data() + 8 + 4 + 4 + 8 + 8, static_cast<size_t>(state_len));
  } catch (const Error& e) {
    throw Error(where + e.what());
  }
}

}  // namespace tconst
