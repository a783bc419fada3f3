// Reduced-precision weights (SPEC §6.1): the reference quantizer; sessions of BF16 and Q8 models
// against the naive SPEC §4 forward run on the weights dequantized here, by the spec's formula,
// across several resyncs; quantize_model() copying what it does not quantize; and every malformed
// BF16/Q8 file rejected with a message that names the problem.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "support/compare.hpp"
#include "support/errors.hpp"
#include "support/naive_forward.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "support/tokens.hpp"
#include "tconst/model/quantize.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/model/weight_formats.hpp"
#include "tconst/tconst.hpp"

namespace {

using tconst::detail::WeightFormat;
using tconst_test::RawTensor;
using tconst_test::RefModel;
using tconst_test::RefShape;
using tconst_test::temp_path;

// ---------------------------------------------------------------------------------------------
// The reference quantizer.

TEST(Quantizer, Bf16RoundsToNearestEvenLikeAnIndependentConversion) {
  tconst_test::SplitMix64 rng(5);
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           1.0f,
                           -1.5f,
                           3.0e38f,
                           -3.4e38f,
                           1e-40f,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity()};
  // Exact ties: lower 16 bits 0x8000, with an even and an odd upper half.
  xs.push_back(tconst_test::bits_to_float(0x3f808000u));
  xs.push_back(tconst_test::bits_to_float(0x3f818000u));
  for (int i = 0; i < 100000; ++i) {
    xs.push_back(tconst_test::bits_to_float(static_cast<uint32_t>(rng.next())));
  }
  for (float x : xs) {
    const uint16_t got = tconst::float_to_bf16(x);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(tconst::detail::bf16_bits_to_float(got)));
      continue;
    }
    EXPECT_EQ(got, tconst_test::float_to_bf16_bits(x)) << std::hexfloat << x;
  }
  EXPECT_EQ(tconst::float_to_bf16(tconst_test::bits_to_float(0x3f808000u)), 0x3f80u);
  EXPECT_EQ(tconst::float_to_bf16(tconst_test::bits_to_float(0x3f818000u)), 0x3f82u);
}

TEST(Quantizer, Q8ScalesEachBlockByItsLargestMagnitude) {
  // Two rows of 40 columns in blocks of 16: blocks of 16, 16 and a partial 8.
  const int64_t R = 2, C = 40, B = 16, nb = 3;
  tconst_test::SplitMix64 rng(6);
  std::vector<float> w(static_cast<size_t>(R * C));
  for (float& v : w) v = static_cast<float>(rng.uniform01() * 2 - 1);
  for (int64_t c = 16; c < 32; ++c) w[static_cast<size_t>(C + c)] = 0.0f;  // an all-zero block
  w[5] = -2.5f;                                                            // block (0, 0)'s max
  std::vector<int8_t> q(w.size());
  std::vector<float> s(static_cast<size_t>(R * nb));
  tconst::quantize_q8(w.data(), R, C, B, q.data(), s.data());
  EXPECT_EQ(s[0], 2.5f / 127.0f);
  EXPECT_EQ(q[5], -127);
  EXPECT_EQ(s[4], 0.0f);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = static_cast<size_t>(r * C + c);
      const float scale = s[static_cast<size_t>(r * nb + c / B)];
      EXPECT_EQ(q[i], scale > 0 ? static_cast<int8_t>(std::nearbyint(w[i] / scale)) : 0);
      EXPECT_LE(std::fabs(scale * q[i] - w[i]), 0.5f * scale * (1 + 1e-6f) + 1e-30f);
    }
  }
  std::vector<float> bad = w;
  bad[3] = std::numeric_limits<float>::quiet_NaN();
  tconst_test::expect_error([&] { tconst::quantize_q8(bad.data(), R, C, B, q.data(), s.data()); },
                            {"NaN or infinite weight"});
}

// ---------------------------------------------------------------------------------------------
// Files.

// name -> the matrix of m it names, for every SPEC §6.1 matrix of m.
std::vector<std::pair<std::string, std::vector<double>*>> matrices(RefModel& m) {
  std::vector<std::pair<std::string, std::vector<double>*>> out = {
      {"embedding.weight", &m.embedding}};
  if (!m.lm_head.empty()) out.push_back({"transformer.lm_head.weight", &m.lm_head});
  for (size_t b = 0; b < m.blocks.size(); ++b) {
    for (size_t j = 0; j < m.blocks[b].size(); ++j) {
      const std::string P =
          tconst_test::model_layer_prefix(m, static_cast<int>(b), static_cast<int>(j));
      tconst_test::RefLayer& L = m.blocks[b][j];
      out.push_back({P + ".qkv_proj.weight", &L.qkv_w});
      out.push_back({P + ".out_proj.weight", &L.out_w});
      out.push_back({P + ".ffn.w1.weight", &L.w1});
      out.push_back({P + ".ffn.w3.weight", &L.w3});
      out.push_back({P + ".ffn.w2.weight", &L.w2});
    }
  }
  return out;
}

