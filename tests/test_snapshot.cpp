// Session snapshots: save and restore give identical continuations; bad snapshots are rejected
// with a clear error and leave the session untouched.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "tconst/tconst.hpp"

namespace {

using tconst_test::max_abs_diff;
using tconst_test::temp_path;
using tconst_test::write_file;
using ::testing::HasSubstr;

std::shared_ptr<const tconst::Model<double>> model_of(const tconst_test::RefShape& shape,
                                                      uint64_t seed, const std::string& name) {
  const std::string path = temp_path(name + ".safetensors");
  tconst_test::write_model(tconst_test::make_random_model(shape, seed), path, "F32");
  return tconst::Model<double>::load(path);
}

const tconst_test::RefShape kShapes[] = {
    {"tconstformer", 23, 16, 4, 2, 3, 4, 6, 24},
    {"tlinformer", 23, 16, 4, 2, 3, 4, 6, 24},
    {"transformer", 23, 16, 4, 3, 0, 0, 0, 24},
};

TEST(Snapshot, RestoreContinuesIdentically) {
  for (const auto& shape : kShapes) {
    auto model = model_of(shape, 5, shape.arch);
    for (int cut : {0, 1, 4, 9, 13}) {
      auto a = tconst::make_session(model);
      for (int p = 0; p < cut; ++p) a->feed((p * 7) % shape.V);
      const std::string path = temp_path(shape.arch + "_" + std::to_string(cut) + ".snap");
      tconst::save_session(*a, path);
      auto b = tconst::make_session(model);
      b->feed(1);  // some other state, to be replaced
      tconst::load_session(*b, path);
      EXPECT_EQ(b->position(), cut);
      EXPECT_EQ(b->tokens(), a->tokens());
      EXPECT_EQ(b->cache_bytes(), a->cache_bytes());
      for (int p = cut; p < cut + 11; ++p) {
        const tconst::Vector<double> la = a->feed((p * 5) % shape.V);
        const tconst::Vector<double>& lb = b->feed((p * 5) % shape.V);
        ASSERT_EQ(max_abs_diff(la, lb), 0.0) << shape.arch << " cut " << cut;
      }
    }
  }
}

// snapshot_bytes() is the file save_session() writes, and restore_snapshot() reads it back from
// memory with the file's checks.
TEST(Snapshot, BytesEqualTheFileAndRestoreFromMemory) {
  for (const auto& shape : kShapes) {
    auto model = model_of(shape, 9, shape.arch + "_bytes");
    auto a = tconst::make_session(model);
    for (int p = 0; p < 10; ++p) a->feed((p * 3) % shape.V);
    const std::string path = temp_path(shape.arch + "_bytes.snap");
    tconst::save_session(*a, path);
    std::ifstream in(path, std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string bytes = tconst::snapshot_bytes(*a);
    EXPECT_EQ(bytes, file) << shape.arch;

    auto b = tconst::make_session(model);
    tconst::restore_snapshot(*b, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    for (int p = 10; p < 17; ++p) {
      const tconst::Vector<double> la = a->feed((p * 5) % shape.V);
      ASSERT_EQ(max_abs_diff(la, b->feed((p * 5) % shape.V)), 0.0) << shape.arch;
    }
    std::string bad = bytes;
    bad[bad.size() / 2] ^= 1;
    auto c = tconst::make_session(model);
    try {
      tconst::restore_snapshot(*c, reinterpret_cast<const uint8_t*>(bad.data()), bad.size(),
                               "label");
      FAIL() << "a corrupted snapshot was accepted";
    } catch (const tconst::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("snapshot 'label': checksum mismatch"));
    }
    EXPECT_EQ(c->position(), 0);
  }
}

// The snapshot of a TConstFormer session grows only by its 4-byte-per-token log.
TEST(Snapshot, SizeGrowsOnlyByTheTokenLog) {
  auto model = model_of(kShapes[0], 5, "size");
  auto s = tconst::make_session(model);
  std::vector<size_t> sizes;
  for (int p = 1; p <= 40; ++p) {
    s->feed(p % 23);
    if (p % 4 == 0) {
      tconst::save_session(*s, temp_path("size.snap"));
      sizes.push_back(tconst::read_file(temp_path("size.snap")).size());
    }
  }
  for (size_t i = 1; i < sizes.size(); ++i) EXPECT_EQ(sizes[i] - sizes[i - 1], 16u);
}

class BadSnapshot : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = model_of(kShapes[0], 5, "bad");
    source_ = tconst::make_session(model_);
    for (int p = 0; p < 10; ++p) source_->feed(p % 23);
    tconst::save_session(*source_, temp_path("good.snap"));
    good_ = tconst::read_file(temp_path("good.snap"));
    target_ = tconst::make_session(model_);
    for (int p = 0; p < 6; ++p) target_->feed((p * 3) % 23);
    before_ = target_->logits();
  }
  void expect_rejected(const std::string& bytes, const std::string& message) {
    write_file(temp_path("bad.snap"), bytes);
    try {
      tconst::load_session(*target_, temp_path("bad.snap"));
      FAIL() << "accepted a bad snapshot; expected: " << message;
    } catch (const tconst::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(message));
    }
    EXPECT_EQ(target_->position(), 6);
    EXPECT_EQ(max_abs_diff(target_->logits(), before_), 0.0);
    // And it still streams as before.
    auto fresh = tconst::make_session(model_);
    for (int p = 0; p < 6; ++p) fresh->feed((p * 3) % 23);
    EXPECT_EQ(max_abs_diff(target_->feed(4), fresh->feed(4)), 0.0);
  }
  std::shared_ptr<const tconst::Model<double>> model_;
  std::unique_ptr<tconst::Session<double>> source_, target_;
  std::string good_;
  tconst::Vector<double> before_;
};

