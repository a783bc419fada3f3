#pragma once
// Writing safetensors files (the layout safetensors.hpp reads) in one canonical form, which
// tools/tconst_torch/safetensors_io.py writes too, so that the same tensors and metadata give the
// same bytes from either: the JSON header compact, "__metadata__" first with its keys sorted, then
// the tensors in sorted name order, non-ASCII characters escaped; the header padded with spaces so
// that the data section starts at a multiple of 64 bytes; tensor data back to back, no holes.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace tconst {
inline namespace TCONST_ABI {

/// One tensor to write: name, safetensors dtype name (e.g. "F32", "I8"), shape and raw
/// little-endian bytes (`data`, `nbytes`: borrowed, e.g. from a mapped input file, or `owned`).
struct TensorOut {
  std::string name, dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::vector<uint8_t> owned;  // when non-empty, the bytes (data/nbytes are ignored)

  const uint8_t* bytes() const { return owned.empty() ? data : owned.data(); }
  size_t size() const { return owned.empty() ? nbytes : owned.size(); }
};

/// The whole file of `tensors` (names unique) and `metadata`, in the canonical form above.
inline std::vector<uint8_t> safetensors_bytes(const std::vector<TensorOut>& tensors,
                                              const std::map<std::string, std::string>& metadata) {
  std::map<std::string, const TensorOut*> sorted;
  for (const TensorOut& t : tensors) {
    if (!sorted.emplace(t.name, &t).second) throw Error("tensor '" + t.name + "' given twice");
  }
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& kv : metadata) meta[kv.first] = kv.second;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const auto& kv : sorted) {
    const uint64_t end = offset + kv.second->size();
    header[kv.first] = {
        {"dtype", kv.second->dtype}, {"shape", kv.second->shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text = header.dump(-1, ' ', true);
  while ((8 + text.size()) % 64 != 0) text += ' ';
  std::vector<uint8_t> out(8 + text.size() + offset);
  const uint64_t len = text.size();
  for (int b = 0; b < 8; ++b) out[static_cast<size_t>(b)] = static_cast<uint8_t>(len >> (8 * b));
  std::memcpy(out.data() + 8, text.data(), text.size());
  uint8_t* p = out.data() + 8 + text.size();
  for (const auto& kv : sorted) {
    if (kv.second->size() > 0) std::memcpy(p, kv.second->bytes(), kv.second->size());
    p += kv.second->size();
  }
  return out;
}

/// Writes `bytes` to `path` as a whole or not at all: into a temporary file beside it, flushed,
/// then renamed over `path` (a reader that has the old file mapped keeps its bytes).
inline void write_file_atomically(const std::string& path, const std::vector<uint8_t>& bytes) {
#if defined(__unix__) || defined(__APPLE__)
  const std::string part = path + ".part" + std::to_string(::getpid());
#else
  const std::string part = path + ".part";
#endif
  {
    std::ofstream os(part, std::ios::binary | std::ios::trunc);
    if (!os) throw Error("cannot open '" + part + "' for writing");
    os.write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
    if (!os.flush()) {
      os.close();
      std::remove(part.c_str());
      throw Error("error writing '" + part + "' (disk full?)");
    }
  }
  if (std::rename(part.c_str(), path.c_str()) != 0) {
    std::remove(part.c_str());
    throw Error("cannot rename '" + part + "' to '" + path + "'");
  }
}

}  // namespace TCONST_ABI
}  // namespace tconst