// The value of element i of tensor t by SPEC §6.1, written here from the spec (BF16: the upper
// half of a float32; Q8: one float32 product of the row's block scale and the integer).
double spec_value(const tconst::SafetensorsFile& f, const tconst::TensorInfo& t, int64_t i) {
  if (t.dtype_name == "F32") {
    float v;
    std::memcpy(&v, t.data + 4 * i, 4);
    return v;
  }
  if (t.dtype_name == "BF16") {
    uint16_t b;
    std::memcpy(&b, t.data + 2 * i, 2);
    return tconst_test::bf16_bits_to_float(b);
  }
  const int64_t block = std::stoll(f.metadata().at("tconst.q8_block"));
  const tconst::TensorInfo* s = f.find(t.name + ".q8_scale");
  const int64_t cols = t.shape[1], blocks = (cols + block - 1) / block;
  float scale;
  std::memcpy(&scale, s->data + 4 * ((i / cols) * blocks + (i % cols) / block), 4);
  const float q = static_cast<float>(static_cast<int8_t>(t.data[i]));
  return static_cast<double>(scale * q);
}

// m with every matrix replaced by the values the file at `path` stores for it.
RefModel dequantized(RefModel m, const std::string& path) {
  const tconst::SafetensorsFile f = tconst::SafetensorsFile::open(path);
  for (auto& kv : matrices(m)) {
    const tconst::TensorInfo* t = f.find(kv.first);
    for (int64_t i = 0; i < t->numel; ++i)
      (*kv.second)[static_cast<size_t>(i)] = spec_value(f, *t, i);
  }
  return m;
}

// `m` written as F32, then re-written by quantize_model() in `format`; returns the new file.
std::string quantized_file(const RefModel& m, const std::string& stem, WeightFormat format,
                           int64_t block = 16, std::set<std::string> keep = {}) {
  const std::string f32 = temp_path(stem + "_f32.safetensors");
  tconst_test::write_model(m, f32, "F32");
  tconst::QuantizeOptions o;
  o.format = format;
  o.block = block;
  o.keep = std::move(keep);
  const std::string out = temp_path(stem + "_" + tconst::to_string(format) + ".safetensors");
  tconst::write_file_atomically(out, tconst::quantize_model(tconst::SafetensorsFile::open(f32), o));
  return out;
}

struct Case {
  const char* name;
  RefShape shape;
  WeightFormat format;
  int64_t block;
};

// Several resyncs for each architecture; d = 32 and f = 40 give rows of two blocks of 16 and of
// two and a half, d = 8 and 12 a single partial block.
const Case kCases[] = {
    {"tconst_bf16", {"tconstformer", 37, 32, 4, 2, 3, 4, 3, 40}, WeightFormat::bf16, 0},
    {"tconst_q8_b16", {"tconstformer", 37, 32, 4, 2, 3, 4, 3, 40}, WeightFormat::q8, 16},
    {"tconst_q8_b32_untied",
     {"tconstformer", 29, 32, 2, 2, 4, 5, 5, 48, false},
     WeightFormat::q8,
     32},
    {"tconst_q8_small_d", {"tconstformer", 23, 8, 4, 2, 3, 4, 2, 16}, WeightFormat::q8, 16},
    {"tlin_bf16", {"tlinformer", 19, 12, 2, 2, 3, 4, 3, 20}, WeightFormat::bf16, 0},
    {"tlin_q8", {"tlinformer", 25, 32, 2, 2, 4, 3, 3, 40}, WeightFormat::q8, 16},
    {"transformer_bf16", {"transformer", 27, 12, 2, 3, 0, 0, 0, 20}, WeightFormat::bf16, 0},
    {"transformer_q8", {"transformer", 27, 32, 4, 2, 0, 0, 0, 40}, WeightFormat::q8, 16},
};

class QuantSession : public ::testing::TestWithParam<Case> {};