TEST_F(BadSnapshot, Truncated) {
  expect_rejected(good_.substr(0, good_.size() / 2), "truncated");
}
TEST_F(BadSnapshot, Empty) {
  expect_rejected("", "not a tconst session snapshot");
}
TEST_F(BadSnapshot, NotASnapshot) {
  expect_rejected(std::string(100, 'x'), "not a tconst");
}
TEST_F(BadSnapshot, Corrupted) {
  std::string b = good_;
  b[b.size() / 2] ^= 0x40;
  expect_rejected(b, "checksum");
}
TEST_F(BadSnapshot, FutureVersion) {
  std::string b = good_;
  b[8] = 7;  // version field
  expect_rejected(b, "newer");
}
TEST_F(BadSnapshot, DifferentModel) {
  auto other = model_of({"tconstformer", 23, 16, 4, 2, 3, 4, 5, 24}, 5, "other");
  auto s = tconst::make_session(other);
  s->feed(3);
  tconst::save_session(*s, temp_path("other.snap"));
  expect_rejected(tconst::read_file(temp_path("other.snap")), "different model");
}
TEST_F(BadSnapshot, MissingFile) {
  EXPECT_THROW(tconst::load_session(*target_, temp_path("does_not_exist.snap")), tconst::Error);
  EXPECT_EQ(target_->position(), 6);
}

TEST(Snapshot, FloatSnapshotIntoDoubleIsRejected) {
  const std::string path = temp_path("prec.safetensors");
  tconst_test::write_model(tconst_test::make_random_model(kShapes[0], 5), path, "F32");
  auto f = tconst::make_session(tconst::Model<float>::load(path));
  f->feed(1);
  tconst::save_session(*f, temp_path("prec.snap"));
  auto d = tconst::make_session(tconst::Model<double>::load(path));
  EXPECT_THROW(tconst::load_session(*d, temp_path("prec.snap")), tconst::Error);
}

// Saving over an existing snapshot never leaves a half-written file behind.
TEST(Snapshot, SaveReplacesAtomically) {
  auto model = model_of(kShapes[0], 5, "atomic");
  auto s = tconst::make_session(model);
  s->feed(2);
  tconst::save_session(*s, temp_path("atomic.snap"));
  s->feed(3);
  tconst::save_session(*s, temp_path("atomic.snap"));
  std::ifstream probe(temp_path("atomic.snap.tmp"));
  EXPECT_FALSE(probe.good());
  auto r = tconst::make_session(model);
  tconst::load_session(*r, temp_path("atomic.snap"));
  EXPECT_EQ(r->position(), 2);
}

}  // namespace
