// Sessions of compute bf16 and int8 (SPEC §6.3): streaming logits against the naive forward run
// with the same roundings, across several resyncs and for every architecture; a file converted
// at load against the same file converted beforehand; snapshots tied to their compute; the same
// bits on any thread count; misuse that is an error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "support/errors.hpp"
#include "support/naive_forward.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "support/tokens.hpp"
#include "tconst/batch.hpp"
#include "tconst/model/quantize.hpp"
#include "tconst/tconst.hpp"

namespace {

using tconst::Compute;
using tconst_test::max_abs_diff;
using tconst_test::random_tokens;
using tconst_test::RefModel;
using tconst_test::RefShape;
using tconst_test::temp_path;
namespace naive = tconst_test::naive;

struct Case {
  const char* name;
  RefShape shape;
};

// Widths below, at and above one Q8 block of 32 (partial blocks), several resyncs.
const Case kCases[] = {
    {"tconst_D3_B2_d40", {"tconstformer", 37, 40, 4, 2, 3, 4, 3, 72}},
    {"tconst_D2_B1_d12", {"tconstformer", 31, 12, 2, 1, 2, 4, 4, 20}},
    {"tconst_D4_B2_d64_untied", {"tconstformer", 29, 64, 4, 2, 4, 5, 5, 96, false}},
    {"tlin_D3_B2_d24", {"tlinformer", 19, 24, 2, 2, 3, 4, 3, 40}},
    {"transformer_B2_d32", {"transformer", 27, 32, 2, 2, 0, 0, 0, 48}},
};

int stream_length(const RefShape& s) {
  return s.arch == "transformer" ? 23 : 5 * s.W + 2;
}

// The value the Q8 reference quantizer (SPEC §6.1) gives each weight of a row-major matrix with
// `cols` columns: s * q, s = max|w| / 127 per block of `block`, q = round(w / s), in float32.
void q8_values(std::vector<double>& w, int cols, int block) {
  for (size_t r0 = 0; r0 < w.size(); r0 += static_cast<size_t>(cols)) {
    for (int c0 = 0; c0 < cols; c0 += block) {
      const int c1 = std::min(cols, c0 + block);
      float amax = 0;
      for (int c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(static_cast<float>(w[r0 + c])));
      const float s = amax / 127.0f;
      for (int c = c0; c < c1; ++c) {
        const float q = s > 0 ? std::nearbyint(static_cast<float>(w[r0 + c]) / s) : 0.0f;
        w[r0 + c] = static_cast<double>(s * q);
      }
    }
  }
}

// `m` with every matrix as `compute` holds it: BF16-rounded, or Q8 with block `block`.
RefModel converted(RefModel m, Compute compute, int block) {
  auto convert = [&](std::vector<double>& w, int cols) {
    if (w.empty()) return;
    if (compute == Compute::bf16) {
      for (double& v : w) v = naive::round_to_bf16(static_cast<float>(v));
    } else {
      q8_values(w, cols, block);
    }
  };
  convert(m.embedding, m.d);
  convert(m.lm_head, m.d);
  for (auto& blk : m.blocks) {
    for (tconst_test::RefLayer& L : blk) {
      convert(L.qkv_w, m.d);
      convert(L.out_w, m.d);
      convert(L.w1, m.d);
      convert(L.w3, m.d);
      convert(L.w2, m.f);
    }
  }
  return m;
}

// The naive stream of `m` with the product inputs of `compute` (naive::product_inputs).
std::vector<std::vector<double>> naive_stream(const RefModel& m, const std::vector<int>& tokens,
                                              Compute compute, int block) {
  naive::ProductInputs& p = naive::product_inputs();
  p.mode = compute == Compute::bf16   ? naive::ProductInputs::bf16
           : compute == Compute::int8 ? naive::ProductInputs::int8
                                      : naive::ProductInputs::exact;
  p.block = block;
  auto out = tconst_test::naive_stream_logits(m, tokens);
  p = naive::ProductInputs{};
  return out;
}

tconst::SessionOptions with_compute(Compute c, int threads = 0) {
  tconst::SessionOptions o;
  o.compute = c;
  o.threads = threads;
  return o;
}

// The stream of a session of `compute` over the F32 file of `ref` against the naive forward
// with that compute's roundings. The naive forward rounds its double activations, the session its
// float ones: a value within float rounding of a rounding boundary can go either way (one BF16 or
// int8 step on one input), and that difference then flows on. So: at most a quarter of the
// positions may differ by more than float rounding `tol`, and none by half as much as the session
// differs from the f32 forward (which the roundings move it away from).
void check_stream(const Case& c, Compute compute, double tol) {
  const RefModel ref = tconst_test::make_random_model(c.shape, 77);
  const std::string path = temp_path(std::string(c.name) + "_compute.safetensors");
  tconst_test::write_model(ref, path, "F32");
  auto model = tconst::Model<float>::load(path);
  auto session = tconst::make_session(model, with_compute(compute));
  EXPECT_EQ(session->options().compute, compute);
  EXPECT_EQ(session->model().compute(), compute);
  const std::vector<int> tokens = random_tokens(stream_length(c.shape), c.shape.V, 5);
  const auto rounded = naive_stream(converted(ref, compute, 32), tokens, compute, 32);
  const auto exact = naive_stream(ref, tokens, Compute::f32, 32);
  double worst = 0, off = 0;
  size_t beyond = 0;
  for (size_t p = 0; p < tokens.size(); ++p) {
    const auto& logits = session->feed(tokens[p]);
    const double diff = max_abs_diff(logits, rounded[p]);
    worst = std::max(worst, diff);
    off = std::max(off, max_abs_diff(logits, exact[p]));
    if (diff > tol) ++beyond;
  }
  if (c.shape.arch != "transformer") {
    EXPECT_GE(session->resync_count(), 4);
  }
  EXPECT_LE(beyond * 4, tokens.size()) << beyond << " positions beyond " << tol;
  EXPECT_LT(worst * 2, off) << "the session is no closer to the rounded forward than to f32's";
  ::testing::Test::RecordProperty("max_abs_diff", std::to_string(worst));
}

class ComputeVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(ComputeVsReference, Bf16StreamEqualsTheRoundedForward) {
  check_stream(GetParam(), Compute::bf16, 1e-5);
}

TEST_P(ComputeVsReference, Int8StreamEqualsTheQuantizedForward) {
  check_stream(GetParam(), Compute::int8, 2e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ComputeVsReference, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

// `ref` written as F32 and re-written by quantize_model() in `format` (block for Q8).
std::string quantized_file(const RefModel& ref, const std::string& stem,
                           tconst::WeightFormat format, int64_t block) {
  const std::string f32 = temp_path(stem + "_f32.safetensors");
  tconst_test::write_model(ref, f32, "F32");
  tconst::QuantizeOptions o;
  o.format = format;
  o.block = block;
  const std::string out = temp_path(stem + "_" + tconst::to_string(format) + ".safetensors");
  tconst::write_file_atomically(out, tconst::quantize_model(tconst::SafetensorsFile::open(f32), o));
  return out;
}

// Logits of every position of `tokens` through a session of `compute` over the file at `path`.
std::vector<std::vector<float>> stream(const std::string& path, Compute compute,
                                       const std::vector<int>& tokens, int threads = 0) {
  auto session =
      tconst::make_session(tconst::Model<float>::load(path), with_compute(compute, threads));
  std::vector<std::vector<float>> out;
  for (int t : tokens) {
    const auto& l = session->feed(t);
    out.emplace_back(l.data(), l.data() + l.size());
  }
  return out;
}

TEST(ComputeConversion, AtLoadEqualsTheConvertedFile) {
  const RefModel ref = tconst_test::make_random_model(kCases[0].shape, 3);
  const std::vector<int> tokens = random_tokens(3 * kCases[0].shape.W + 1, kCases[0].shape.V, 8);
  const std::string f32 = temp_path("conv_f32.safetensors");
  tconst_test::write_model(ref, f32, "F32");
  // bf16 over an F32 file is bf16 over the file's BF16 version; int8 is int8 over its Q8 version
  // with the reference quantizer's default block, 32.
  EXPECT_EQ(
      stream(f32, Compute::bf16, tokens),
      stream(quantized_file(ref, "conv", tconst::WeightFormat::bf16, 32), Compute::bf16, tokens));
  EXPECT_EQ(
      stream(f32, Compute::int8, tokens),
      stream(quantized_file(ref, "conv", tconst::WeightFormat::q8, 32), Compute::int8, tokens));
}

TEST(ComputeConversion, Int8OverAQ8FileUsesItsBlock) {
  const Case& c = kCases[0];
  const RefModel ref = tconst_test::make_random_model(c.shape, 4);
  const std::string q8 = quantized_file(ref, "block16", tconst::WeightFormat::q8, 16);
  const std::vector<int> tokens = random_tokens(3 * c.shape.W + 1, c.shape.V, 9);
  const auto expected = naive_stream(converted(ref, Compute::int8, 16), tokens, Compute::int8, 16);
  const auto got = stream(q8, Compute::int8, tokens);
  for (size_t p = 0; p < tokens.size(); ++p) {
    ASSERT_LE(max_abs_diff(got[p], expected[p]), 2e-3) << "position " << p;
  }
}

TEST(ComputeThreads, SameBitsOnAnyThreadCount) {
  const RefModel ref = tconst_test::make_random_model(kCases[2].shape, 6);
  const std::string path = temp_path("threads_compute.safetensors");
  tconst_test::write_model(ref, path, "F32");
  const std::vector<int> tokens = random_tokens(3 * kCases[2].shape.W + 2, kCases[2].shape.V, 1);
  for (Compute c : {Compute::bf16, Compute::int8}) {
    const auto one = stream(path, c, tokens, 1);
    for (int threads : {2, 3, 4}) {
      EXPECT_EQ(stream(path, c, tokens, threads), one)
          << tconst::to_string(c) << " on " << threads << " threads";
    }
  }
}

TEST(ComputeSessions, ShareOneConvertedModelThatOutlivesTheLoadedOne) {
  const std::string path = temp_path("share_compute.safetensors");
  tconst_test::write_model(tconst_test::make_random_model(kCases[1].shape, 2), path, "F32");
  auto model = tconst::Model<float>::load(path);
  EXPECT_EQ(tconst::Model<float>::for_compute(model, Compute::f32), model);
  auto a = tconst::make_session(model, with_compute(Compute::bf16));
  auto b = tconst::make_session(model, with_compute(Compute::bf16));
  auto f = tconst::make_session(model);
  EXPECT_EQ(&a->model(), &b->model());
  EXPECT_EQ(&f->model(), model.get());
  EXPECT_NE(&a->model(), model.get());
  EXPECT_EQ(a->model().identity(), model->identity());
  EXPECT_GT(a->model().converted_bytes(), 0u);
  const std::vector<int> tokens = random_tokens(20, kCases[1].shape.V, 3);
  std::vector<std::vector<float>> before;
  for (int t : tokens) {
    const auto& l = a->feed(t);
    before.emplace_back(l.data(), l.data() + l.size());
  }
  model.reset();  // the sessions keep what they use alive
  for (size_t i = 0; i < tokens.size(); ++i) {
    const auto& l = b->feed(tokens[i]);
    ASSERT_EQ(std::vector<float>(l.data(), l.data() + l.size()), before[i]) << i;
  }
}

TEST(ComputeSessions, StepsTogetherEqualEachAlone) {
  const Case& c = kCases[0];
  const std::string path = temp_path("batch_compute.safetensors");
  tconst_test::write_model(tconst_test::make_random_model(c.shape, 12), path, "F32");
  auto model = tconst::Model<float>::load(path);
  for (Compute compute : {Compute::bf16, Compute::int8}) {
    std::vector<std::unique_ptr<tconst::TConstSession<float>>> together, alone;
    for (int i = 0; i < 3; ++i) {
      together.push_back(
          std::make_unique<tconst::TConstSession<float>>(model, with_compute(compute)));
      alone.push_back(std::make_unique<tconst::TConstSession<float>>(model, with_compute(compute)));
    }
    tconst::StreamBatch<float> batch;
    for (int p = 0; p < 3 * c.shape.W + 1; ++p) {
      std::vector<tconst::TConstSession<float>*> ptrs;
      std::vector<int32_t> ids;
      for (int i = 0; i < 3; ++i) {
        ptrs.push_back(together[static_cast<size_t>(i)].get());
        ids.push_back((p * 7 + i * 5) % c.shape.V);
      }
      batch.feed(ptrs, ids);
      for (int i = 0; i < 3; ++i) {
        const auto& a = alone[static_cast<size_t>(i)]->feed(ids[static_cast<size_t>(i)]);
        const auto& t = together[static_cast<size_t>(i)]->logits();
        ASSERT_EQ(std::vector<float>(a.data(), a.data() + a.size()),
                  std::vector<float>(t.data(), t.data() + t.size()))
            << tconst::to_string(compute) << " stream " << i << " position " << p;
      }
    }
  }
}

TEST(ComputeSnapshots, RestoreOnlyIntoTheSameCompute) {
  const Case& c = kCases[1];
  const std::string path = temp_path("snap_compute.safetensors");
  tconst_test::write_model(tconst_test::make_random_model(c.shape, 21), path, "F32");
  auto model = tconst::Model<float>::load(path);
  const std::vector<int> tokens = random_tokens(2 * c.shape.W + 3, c.shape.V, 4);
  auto a = tconst::make_session(model, with_compute(Compute::bf16));
  for (size_t i = 0; i + 3 < tokens.size(); ++i) a->feed(tokens[i]);
  const std::string bytes = tconst::snapshot_bytes(*a);
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());

  auto b = tconst::make_session(model, with_compute(Compute::bf16));
  tconst::restore_snapshot(*b, data, bytes.size());
  for (size_t i = tokens.size() - 3; i < tokens.size(); ++i) {
    const auto& la = a->feed(tokens[i]);
    const std::vector<float> va(la.data(), la.data() + la.size());
    const auto& lb = b->feed(tokens[i]);
    ASSERT_EQ(std::vector<float>(lb.data(), lb.data() + lb.size()), va) << i;
  }
  auto f = tconst::make_session(model);
  tconst_test::expect_error(
      [&] { tconst::restore_snapshot(*f, data, bytes.size(), "s"); },
      {"snapshot 's'", "saved by a session of compute bf16", "restoring into one of compute f32"});
  EXPECT_EQ(f->position(), 0);
  auto i8 = tconst::make_session(model, with_compute(Compute::int8));
  tconst_test::expect_error([&] { tconst::restore_snapshot(*i8, data, bytes.size(), "s"); },
                            {"compute bf16, restoring into one of compute int8"});
  // An f32 session's snapshot keeps format version 1, which the library has always read.
  const std::string plain = tconst::snapshot_bytes(*f);
  EXPECT_EQ(static_cast<uint8_t>(plain[8]), 1);
  EXPECT_EQ(static_cast<uint8_t>(bytes[8]), 2);
}

TEST(ComputeErrors, ADoubleModelComputesInDouble) {
  const std::string path = temp_path("double_compute.safetensors");
  tconst_test::write_model(tconst_test::make_random_model(kCases[1].shape, 2), path, "F32");
  auto model = tconst::Model<double>::load(path);
  tconst_test::expect_error(
      [&] {
        tconst::SessionOptions o;
        o.compute = Compute::bf16;
        tconst::make_session(model, o);
      },
      {"compute bf16 needs a float model"});
  EXPECT_EQ(tconst::parse_compute("int8"), Compute::int8);
  tconst_test::expect_error([] { tconst::parse_compute("fp8"); }, {"unknown compute 'fp8'"});
}

TEST(ComputeErrors, AWeightThatCannotBeQuantizedIsNamed) {
  RefModel ref = tconst_test::make_random_model(kCases[1].shape, 2);
  ref.blocks[0][0].w2[3] = 1e39;  // infinite in float32
  const std::string path = temp_path("inf_compute.safetensors");
  tconst_test::write_model(ref, path, "F32");
  auto model = tconst::Model<float>::load(path);
  tconst_test::expect_error([&] { tconst::make_session(model, with_compute(Compute::int8)); },
                            {"cannot quantize a NaN or infinite weight to Q8"});
}

}  // namespace