template <typename Scalar>
void check_stream(const Case& c, double tol) {
  const RefModel m = tconst_test::make_random_model(c.shape, 77);
  const std::string path = quantized_file(m, c.name, c.format, c.block ? c.block : 32);
  const RefModel ref = dequantized(m, path);
  auto model = tconst::Model<Scalar>::load(path);
  if constexpr (std::is_same_v<Scalar, float>) {
    // The float model reads the matrices in their format, in place.
    EXPECT_EQ(model->layer(0, 0).w2.format, c.format);
    EXPECT_EQ(model->embedding().format, c.format);
  }
  auto session = tconst::make_session(model);
  const int n = c.shape.arch == "transformer" ? 23 : 5 * c.shape.W + 2;
  const std::vector<int> tokens = tconst_test::random_tokens(n, c.shape.V, 41);
  const auto expected = tconst_test::naive_stream_logits(ref, tokens);
  for (size_t p = 0; p < tokens.size(); ++p) {
    ASSERT_LE(tconst_test::max_abs_diff(session->feed(tokens[p]), expected[p]), tol)
        << c.name << " at position " << p;
  }
  if (c.shape.arch != "transformer") {
    EXPECT_GE(session->resync_count(), 4);
  }
}

TEST_P(QuantSession, StreamingEqualsFullForwardOnDequantizedWeightsFloat) {
  check_stream<float>(GetParam(), 1e-4);
}

TEST_P(QuantSession, StreamingEqualsFullForwardOnDequantizedWeightsDouble) {
  check_stream<double>(GetParam(), 1e-9);
}

// A prefill of many rows takes the products' many-row path (and the GEMM's for F32 parts).
TEST_P(QuantSession, PrefillEqualsFullForwardOnDequantizedWeights) {
  const Case& c = GetParam();
  const RefModel m = tconst_test::make_random_model(c.shape, 78);
  const std::string path =
      quantized_file(m, std::string(c.name) + "_prefill", c.format, c.block ? c.block : 32);
  const RefModel ref = dequantized(m, path);
  auto session = tconst::make_session(tconst::Model<float>::load(path));
  const std::vector<int> tokens = tconst_test::random_tokens(40, c.shape.V, 42);
  const std::vector<int32_t> ids(tokens.begin(), tokens.end());
  const auto& logits = session->prefill(ids.data(), ids.size());
  EXPECT_LE(tconst_test::max_abs_diff(logits, tconst_test::naive_stream_logits(ref, tokens).back()),
            1e-4);
}

