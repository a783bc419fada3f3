#pragma once
// Session snapshots: save a session to a file and restore it, in this process or another, so
// that continuing gives identical logits.
//
// File layout (little-endian):
//   magic "TCSNAPSH" | u32 format version | u32 scalar bytes | [u32 compute] | u64 model identity |
//   u64 state length | state bytes (Session::write_state) | u64 FNV-1a checksum of all before it
// Version 1 (a session of compute f32) has no compute field; version 2 (bf16, int8) has it, with
// the value of tconst::Compute. Both are read.
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

#include "tconst/detail/abi.hpp"
#include "tconst/detail/bytes.hpp"
#include "tconst/error.hpp"
#include "tconst/session.hpp"

namespace tconst {
inline namespace TCONST_ABI {

/// The newest snapshot format version (the one written for a compute other than f32).
constexpr uint32_t kSnapshotVersion = 2;

/// The snapshot of a session as bytes: the file that save_session() writes (for a program that
/// stores it elsewhere, or writes it its own way).
template <typename Scalar>
std::string snapshot_bytes(const Session<Scalar>& session) {
  std::string state;
  session.write_state(state);
  std::string file;
  detail::ByteWriter w(file);
  file.append("TCSNAPSH", 8);
  const Compute compute = session.options().compute;
  w.put<uint32_t>(compute == Compute::f32 ? 1 : 2);
  w.put<uint32_t>(sizeof(Scalar));
  if (compute != Compute::f32) w.put<uint32_t>(static_cast<uint32_t>(compute));
  w.put<uint64_t>(session.model().identity());
  w.put<uint64_t>(state.size());
  file += state;
  w.put<uint64_t>(detail::fnv1a(reinterpret_cast<const uint8_t*>(file.data()), file.size()));
  return file;
}

/// Restores a session from snapshot bytes (what snapshot_bytes() or save_session() produced) for
/// the same model and precision. Errors name `label` (e.g. the file). On any error the session is
/// unchanged.
template <typename Scalar>
void restore_snapshot(Session<Scalar>& session, const uint8_t* bytes, size_t size,
                      const std::string& label = "<memory>") {
  const std::string where = "snapshot '" + label + "': ";
  try {
    if (size < 8 + 4 + 4 + 8 + 8 + 8 || std::memcmp(bytes, "TCSNAPSH", 8) != 0) {
      throw Error(size >= 8 && std::memcmp(bytes, "TCSNAPSH", 8) == 0
                      ? "file is truncated"
                      : "not a tconst session snapshot");
    }
    const size_t body = size - 8;
    uint64_t stored_sum;
    std::memcpy(&stored_sum, bytes + body, 8);
    detail::ByteReader r(bytes + 8, body - 8);
    const uint32_t version = r.get<uint32_t>("header");
    if (version > kSnapshotVersion) {
      throw Error("format version " + std::to_string(version) + " is newer than this library's " +
                  std::to_string(kSnapshotVersion));
    }
    if (version != 1 && version != 2)
      throw Error("unknown format version " + std::to_string(version));
    const uint32_t scalar = r.get<uint32_t>("header");
    const uint32_t compute = version == 1 ? 0 : r.get<uint32_t>("header");
    const uint64_t identity = r.get<uint64_t>("header");
    const uint64_t state_len = r.get<uint64_t>("header");
    if (state_len != r.left()) throw Error("file is truncated or has trailing bytes");
    if (detail::fnv1a(bytes, body) != stored_sum) {
      throw Error("checksum mismatch: the file is corrupted");
    }
    if (scalar != sizeof(Scalar)) {
      throw Error(std::string("saved with ") + (scalar == 8 ? "double" : "float") +
                  " precision, restoring into " + (sizeof(Scalar) == 8 ? "double" : "float"));
    }
    if (identity != session.model().identity()) {
      throw Error("saved for a different model (identity mismatch)");
    }
    const Compute want = session.options().compute;
    if (compute > static_cast<uint32_t>(Compute::int8) || (version == 2 && compute == 0)) {
      throw Error("unknown compute " + std::to_string(compute) + " in the header");
    }
    if (compute != static_cast<uint32_t>(want)) {
      throw Error(std::string("saved by a session of compute ") +
                  to_string(static_cast<Compute>(compute)) + ", restoring into one of compute " +
                  to_string(want));
    }
    session.read_state(bytes + size - 8 - state_len, static_cast<size_t>(state_len));
  } catch (const Error& e) {
    throw Error(where + e.what());
  }
}

/// Saves the session to `path` (atomically: temporary file, then rename).
template <typename Scalar>
void save_session(const Session<Scalar>& session, const std::string& path) {
  const std::string file = snapshot_bytes(session);
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
  restore_snapshot(session, bytes.data(), bytes.size(), path);
}

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template void save_session(const Session<float>&, const std::string&);
extern template void load_session(Session<float>&, const std::string&);
extern template std::string snapshot_bytes(const Session<float>&);
extern template void restore_snapshot(Session<float>&, const uint8_t*, size_t, const std::string&);
extern template void save_session(const Session<double>&, const std::string&);
extern template void load_session(Session<double>&, const std::string&);
extern template std::string snapshot_bytes(const Session<double>&);
extern template void restore_snapshot(Session<double>&, const uint8_t*, size_t, const std::string&);
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
