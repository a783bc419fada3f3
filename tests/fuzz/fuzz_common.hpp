// Shared by the libFuzzer targets and by make_corpus.cpp, which writes their seed corpus.
//
// A fuzz target may only let tconst::Error escape into its catch: anything else (another
// exception, a sanitizer report, an abort from a violated invariant) is a crash that libFuzzer
// reports. TCONST_FUZZ_CHECK is the harness's own assertion: it aborts even under NDEBUG.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "tconst/tconst.hpp"

namespace tconst_fuzz {

[[noreturn]] inline void fail(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: fuzz invariant violated: %s\n", file, line, what);
  std::abort();
}
#define TCONST_FUZZ_CHECK(cond) ((cond) ? (void)0 : ::tconst_fuzz::fail(#cond, __FILE__, __LINE__))

/// A file name that no other process uses, in memory (/dev/shm) where there is one: a fuzz target
/// that writes a file per input would otherwise wait on the disk.
inline std::string temp_path(const std::string& name) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path dir = fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0
                           ? fs::path("/dev/shm")
                           : fs::temp_directory_path();
  return (dir / ("tconst_fuzz_" + std::to_string(::getpid()) + "_" + name)).string();
}

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  const std::string s = tconst::read_file(path);
  return std::vector<uint8_t>(s.begin(), s.end());
}

/// The bytes of a random model of this shape, as tests/support writes it.
inline std::vector<uint8_t> model_bytes(const tconst_test::RefShape& shape, uint64_t seed,
                                        const std::string& dtype = "F32") {
  const std::string path = temp_path("model_" + shape.arch + ".safetensors");
  tconst_test::write_model(tconst_test::make_random_model(shape, seed), path, dtype);
  std::vector<uint8_t> bytes = read_bytes(path);
  std::remove(path.c_str());
  return bytes;
}

/// The models of fuzz_snapshot (and of its seed snapshots): one per architecture, small but with
/// two blocks and a hidden layer so that a restored session exercises every code path.
inline const tconst_test::RefShape kSnapshotShapes[] = {
    {"tconstformer", 8, 4, 1, 2, 3, 2, 3, 4},
    {"tlinformer", 8, 4, 1, 2, 3, 2, 3, 4},
    {"transformer", 8, 4, 1, 2, 0, 0, 0, 4},
};
constexpr uint64_t kSnapshotSeed = 7;

/// The seed models of fuzz_model: the smallest of each architecture (a few KB).
inline const tconst_test::RefShape kTinyShapes[] = {
    {"tconstformer", 8, 4, 1, 1, 2, 2, 2, 4},
    {"tlinformer", 8, 4, 1, 1, 2, 2, 2, 4},
    {"transformer", 8, 4, 1, 1, 0, 0, 0, 4},
};

}  // namespace tconst_fuzz