INSTANTIATE_TEST_SUITE_P(Cases, QuantSession, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

const RefShape kShape{"tconstformer", 23, 32, 4, 2, 3, 4, 2, 40};

TEST(QuantModel, FloatModelUsesBf16AndQ8InPlaceAndIdentityCoversTheFormat) {
  const RefModel m = tconst_test::make_random_model(kShape, 3);
  const std::string bf = quantized_file(m, "inplace", WeightFormat::bf16);
  const std::string q16 = quantized_file(m, "inplace16", WeightFormat::q8, 16);
  const std::string q32 = quantized_file(m, "inplace32", WeightFormat::q8, 32);
  const std::string f32 = temp_path("inplace_f32.safetensors");
  tconst_test::write_model(m, f32, "F32");
  const auto a = tconst::Model<float>::load(f32), b = tconst::Model<float>::load(bf),
             c = tconst::Model<float>::load(q16), d = tconst::Model<float>::load(q32);
  // Only the vectors (F32 in these files, in place too) and nothing else is converted.
  EXPECT_EQ(b->converted_bytes(), 0u);
  EXPECT_EQ(c->converted_bytes(), 0u);
  EXPECT_EQ(c->layer(1, 2).qkv_w.block, 16);
  EXPECT_EQ(d->layer(1, 2).qkv_w.block, 32);
  EXPECT_EQ(a->parameter_count(), c->parameter_count());  // scales are not parameters
  const std::set<uint64_t> ids = {a->identity(), b->identity(), c->identity(), d->identity()};
  EXPECT_EQ(ids.size(), 4u);
  EXPECT_EQ(c->identity(), tconst::Model<double>::load(q16)->identity());
}

TEST(QuantModel, QuantizeCopiesWhatItDoesNotQuantizeByteForByte) {
  const RefModel m = tconst_test::make_random_model(kShape, 4);
  auto tensors = tconst_test::model_tensors(m, "F32");
  // A stored RoPE buffer (ignored by the loader) and extra metadata must survive unchanged.
  tensors.push_back(
      RawTensor{"transformer.transformer_layers.0.compress_context_layer.rope.inv_freq",
                "F32",
                {2},
                tconst_test::encode_values({0.5, 0.25}, "F32")});
  auto meta = tconst_test::model_metadata(m);
  meta["tconst.tokenizer"] = "bytes";
  meta["x.note"] = "caf\xc3\xa9";
  const std::string in = temp_path("copy_in.safetensors");
  tconst_test::write_safetensors_file(in, tensors, meta);
  const std::string kept = "transformer.transformer_layers.1.hidden_layers.0.ffn.w2.weight";
  tconst::QuantizeOptions o;
  o.keep = {kept};
  const tconst::SafetensorsFile src = tconst::SafetensorsFile::open(in);
  const tconst::SafetensorsFile out =
      tconst::SafetensorsFile::from_bytes(tconst::quantize_model(src, o), "out");
  for (const auto& kv : src.tensors()) {
    const tconst::TensorInfo& a = kv.second;
    const tconst::TensorInfo* b = out.find(kv.first);
    ASSERT_NE(b, nullptr) << kv.first;
    const bool quantized = tconst::is_quantizable_matrix(kv.first) && kv.first != kept;
    EXPECT_EQ(b->dtype_name, quantized ? "I8" : a.dtype_name) << kv.first;
    EXPECT_EQ(b->shape, a.shape);
    EXPECT_EQ(out.find(kv.first + ".q8_scale") != nullptr, quantized) << kv.first;
    if (!quantized) {
      ASSERT_EQ(a.nbytes, b->nbytes);
      EXPECT_EQ(std::memcmp(a.data, b->data, a.nbytes), 0) << kv.first;
    }
  }
  auto want_meta = src.metadata();
  want_meta["tconst.q8_block"] = "32";
  EXPECT_EQ(out.metadata(), want_meta);
  EXPECT_NO_THROW(tconst::Model<float>::from_file(out));
}

TEST(QuantModel, QuantizeRejectsWhatItCannotDo) {
  const RefModel m = tconst_test::make_random_model(kShape, 5);
  const std::string q8 = quantized_file(m, "reject", WeightFormat::q8);  // writes reject_f32 too
  tconst::QuantizeOptions o;
  tconst_test::expect_error([&] { tconst::quantize_model(tconst::SafetensorsFile::open(q8), o); },
                            {"already has Q8 matrices"});
  const tconst::SafetensorsFile src =
      tconst::SafetensorsFile::open(temp_path("reject_f32.safetensors"));
  for (int64_t b : {8, 24, 512}) {
    o.block = b;
    tconst_test::expect_error([&] { tconst::quantize_model(src, o); },
                              {"block size " + std::to_string(b)});
  }
  o.block = 32;
  o.keep = {"transformer.norm.weight"};
  tconst_test::expect_error([&] { tconst::quantize_model(src, o); },
                            {"--keep 'transformer.norm.weight' is not a weight matrix"});
}

// ---------------------------------------------------------------------------------------------
// Malformed files.

// The tensors of a Q8 (or BF16) file of kShape, to edit.
struct Parts {
  std::vector<RawTensor> tensors;
  std::map<std::string, std::string> meta;

  RawTensor& get(const std::string& name) {
    for (RawTensor& t : tensors) {
      if (t.name == name) return t;
    }
    throw std::invalid_argument("no tensor " + name);
  }
  void remove(const std::string& name) {
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                 [&](const RawTensor& t) { return t.name == name; }),
                  tensors.end());
  }
};

