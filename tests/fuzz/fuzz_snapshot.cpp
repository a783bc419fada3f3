// libFuzzer target: arbitrary bytes as a session snapshot file (tconst::load_session), restored
// into sessions of three tiny fixed models (TConstFormer, TLinFormer, baseline) built here once.
//
// Each input is tried as is (exercising the framing: magic, version, lengths, checksum, model
// identity) and, so that mutations get past the checksum, once per model with the identity and
// the checksum patched to match (exercising each session's read_state). Invariants:
//   * a failed restore leaves the session's state byte for byte as it was;
//   * a successful one holds exactly the restored state (write_state gives the same bytes back),
//     and the session then accepts more tokens.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.hpp"

namespace {

using Model = tconst::Model<float>;

std::string state_of(const tconst::Session<float>& s) {
  std::string out;
  s.write_state(out);
  return out;
}

// One session per model, kept across inputs (a fresh one per input would spend most of the time
// growing the resync's buffers), reset before every restore to a state of three tokens (past a
// resync) that a failed restore must keep.
struct Fixture {
  std::vector<std::shared_ptr<const Model>> models;
  std::vector<std::unique_ptr<tconst::Session<float>>> sessions;
  std::vector<std::string> base_states;
  std::string path = tconst_fuzz::temp_path("input.snap");

  Fixture() {
    for (const auto& shape : tconst_fuzz::kSnapshotShapes) {
      models.push_back(
          Model::load_from_bytes(tconst_fuzz::model_bytes(shape, tconst_fuzz::kSnapshotSeed)));
      sessions.push_back(tconst::make_session(models.back()));
      for (int32_t t : {1, 2, 3}) sessions.back()->feed(t % shape.V);
      base_states.push_back(state_of(*sessions.back()));
    }
  }
  ~Fixture() { std::remove(path.c_str()); }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::remove(path.c_str());  // a new file, not a truncated one (ext4 flushes those on close)
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  TCONST_FUZZ_CHECK(static_cast<bool>(out));
}

constexpr size_t kHeader = 8 + 4 + 4 + 8 + 8;  // magic, version, scalar size, identity, length

// Restores the file f.path, which holds `bytes`, into session k.
void try_restore(size_t k, const std::vector<uint8_t>& bytes) {
  Fixture& f = fixture();
  tconst::Session<float>& s = *f.sessions[k];
  const std::string& before = f.base_states[k];
  s.read_state(reinterpret_cast<const uint8_t*>(before.data()), before.size());
  try {
    tconst::load_session(s, f.path);
  } catch (const tconst::Error&) {
    TCONST_FUZZ_CHECK(state_of(s) == before);
    TCONST_FUZZ_CHECK(s.position() == 3);
    return;
  }
  // Restored: the state is exactly the one in the file.
  TCONST_FUZZ_CHECK(bytes.size() >= kHeader + 8);
  const std::string restored = state_of(s);
  TCONST_FUZZ_CHECK(restored.size() == bytes.size() - kHeader - 8);
  TCONST_FUZZ_CHECK(std::memcmp(restored.data(), bytes.data() + kHeader, restored.size()) == 0);
  TCONST_FUZZ_CHECK(static_cast<int64_t>(s.tokens().size()) == s.position());
  const int32_t V = static_cast<int32_t>(s.model().config().vocab_size);
  if (s.position() + 2 <= s.options().max_context) {
    s.feed(0);
    s.feed(V - 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = fixture();
  std::vector<uint8_t> bytes(data, data + size);
  write_file(f.path, bytes.data(), bytes.size());
  for (size_t k = 0; k < f.models.size(); ++k) try_restore(k, bytes);
  if (size < kHeader + 8) return 0;
  for (size_t k = 0; k < f.models.size(); ++k) {
    const uint64_t identity = f.models[k]->identity();
    std::memcpy(bytes.data() + 16, &identity, 8);
    const uint64_t sum = tconst::detail::fnv1a(bytes.data(), size - 8);
    std::memcpy(bytes.data() + size - 8, &sum, 8);
    write_file(f.path, bytes.data(), bytes.size());
    try_restore(k, bytes);
  }
  return 0;
}