Parts parts_of(WeightFormat format) {
  const RefModel m = tconst_test::make_random_model(kShape, 8);
  const std::string path = quantized_file(m, std::string("parts_") + to_string(format), format);
  const tconst::SafetensorsFile f = tconst::SafetensorsFile::open(path);
  Parts p;
  for (const auto& kv : f.tensors()) {
    const tconst::TensorInfo& t = kv.second;
    p.tensors.push_back(
        RawTensor{t.name, t.dtype_name, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
  }
  p.meta = f.metadata();
  return p;
}

// Both precisions reject the file with a message containing `problem` and the file's name.
void expect_rejected(const std::string& stem, const Parts& p, const std::string& problem) {
  SCOPED_TRACE(stem);
  const std::string path = temp_path(stem + ".safetensors");
  tconst_test::write_safetensors_file(path, p.tensors, p.meta);
  tconst_test::expect_error([&] { tconst::Model<float>::load(path); }, {path, problem});
  tconst_test::expect_error([&] { tconst::Model<double>::load(path); }, {path, problem});
}

const std::string kQkv = "transformer.transformer_layers.0.compress_context_layer.qkv_proj.weight";
const std::string kNorm = "transformer.transformer_layers.0.compress_context_layer.norm1.weight";

TEST(QuantModelRejects, AQ8MatrixWithoutItsScale) {
  Parts p = parts_of(WeightFormat::q8);
  p.remove(kQkv + ".q8_scale");
  expect_rejected("no_scale", p,
                  "Q8 tensor '" + kQkv + "' has no scale tensor '" + kQkv + ".q8_scale'");
}

TEST(QuantModelRejects, AScaleWithoutItsQ8Matrix) {
  Parts q8 = parts_of(WeightFormat::q8);
  Parts p = parts_of(WeightFormat::bf16);
  p.tensors.push_back(q8.get(kQkv + ".q8_scale"));
  expect_rejected("scale_of_bf16", p,
                  "scale tensor '" + kQkv + ".q8_scale' belongs to '" + kQkv + "', which is BF16");
  Parts s = parts_of(WeightFormat::q8);
  RawTensor stray = s.get(kQkv + ".q8_scale");
  stray.name = kNorm + ".q8_scale";
  s.tensors.push_back(stray);
  expect_rejected("scale_of_nothing", s,
                  "scale tensor '" + kNorm + ".q8_scale' has no Q8 matrix '" + kNorm + "'");
}

TEST(QuantModelRejects, AScaleOfTheWrongShapeOrDtype) {
  Parts p = parts_of(WeightFormat::q8);
  RawTensor& s = p.get(kQkv + ".q8_scale");  // [96, 2] at block 16
  s.shape = {96, 1};
  s.bytes.resize(96 * 4);
  expect_rejected("scale_shape", p,
                  "scale tensor '" + kQkv + ".q8_scale' has shape [96, 1], expected [96, 2]");
  Parts q = parts_of(WeightFormat::q8);
  RawTensor& t = q.get(kQkv + ".q8_scale");
  t.dtype = "F16";
  t.bytes.resize(t.bytes.size() / 2);
  expect_rejected("scale_dtype", q,
                  "scale tensor '" + kQkv + ".q8_scale' has dtype F16, expected F32");
  // The same scales read at another block size have the wrong shape.
  Parts b = parts_of(WeightFormat::q8);
  b.meta["tconst.q8_block"] = "32";
  expect_rejected("scale_block", b,
                  "scale tensor 'embedding.weight.q8_scale' has shape [23, 2], expected [23, 1] "
                  "(block 32)");
}

TEST(QuantModelRejects, AMissingOrInvalidBlockSize) {
  Parts p = parts_of(WeightFormat::q8);
  p.meta.erase("tconst.q8_block");
  expect_rejected("block_missing", p, "metadata 'tconst.q8_block' is missing");
  for (const char* text : {"", "8", "48", "512", "abc", "16.0", "-16", "00016x"}) {
    const std::string v = text;
    Parts q = parts_of(WeightFormat::q8);
    q.meta["tconst.q8_block"] = v;
    expect_rejected("block_" + std::to_string(v.size()), q,
                    "metadata 'tconst.q8_block' is '" + v + "', expected a power of two");
  }
  Parts bf = parts_of(WeightFormat::bf16);
  bf.meta["tconst.q8_block"] = "32";
  expect_rejected("block_without_q8", bf, "'tconst.q8_block' is given but no tensor is I8");
}

TEST(QuantModelRejects, ANaNOrInfiniteScale) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    Parts p = parts_of(WeightFormat::q8);
    RawTensor& s = p.get(kQkv + ".q8_scale");
    std::memcpy(s.bytes.data() + 4 * (7 * 2 + 1), &bad, 4);  // [7, 1]
    expect_rejected("scale_nan", p,
                    "scale tensor '" + kQkv + ".q8_scale' has a NaN or infinite value at [7, 1]");
  }
}

TEST(QuantModelRejects, I8WhereNoQ8MatrixMayBe) {
  Parts p = parts_of(WeightFormat::q8);
  RawTensor& n = p.get(kNorm);
  n.dtype = "I8";
  n.bytes.resize(n.bytes.size() / 4);
  expect_rejected("i8_norm", p, "tensor '" + kNorm + "' is I8, but only the 2-D weight matrices");
  Parts q = parts_of(WeightFormat::q8);
  q.tensors.push_back(RawTensor{"extra.weight", "I8", {2, 2}, {1, 2, 3, 4}});
  expect_rejected("i8_extra", q, "tensor 'extra.weight' is I8, but only the 2-D weight matrices");
}

}  // namespace
