// Model loading (SPEC §6). Every kind of bad model file is written here and must be rejected with
// a tconst::Error that names the file and the problem, by Model<float> and Model<double>, from a
// file and from bytes, never with a crash or another exception. Good files load in every dtype,
// with exactly the stored values, in both scalar types.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "tconst/config.hpp"
#include "tconst/error.hpp"
#include "tconst/model.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/model/weight_formats.hpp"

namespace {

using nlohmann::json;
using tconst_test::RawTensor;
using tconst_test::RefLayer;
using tconst_test::RefModel;
using tconst_test::RefShape;
using tconst_test::temp_path;
using Meta = std::map<std::string, std::string>;
using Strings = std::vector<std::string>;

// B = 2 blocks of D = 3 layers (one hidden layer each), dh = 4.
const RefShape kTConst{"tconstformer", 11, 8, 2, 2, 3, 4, 3, 12};
const RefShape kTLin{"tlinformer", 13, 8, 2, 1, 2, 3, 5, 12};
const RefShape kBaseline{"transformer", 9, 8, 2, 3, 0, 0, 0, 12};

const char kCompress0[] = "transformer.transformer_layers.0.compress_context_layer";
const char kHidden1[] = "transformer.transformer_layers.1.hidden_layers.0";
const char kRestore1[] = "transformer.transformer_layers.1.restore_context_shape_layer";

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string WriteBytes(const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string path = temp_path(name + ".safetensors");
  tconst_test::write_file(
      path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  return path;
}

// The parts of a well-formed file, to be edited into a bad one.
struct Parts {
  std::vector<RawTensor> tensors;
  Meta meta;

  RawTensor& Get(const std::string& name) {
    for (RawTensor& t : tensors) {
      if (t.name == name) return t;
    }
    throw std::invalid_argument("no tensor '" + name + "'");
  }
  void Remove(const std::string& name) {
    const size_t before = tensors.size();
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                 [&](const RawTensor& t) { return t.name == name; }),
                  tensors.end());
    if (tensors.size() == before) throw std::invalid_argument("no tensor '" + name + "'");
  }
  json Header() const { return tconst_test::safetensors_header(tensors, meta); }
  std::vector<uint8_t> Data() const { return tconst_test::concat_tensor_bytes(tensors); }
};

Parts GoodParts(const RefShape& shape = kTConst, const std::string& dtype = "F32") {
  const RefModel m = tconst_test::make_random_model(shape, 7);
  return {tconst_test::model_tensors(m, dtype), tconst_test::model_metadata(m)};
}

size_t ElementSize(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  return 1;  // I8, U8, BOOL, F8_*
}

// Gives the tensor a new shape (and dtype) with zero bytes of the matching length, so that only
// the shape (or dtype) is wrong and the container stays consistent.
void Reshape(Parts& p, const std::string& name, const std::vector<int64_t>& shape,
             const std::string& dtype = "") {
  RawTensor& t = p.Get(name);
  if (!dtype.empty()) t.dtype = dtype;
  size_t n = 1;
  for (int64_t s : shape) n *= static_cast<size_t>(s);
  t.shape = shape;
  t.bytes.assign(n * ElementSize(t.dtype), 0);
}

int64_t NumelSum(const std::vector<RawTensor>& tensors) {
  int64_t n = 0;
  for (const RawTensor& t : tensors) {
    int64_t k = 1;
    for (int64_t s : t.shape) k *= s;
    n += k;
  }
  return n;
}

std::string WriteParts(const std::string& name, const Parts& p) {
  const std::string path = temp_path(name + ".safetensors");
  tconst_test::write_safetensors_file(path, p.tensors, p.meta);
  return path;
}

std::string WriteText(const std::string& name, const std::string& header_text,
                      const std::vector<uint8_t>& data) {
  const std::string path = temp_path(name + ".safetensors");
  tconst_test::write_raw_file(path, header_text, data);
  return path;
}

std::string WriteHeader(const std::string& name, const json& header,
                        const std::vector<uint8_t>& data) {
  return WriteText(name, header.dump(), data);
}

// The message of the tconst::Error that loading throws; a test failure (and "") when the load
// succeeds or throws anything else.
template <typename Scalar>
std::string LoadError(const std::string& path, bool from_bytes) {
  try {
    if (from_bytes) {
      tconst::Model<Scalar>::load_from_bytes(ReadBytes(path), path);
    } else {
      tconst::Model<Scalar>::load(path);
    }
  } catch (const tconst::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-tconst::Error exception: " << e.what();
    return "";
  } catch (...) {
    ADD_FAILURE() << "threw something that is not a std::exception";
    return "";
  }
  ADD_FAILURE() << "loaded, but should have been rejected";
  return "";
}

::testing::AssertionResult HasSubstrFormat(const char* message_expr, const char* part_expr,
                                           const std::string& message, const std::string& part) {
  if (message.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << message_expr << " = \"" << message << "\" does not contain " << part_expr << " = \""
         << part << "\"";
}

#define EXPECT_HAS_SUBSTR(message, part) EXPECT_PRED_FORMAT2(HasSubstrFormat, message, part)

// Rejected by Model<float> and Model<double>, from the file and from its bytes, each time with a
// message that names the file and contains `problem`.
void ExpectRejected(const std::string& path, const std::string& problem) {
  for (bool from_bytes : {false, true}) {
    SCOPED_TRACE(from_bytes ? "load_from_bytes" : "load");
    for (const std::string& message :
         {LoadError<float>(path, from_bytes), LoadError<double>(path, from_bytes)}) {
      EXPECT_HAS_SUBSTR(message, problem);
      EXPECT_HAS_SUBSTR(message, "invalid model file '" + path + "'");
    }
  }
}

// SCOPED_TRACE reports the line of the case that failed. `path` is evaluated once.
#define EXPECT_REJECTED(path, problem)             \
  do {                                             \
    const std::string tconst_rejected_path = path; \
    SCOPED_TRACE(tconst_rejected_path);            \
    ExpectRejected(tconst_rejected_path, problem); \
  } while (0)

// ---------------------------------------------------------------------------------------------
// The container: file, header length, JSON header, tensor entries, ranges.

TEST(LoaderTest, RejectsMissingFile) {
  const std::string path = temp_path("does_not_exist.safetensors");
  std::filesystem::remove(path);
  for (const std::string& message :
       {LoadError<float>(path, false), LoadError<double>(path, false)}) {
    EXPECT_HAS_SUBSTR(message, "cannot open model file '" + path + "'");
    EXPECT_HAS_SUBSTR(message, "No such file");
  }
}

TEST(LoaderTest, RejectsDirectory) {
  const std::string path = temp_path("a_directory.safetensors");
  std::filesystem::remove_all(path);
  std::filesystem::create_directories(path);
  for (const std::string& message :
       {LoadError<float>(path, false), LoadError<double>(path, false)}) {
    EXPECT_HAS_SUBSTR(message, "model path '" + path + "' is not a regular file");
  }
}

TEST(LoaderTest, RejectsEmptyFile) {
  EXPECT_REJECTED(WriteBytes("empty", {}), "truncated: 0 bytes");
}

TEST(LoaderTest, RejectsFileShorterThanTheHeaderLength) {
  const std::vector<uint8_t> good = ReadBytes(WriteParts("short_src", GoodParts()));
  for (size_t n = 1; n < 8; ++n) {
    const std::vector<uint8_t> prefix(good.begin(), good.begin() + static_cast<long>(n));
    EXPECT_REJECTED(WriteBytes("short_" + std::to_string(n), prefix),
                    "truncated: " + std::to_string(n) + " bytes, no room for the header length");
  }
}

TEST(LoaderTest, RejectsHeaderLengthBeyondTheFile) {
  const Parts p = GoodParts();
  const std::vector<uint8_t> good = ReadBytes(WriteParts("hdrlen_src", p));
  // Cut inside the JSON header.
  const std::vector<uint8_t> cut(good.begin(), good.begin() + 8 + 100);
  EXPECT_REJECTED(WriteBytes("hdrlen_cut", cut), "exceeds the 100 bytes after it");
  // Only the length field.
  std::vector<uint8_t> only_length = {16, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_REJECTED(WriteBytes("hdrlen_only", only_length),
                  "truncated: header length 16 exceeds the 0 bytes after it");
  // One byte more than the whole file holds, and the largest possible length.
  std::vector<uint8_t> plus_one = good;
  uint64_t n = good.size() - 8 + 1;
  for (int b = 0; b < 8; ++b) plus_one[b] = static_cast<uint8_t>(n >> (8 * b));
  EXPECT_REJECTED(WriteBytes("hdrlen_plus_one", plus_one),
                  "header length " + std::to_string(n) + " exceeds");
  std::vector<uint8_t> huge = good;
  for (int b = 0; b < 8; ++b) huge[b] = 0xff;
  EXPECT_REJECTED(WriteBytes("hdrlen_huge", huge), "header length 18446744073709551615 exceeds");
}

TEST(LoaderTest, RejectsTruncatedDataSection) {
  const Parts p = GoodParts();
  const std::string text = p.Header().dump();
  const std::vector<uint8_t> data = p.Data();
  const std::vector<uint8_t> short_by_one(data.begin(), data.end() - 1);
  EXPECT_REJECTED(WriteText("trunc_data_1", text, short_by_one), "out of bounds of the");
  EXPECT_REJECTED(WriteText("trunc_data_1b", text, short_by_one), "(file truncated?)");
  EXPECT_REJECTED(WriteText("trunc_data_all", text, {}),
                  "out of bounds of the 0-byte data section");
  // A complete file in which one tensor's range points past the end.
  json h = p.Header();
  const uint64_t size = data.size();
  h["transformer.norm.bias"]["data_offsets"] = {size - 16, size + 16};
  EXPECT_REJECTED(WriteHeader("range_past_end", h, data),
                  "tensor 'transformer.norm.bias' data range [" + std::to_string(size - 16) + ", " +
                      std::to_string(size + 16) + ") is out of bounds");
}

TEST(LoaderTest, RejectsMalformedJson) {
  const std::vector<std::string> texts = {
      "",                                                 // header length 0
      "{\"a\": ",                                         // cut off
      "{\"__metadata__\": {\"tconst.format\": \"1\"},}",  // trailing comma
      "not json at all",
      std::string("{\"\xff\xfe\": 1}"),  // invalid UTF-8
      std::string("{}\0\0\0\0\0\0", 8),  // NUL padding is not JSON whitespace
      std::string("{}\0garbage", 10),    // nor does JSON end at one
      "{} {}",                           // two values
  };
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_REJECTED(WriteText("json_" + std::to_string(i), texts[i], {}), "malformed JSON header");
  }
}

TEST(LoaderTest, RejectsHeaderThatIsNotAnObject) {
  const std::vector<std::string> texts = {"[]", "42", "\"text\"", "null", "true", "[{}]"};
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_REJECTED(WriteText("not_object_" + std::to_string(i), texts[i], {}),
                    "JSON header is not an object");
  }
}

TEST(LoaderTest, RejectsDeeplyNestedHeaderWithoutOverflowingTheStack) {
  // Deep enough to overflow an 8 MiB stack if parsing or destroying the JSON recursed; loaded
  // once each (not through EXPECT_REJECTED's four loads) to keep sanitizer runs short.
  const size_t depth = 100000;
  const std::string open(depth, '['), close(depth, ']');
  const std::string array = WriteText("nested_array", open + close, {});
  EXPECT_HAS_SUBSTR(LoadError<float>(array, false), "JSON header is not an object");
  const std::string entry = WriteText("nested_entry", "{\"x\": " + open + close + "}", {});
  EXPECT_HAS_SUBSTR(LoadError<float>(entry, false), "entry 'x' is not an object");
  const std::string unclosed = WriteText("nested_unclosed", open, {});
  EXPECT_HAS_SUBSTR(LoadError<double>(unclosed, true), "malformed JSON header");
}

TEST(LoaderTest, RejectsTensorEntryThatIsNotAnObject) {
  const Parts p = GoodParts();
  int i = 0;
  for (const json& bad : {json(5), json::array({1, 2}), json("F32"), json(nullptr)}) {
    json h = p.Header();
    h["embedding.weight"] = bad;
    EXPECT_REJECTED(WriteHeader("entry_" + std::to_string(i++), h, p.Data()),
                    "entry 'embedding.weight' is not an object");
  }
}

TEST(LoaderTest, RejectsTensorEntryWithoutDtype) {
  const Parts p = GoodParts();
  json h = p.Header();
  h["transformer.norm.weight"].erase("dtype");
  EXPECT_REJECTED(WriteHeader("no_dtype", h, p.Data()),
                  "tensor 'transformer.norm.weight' has no string dtype");
  int i = 0;
  for (const json& bad : {json(4), json(nullptr), json::array({"F32"})}) {
    h = p.Header();
    h["transformer.norm.weight"]["dtype"] = bad;
    EXPECT_REJECTED(WriteHeader("bad_dtype_" + std::to_string(i++), h, p.Data()),
                    "tensor 'transformer.norm.weight' has no string dtype");
  }
}

TEST(LoaderTest, RejectsTensorEntryWithoutShape) {
  const Parts p = GoodParts();
  json h = p.Header();
  h["embedding.weight"].erase("shape");
  EXPECT_REJECTED(WriteHeader("no_shape", h, p.Data()),
                  "tensor 'embedding.weight' has no shape array");
  int i = 0;
  for (const json& bad : {json(88), json("[11, 8]"), json::object()}) {
    h = p.Header();
    h["embedding.weight"]["shape"] = bad;
    EXPECT_REJECTED(WriteHeader("shape_not_array_" + std::to_string(i++), h, p.Data()),
                    "tensor 'embedding.weight' has no shape array");
  }
}

TEST(LoaderTest, RejectsShapeEntryThatIsNotANonNegativeInteger) {
  const Parts p = GoodParts();
  int i = 0;
  for (const json& bad : {json::array({-11, -8}), json::array({11.0, 8}), json::array({"11", 8}),
                          json::array({nullptr, 8}), json::array({json::array({11}), 8})}) {
    json h = p.Header();
    h["embedding.weight"]["shape"] = bad;
    EXPECT_REJECTED(
        WriteHeader("shape_entry_" + std::to_string(i++), h, p.Data()),
        "tensor 'embedding.weight' has a shape entry that is not a non-negative integer");
  }
}

TEST(LoaderTest, RejectsBadDataOffsets) {
  const Parts p = GoodParts();
  const std::string name = "transformer.norm.weight";
  const json good_offsets = p.Header()[name]["data_offsets"];
  const uint64_t begin = good_offsets[0].get<uint64_t>(), end = good_offsets[1].get<uint64_t>();
  auto write = [&](const std::string& file, const json* offsets) {
    json h = p.Header();
    if (offsets == nullptr) {
      h[name].erase("data_offsets");
    } else {
      h[name]["data_offsets"] = *offsets;
    }
    return WriteHeader(file, h, p.Data());
  };
  const std::string no_pair = "tensor '" + name + "' has no [begin, end] data_offsets";
  EXPECT_REJECTED(write("offsets_missing", nullptr), no_pair);
  int i = 0;
  for (const json& bad : {json(begin), json::array(), json::array({begin}),
                          json::array({begin, end, end}), json("[0, 32]"), json::object()}) {
    EXPECT_REJECTED(write("offsets_arity_" + std::to_string(i++), &bad), no_pair);
  }
  const std::string not_offset = "tensor '" + name + "' has a negative or non-integer offset";
  i = 0;
  for (const json& bad :
       {json::array({-32, 0}), json::array({begin, -1}), json::array({0.5, 32.5}),
        json::array({static_cast<double>(begin), static_cast<double>(end)}),
        json::array({std::to_string(begin), std::to_string(end)}), json::array({begin, nullptr}),
        json::parse("[0, 100000000000000000000000]")}) {
    EXPECT_REJECTED(write("offsets_value_" + std::to_string(i++), &bad), not_offset);
  }
  const json reversed = json::array({end, begin});
  EXPECT_REJECTED(write("offsets_reversed", &reversed),
                  "tensor '" + name + "' has data_offsets with begin > end");
}

TEST(LoaderTest, RejectsUnknownDtype) {
  const Parts p = GoodParts();
  for (const std::string& bad : Strings{"F128", "f32", "", "float32", "C64"}) {
    json h = p.Header();
    h["transformer.norm.weight"]["dtype"] = bad;
    EXPECT_REJECTED(WriteHeader("dtype_" + bad, h, p.Data()),
                    "tensor 'transformer.norm.weight' has unknown dtype '" + bad + "'");
  }
}

TEST(LoaderTest, RejectsByteLengthThatDoesNotMatchShapeAndDtype) {
  const Parts p = GoodParts();  // transformer.norm.weight: F32 [8], 32 bytes
  const std::string name = "transformer.norm.weight";
  const std::string problem = "tensor '" + name + "' byte length 32 does not match";
  json h = p.Header();
  h[name]["dtype"] = "F16";
  EXPECT_REJECTED(WriteHeader("len_f16", h, p.Data()), problem);
  h = p.Header();
  h[name]["dtype"] = "F64";
  EXPECT_REJECTED(WriteHeader("len_f64", h, p.Data()), problem);
  h = p.Header();
  h[name]["shape"] = json::array({9});
  EXPECT_REJECTED(WriteHeader("len_shape", h, p.Data()), problem);
  h = p.Header();
  h[name]["shape"] = json::array();  // a scalar: one element
  EXPECT_REJECTED(WriteHeader("len_scalar", h, p.Data()), problem);
  h = p.Header();
  const uint64_t begin = h[name]["data_offsets"][0].get<uint64_t>();
  h[name]["data_offsets"] = {begin, begin + 28};
  EXPECT_REJECTED(WriteHeader("len_short", h, p.Data()),
                  "tensor '" + name + "' byte length 28 does not match its shape and dtype");
}

TEST(LoaderTest, RejectsOverlappingTensorRanges) {
  const Parts p = GoodParts();
  const std::string problem = "have overlapping data ranges";
  // Two tensors on the very same bytes.
  json h = p.Header();
  h["transformer.norm.bias"]["data_offsets"] = h["transformer.norm.weight"]["data_offsets"];
  EXPECT_REJECTED(WriteHeader("overlap_same", h, p.Data()), problem);
  EXPECT_REJECTED(WriteHeader("overlap_same_names", h, p.Data()), "'transformer.norm.bias'");
  EXPECT_REJECTED(WriteHeader("overlap_same_names2", h, p.Data()), "'transformer.norm.weight'");
  // Partial overlap: one tensor shifted 4 bytes into its neighbour.
  h = p.Header();
  const uint64_t b = h["transformer.norm.bias"]["data_offsets"][0].get<uint64_t>();
  h["transformer.norm.bias"]["data_offsets"] = {b - 4, b + 28};
  EXPECT_REJECTED(WriteHeader("overlap_partial", h, p.Data()), problem);
  // A small tensor inside a large one's range.
  h = p.Header();
  const uint64_t e = h["embedding.weight"]["data_offsets"][0].get<uint64_t>();
  h["transformer.norm.bias"]["data_offsets"] = {e + 64, e + 96};
  EXPECT_REJECTED(WriteHeader("overlap_inside", h, p.Data()), problem);
}

TEST(LoaderTest, EmptyTensorRangesOverlapNothing) {
  // A zero-element tensor holds no bytes: at the start of, inside, or at the end of another's
  // range it is no overlap. (Such tensors must be ignored ones here: RoPE buffers.)
  const Parts p = GoodParts();
  json h = p.Header();
  const uint64_t size = p.Data().size();
  const uint64_t e = h["embedding.weight"]["data_offsets"][0].get<uint64_t>();
  const uint64_t n = h["transformer.norm.weight"]["data_offsets"][0].get<uint64_t>();
  int i = 0;
  for (uint64_t at : {e, e + 64, n, n + 4, size}) {
    h["empty" + std::to_string(i++) + ".rope.inv_freq"] = {
        {"dtype", "F32"}, {"shape", json::array({0})}, {"data_offsets", {at, at}}};
  }
  const std::string path = WriteHeader("empty_ranges", h, p.Data());
  EXPECT_EQ(tconst::Model<float>::load(path)->parameter_count(), NumelSum(p.tensors));
  // Past the end is still out of bounds, even when empty.
  h["late.rope.inv_freq"] = {
      {"dtype", "F32"}, {"shape", json::array({0})}, {"data_offsets", {size + 4, size + 4}}};
  EXPECT_REJECTED(WriteHeader("empty_range_past_end", h, p.Data()),
                  "tensor 'late.rope.inv_freq' data range [");
}

// ---------------------------------------------------------------------------------------------
// The model's tensors.

TEST(LoaderTest, RejectsMissingTensor) {
  const std::vector<std::string> names = {
      std::string(kHidden1) + ".out_proj.bias",
      "embedding.weight",
      "transformer.norm.weight",
      "transformer.norm.bias",
      std::string(kRestore1) + ".qkv_proj.weight",
      std::string(kCompress0) + ".ffn.w1.weight",  // where f is read from
      std::string(kCompress0) + ".ffn.w2.weight",
  };
  int i = 0;
  for (const std::string& name : names) {
    Parts p = GoodParts();
    p.Remove(name);
    EXPECT_REJECTED(WriteParts("missing_" + std::to_string(i++), p),
                    "missing tensor '" + name + "'");
  }
  Parts baseline = GoodParts(kBaseline);
  baseline.Remove("transformer.transformer_layers.2.norm2.bias");
  EXPECT_REJECTED(WriteParts("missing_baseline", baseline),
                  "missing tensor 'transformer.transformer_layers.2.norm2.bias'");
  Parts tlin = GoodParts(kTLin);  // D = 2: no hidden layer
  tlin.Remove("transformer.transformer_layers.0.restore_context_shape_layer.norm1.weight");
  EXPECT_REJECTED(WriteParts("missing_tlin", tlin),
                  "missing tensor "
                  "'transformer.transformer_layers.0.restore_context_shape_layer.norm1.weight'");
}

TEST(LoaderTest, RejectsShapeThatDisagreesWithTheMetadata) {
  const std::string qkv = std::string(kCompress0) + ".qkv_proj.weight";
  Parts p = GoodParts();
  Reshape(p, qkv, {8, 24});  // transposed
  EXPECT_REJECTED(WriteParts("shape_qkv_t", p),
                  "tensor '" + qkv + "' has shape [8, 24], expected [24, 8] from the metadata");
  p = GoodParts();
  Reshape(p, qkv, {16, 8});
  EXPECT_REJECTED(WriteParts("shape_qkv_2d", p), "tensor '" + qkv + "' has shape [16, 8]");
  p = GoodParts();
  Reshape(p, "embedding.weight", {12, 8});  // V + 1
  EXPECT_REJECTED(WriteParts("shape_embedding", p),
                  "tensor 'embedding.weight' has shape [12, 8], expected [11, 8]");
  p = GoodParts();
  p.meta["tconst.vocab_size"] = "12";  // the metadata disagrees instead
  EXPECT_REJECTED(WriteParts("shape_vocab_meta", p),
                  "tensor 'embedding.weight' has shape [11, 8], expected [12, 8]");
  p = GoodParts();
  p.meta["tconst.n_embd"] = "16";
  EXPECT_REJECTED(WriteParts("shape_embd_meta", p), "expected [11, 16]");
  p = GoodParts();
  Reshape(p, std::string(kHidden1) + ".ffn.w3.weight", {13, 8});  // f = 12 from the first w1
  EXPECT_REJECTED(WriteParts("shape_w3", p), "has shape [13, 8], expected [12, 8]");
  p = GoodParts();
  Reshape(p, std::string(kRestore1) + ".norm1.bias", {1, 8});
  EXPECT_REJECTED(WriteParts("shape_norm_2d", p), "has shape [1, 8], expected [8]");
  p = GoodParts();
  Reshape(p, "transformer.norm.weight", {});
  EXPECT_REJECTED(WriteParts("shape_norm_scalar", p), "has shape [], expected [8]");
  Parts untied = GoodParts({"tconstformer", 11, 8, 2, 2, 3, 4, 3, 12, false});
  Reshape(untied, "transformer.lm_head.weight", {11, 9});
  EXPECT_REJECTED(WriteParts("shape_lm_head", untied),
                  "tensor 'transformer.lm_head.weight' has shape [11, 9], expected [11, 8]");
  // The tensor that f is read from must itself be a matrix.
  const std::string w1 = std::string(kCompress0) + ".ffn.w1.weight";
  p = GoodParts();
  Reshape(p, w1, {96});
  EXPECT_REJECTED(WriteParts("shape_w1_1d", p), "tensor '" + w1 + "' has a 1-dimensional shape");
  p = GoodParts();
  Reshape(p, w1, {12, 8, 1});
  EXPECT_REJECTED(WriteParts("shape_w1_3d", p), "tensor '" + w1 + "' has a 3-dimensional shape");
  p = GoodParts();
  Reshape(p, w1, {0, 8});
  EXPECT_REJECTED(WriteParts("shape_w1_empty", p), "ffn hidden size must be positive, got 0");
}

TEST(LoaderTest, RejectsTensorsThatTheMetadataDoesNotDescribe) {
  Parts p = GoodParts();
  p.meta["tconst.n_block"] = "1";  // the file holds two blocks
  EXPECT_REJECTED(WriteParts("extra_block", p),
                  "unexpected tensor 'transformer.transformer_layers.1.");
  p = GoodParts();
  p.meta["tconst.block_inner_depth"] = "2";  // the file has a hidden layer per block
  EXPECT_REJECTED(WriteParts("extra_hidden", p),
                  "unexpected tensor 'transformer.transformer_layers.0.hidden_layers.0.");
  p = GoodParts();
  p.tensors.push_back(RawTensor{"transformer.stray.weight", "F32", {2}, std::vector<uint8_t>(8)});
  EXPECT_REJECTED(WriteParts("extra_stray", p), "unexpected tensor 'transformer.stray.weight'");
  Parts baseline = GoodParts(kBaseline);
  baseline.meta["tconst.n_block"] = "2";
  EXPECT_REJECTED(WriteParts("extra_baseline", baseline),
                  "unexpected tensor 'transformer.transformer_layers.2.");
}

TEST(LoaderTest, RejectsUnsupportedDtypeOfANeededTensor) {
  const std::string norm1 = std::string(kCompress0) + ".norm1.weight";
  const std::string out_b = std::string(kHidden1) + ".out_proj.bias";
  for (const std::string& dtype : Strings{"I32", "U32"}) {
    Parts p = GoodParts();
    p.Get(norm1).dtype = dtype;  // same element size: only the dtype is wrong
    EXPECT_REJECTED(WriteParts("dtype_norm1_" + dtype, p),
                    "tensor '" + norm1 + "' has unsupported dtype " + dtype);
  }
  for (const std::string& dtype : Strings{"U8", "I64", "BOOL", "F8_E4M3", "F8_E5M2", "I16"}) {
    Parts p = GoodParts();
    Reshape(p, out_b, {8}, dtype);
    EXPECT_REJECTED(WriteParts("dtype_out_b_" + dtype, p),
                    "tensor '" + out_b + "' has unsupported dtype " + dtype);
  }
  Parts p = GoodParts();
  Reshape(p, "embedding.weight", {11, 8}, "I8");
  // I8 is a matrix's Q8 format (SPEC §6.1), which needs the file's block size.
  EXPECT_REJECTED(WriteParts("dtype_embedding", p), "metadata 'tconst.q8_block' is missing");
}

TEST(LoaderTest, RejectsShapeWhoseElementCountOverflows) {
  const Parts p = GoodParts();
  const std::string name = "transformer.norm.weight";
  int i = 0;
  for (const json& shape : {json::array({int64_t{1} << 40, int64_t{1} << 40}),
                            json::array({int64_t{1} << 31, int64_t{1} << 31, int64_t{1} << 31}),
                            json::array({std::numeric_limits<int64_t>::max(), 2}),
                            json::array({2, 3, std::numeric_limits<int64_t>::max() / 4})}) {
    json h = p.Header();
    h[name]["shape"] = shape;
    EXPECT_REJECTED(WriteHeader("numel_" + std::to_string(i++), h, p.Data()),
                    "tensor '" + name + "' shape overflows");
  }
  // A zero dimension keeps the product at 0 whatever follows; then the byte length is wrong.
  json h = p.Header();
  h[name]["shape"] = json::array({0, std::numeric_limits<int64_t>::max(), 2});
  EXPECT_REJECTED(WriteHeader("numel_zero", h, p.Data()), "byte length 32 does not match");
  h = p.Header();
  h[name]["shape"] = json::array({int64_t{1} << 62});  // fits in int64, its byte length does not
  EXPECT_REJECTED(WriteHeader("numel_bytes", h, p.Data()), "byte length 32 does not match");
  h = p.Header();
  h[name]["shape"] = json::array({std::numeric_limits<uint64_t>::max()});
  EXPECT_REJECTED(WriteHeader("numel_u64", h, p.Data()),
                  "has a shape entry that is not a non-negative integer");
  h = p.Header();
  h[name]["shape"] = json::parse("[100000000000000000000000]");
  EXPECT_REJECTED(WriteHeader("numel_float", h, p.Data()),
                  "has a shape entry that is not a non-negative integer");
}

// ---------------------------------------------------------------------------------------------
// The metadata.

TEST(LoaderTest, RejectsMetadataThatIsNotAnObject) {
  const Parts p = GoodParts();
  int i = 0;
  for (const json& bad : {json::array({"tconst.format", "1"}), json("1"), json(1), json(nullptr)}) {
    json h = p.Header();
    h["__metadata__"] = bad;
    EXPECT_REJECTED(WriteHeader("meta_not_object_" + std::to_string(i++), h, p.Data()),
                    "__metadata__ is not an object");
  }
}

TEST(LoaderTest, RejectsMetadataValueThatIsNotAString) {
  const Parts p = GoodParts();
  int i = 0;
  for (const json& bad : {json(8), json(8.0), json(nullptr), json(true), json::array({"8"}),
                          json::object({{"v", "8"}})}) {
    json h = p.Header();
    h["__metadata__"]["tconst.n_embd"] = bad;
    EXPECT_REJECTED(WriteHeader("meta_value_" + std::to_string(i++), h, p.Data()),
                    "__metadata__ value of 'tconst.n_embd' is not a string");
  }
}

TEST(LoaderTest, RejectsMissingOrWrongFormatVersion) {
  Parts p = GoodParts();
  p.meta.erase("tconst.format");
  EXPECT_REJECTED(WriteParts("format_missing", p), "model metadata lacks tconst.format");
  p.meta.clear();  // no __metadata__ at all
  EXPECT_REJECTED(WriteParts("format_no_metadata", p), "model metadata lacks tconst.format");
  for (const std::string& bad : Strings{"2", "0", "1.0", "01", " 1", ""}) {
    p = GoodParts();
    p.meta["tconst.format"] = bad;
    EXPECT_REJECTED(WriteParts("format_" + std::to_string(bad.size()) + bad, p),
                    "unsupported model format version tconst.format = '" + bad + "'");
  }
}

TEST(LoaderTest, RejectsUnknownArchitecture) {
  for (const std::string& bad : Strings{"mamba", "TConstFormer", "", "tconstformer "}) {
    Parts p = GoodParts();
    p.meta["tconst.architecture"] = bad;
    EXPECT_REJECTED(WriteParts("arch_" + std::to_string(bad.size()), p),
                    "unknown architecture '" + bad + "'");
  }
  Parts p = GoodParts();
  p.meta.erase("tconst.architecture");
  EXPECT_REJECTED(WriteParts("arch_missing", p), "model metadata lacks tconst.architecture");
}

TEST(LoaderTest, RejectsMissingSizes) {
  for (const std::string& key :
       Strings{"tconst.vocab_size", "tconst.n_embd", "tconst.n_head", "tconst.n_block",
               "tconst.block_inner_depth", "tconst.history_window", "tconst.generate_window"}) {
    Parts p = GoodParts();
    p.meta.erase(key);
    EXPECT_REJECTED(WriteParts("lacks_" + key, p), "model metadata lacks " + key);
  }
}

TEST(LoaderTest, RejectsMissingGenerateWindow) {
  for (const RefShape& shape : {kTConst, kTLin}) {
    Parts p = GoodParts(shape);
    p.meta.erase("tconst.generate_window");
    EXPECT_REJECTED(WriteParts("no_window_" + shape.arch, p),
                    "model metadata lacks tconst.generate_window");
  }
}

TEST(LoaderTest, RejectsNonIntegerSizes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tconst.vocab_size", "abc"},
      {"tconst.n_embd", "8.0"},
      {"tconst.n_head", " 2"},
      {"tconst.n_block", "2 "},
      {"tconst.block_inner_depth", "3x"},
      {"tconst.history_window", "0x3"},
      {"tconst.generate_window", "-"},
      {"tconst.vocab_size", "+"},
      {"tconst.n_embd", "1e3"},
      {"tconst.n_head", "--2"},
  };
  int i = 0;
  for (const auto& [key, value] : cases) {
    Parts p = GoodParts();
    p.meta[key] = value;
    EXPECT_REJECTED(WriteParts("nonint_" + std::to_string(i++), p),
                    "metadata " + key + " is not an integer: '" + value + "'");
  }
  Parts p = GoodParts();
  p.meta["tconst.n_head"] = "";
  EXPECT_REJECTED(WriteParts("nonint_empty", p), "metadata tconst.n_head is empty");
}

TEST(LoaderTest, RejectsNonPositiveSizes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tconst.n_head", "0"},          {"tconst.n_embd", "-4"},
      {"tconst.vocab_size", "0"},      {"tconst.n_block", "0"},
      {"tconst.n_block", "-1"},        {"tconst.vocab_size", "-11"},
      {"tconst.generate_window", "0"}, {"tconst.history_window", "-3"},
  };
  int i = 0;
  for (const auto& [key, value] : cases) {
    Parts p = GoodParts();
    p.meta[key] = value;
    const std::string field = key.substr(std::string("tconst.").size());
    EXPECT_REJECTED(WriteParts("nonpos_" + std::to_string(i++), p),
                    "inconsistent metadata: " + field + " must be positive, got " + value);
  }
}

TEST(LoaderTest, RejectsEmbeddingWidthNotDivisibleByHeads) {
  Parts p = GoodParts();
  p.meta["tconst.n_head"] = "3";
  EXPECT_REJECTED(WriteParts("d_mod_h", p), "n_embd (8) is not divisible by n_head (3)");
  p.meta["tconst.n_head"] = "16";
  EXPECT_REJECTED(WriteParts("d_lt_h", p), "n_embd (8) is not divisible by n_head (16)");
}

TEST(LoaderTest, RejectsOddHeadDimension) {
  // A consistent file of width 12 whose metadata claims 4 heads of 3 (odd) instead of 2 of 6.
  Parts p = GoodParts({"tconstformer", 11, 12, 2, 1, 2, 4, 4, 16});
  p.meta["tconst.n_head"] = "4";
  EXPECT_REJECTED(WriteParts("odd_dh", p), "head dimension n_embd/n_head = 3 is odd");
  p = GoodParts(kBaseline);
  p.meta["tconst.n_head"] = "8";
  EXPECT_REJECTED(WriteParts("odd_dh_baseline", p), "head dimension n_embd/n_head = 1 is odd");
}

TEST(LoaderTest, RejectsInnerDepthBelowTwo) {
  for (const std::string& depth : Strings{"1", "0", "-3"}) {
    Parts p = GoodParts();
    p.meta["tconst.block_inner_depth"] = depth;
    EXPECT_REJECTED(WriteParts("depth_" + depth, p),
                    "block_inner_depth must be at least 2, got " + depth);
  }
}

TEST(LoaderTest, RejectsZeroHistoryWindow) {
  for (const RefShape& shape : {kTConst, kTLin}) {
    Parts p = GoodParts(shape);
    p.meta["tconst.history_window"] = "0";
    EXPECT_REJECTED(WriteParts("history0_" + shape.arch, p),
                    "history_window must be positive, got 0");
  }
}

TEST(LoaderTest, RejectsAbsurdlyLargeSizes) {
  const std::vector<std::pair<std::string, std::string>> too_large = {
      {"tconst.n_embd", "9223372036854775807"},
      {"tconst.vocab_size", "4294967296"},
      {"tconst.n_head", "16777217"},
      {"tconst.n_block", "1000000000000"},
      {"tconst.history_window", "9223372036854775807"},
      {"tconst.generate_window", "9223372036854775807"},
      {"tconst.block_inner_depth", "9223372036854775807"},
  };
  int i = 0;
  for (const auto& [key, value] : too_large) {
    Parts p = GoodParts();
    p.meta[key] = value;
    const std::string field = key.substr(std::string("tconst.").size());
    EXPECT_REJECTED(WriteParts("large_" + std::to_string(i++), p),
                    field + " is implausibly large: " + value);
  }
  for (const std::string& value : Strings{"9223372036854775808", "99999999999999999999999",
                                          "-9223372036854775808", "-99999999999999999999"}) {
    Parts p = GoodParts();
    p.meta["tconst.n_embd"] = value;
    EXPECT_REJECTED(WriteParts("range_" + std::to_string(i++), p),
                    "metadata tconst.n_embd is out of range: '" + value + "'");
  }
  // Each size within its cap, but the fixed cache B * ((D-1)*Hh + D*W) * 2d would overflow.
  Parts p = GoodParts();
  for (const char* key : {"tconst.n_block", "tconst.block_inner_depth", "tconst.history_window",
                          "tconst.generate_window"}) {
    p.meta[key] = "16777216";
  }
  EXPECT_REJECTED(WriteParts("large_cache", p), "size overflow computing cache size");
}

TEST(LoaderTest, RejectsBadRopeBaseAndNormEps) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tconst.rope_base", "abc"},   {"tconst.rope_base", "10000x"}, {"tconst.rope_base", ""},
      {"tconst.rope_base", "1e999"}, {"tconst.norm_eps", "eps"},     {"tconst.norm_eps", "1e-5;"},
  };
  int i = 0;
  for (const auto& [key, value] : cases) {
    Parts p = GoodParts();
    p.meta[key] = value;
    EXPECT_REJECTED(WriteParts("float_" + std::to_string(i++), p),
                    "metadata " + key + " is not a number: '" + value + "'");
  }
  for (const std::string& value : Strings{"0", "-1", "inf", "nan", "-inf"}) {
    Parts p = GoodParts();
    p.meta["tconst.rope_base"] = value;
    EXPECT_REJECTED(WriteParts("rope_" + value, p), "rope_base must be a positive finite number");
    p = GoodParts();
    p.meta["tconst.norm_eps"] = value;
    EXPECT_REJECTED(WriteParts("eps_" + value, p), "norm_eps must be a positive finite number");
  }
}

TEST(LoaderTest, LoadFromBytesUsesItsLabel) {
  try {
    tconst::Model<float>::load_from_bytes({1, 2, 3});
    ADD_FAILURE() << "loaded";
  } catch (const tconst::Error& e) {
    EXPECT_HAS_SUBSTR(std::string(e.what()), "invalid model file '<memory>': truncated: 3 bytes");
  }
}

// ---------------------------------------------------------------------------------------------
// Good files.

template <typename Scalar>
void ExpectView(const tconst::WeightView<Scalar>& got, const std::vector<double>& want,
                int64_t rows, int64_t cols, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_NE(got.data, nullptr);
  EXPECT_EQ(got.rows, rows);
  EXPECT_EQ(got.cols, cols);
  ASSERT_EQ(static_cast<size_t>(rows * cols), want.size());
  size_t wrong = 0, first = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (got.data[i] != static_cast<Scalar>(want[i]) && wrong++ == 0) first = i;
  }
  EXPECT_EQ(wrong, 0u) << "first at " << first << ": " << got.data[first] << " vs " << want[first];
}

// A float model's matrix in any SPEC §6.1 format, through its dequantized rows.
void ExpectView(const tconst::detail::WeightMatrix& got, const std::vector<double>& want,
                int64_t rows, int64_t cols, const std::string& what) {
  std::vector<float> values(static_cast<size_t>(got.rows * got.cols));
  for (int64_t r = 0; r < got.rows; ++r) {
    tconst::detail::dequantize_row(got, r, values.data() + r * got.cols);
  }
  ASSERT_NE(got.data, nullptr);
  ExpectView(tconst::WeightView<float>{values.data(), got.rows, got.cols}, want, rows, cols, what);
}

// `got` holds exactly the values of `want` (a model already rounded to the file's dtype).
template <typename Scalar>
void ExpectModelEquals(const tconst::Model<Scalar>& got, const RefModel& want) {
  const tconst::ModelConfig& c = got.config();
  EXPECT_EQ(tconst::to_string(c.arch), want.arch);
  EXPECT_EQ(c.vocab_size, want.V);
  EXPECT_EQ(c.n_embd, want.d);
  EXPECT_EQ(c.n_head, want.h);
  EXPECT_EQ(c.n_block, want.B);
  EXPECT_EQ(c.inner_depth, want.D);
  EXPECT_EQ(c.history_window, want.Hh);
  EXPECT_EQ(c.generate_window, want.W);
  EXPECT_EQ(c.ffn_hidden, want.f);
  EXPECT_EQ(c.rope_base, want.base);
  EXPECT_EQ(c.norm_eps, want.eps);
  EXPECT_EQ(c.tied_head, want.lm_head.empty());
  const int64_t V = want.V, d = want.d, f = want.f;
  ExpectView(got.embedding(), want.embedding, V, d, "embedding");
  ExpectView(got.lm_head(), want.lm_head.empty() ? want.embedding : want.lm_head, V, d, "head");
  ExpectView(got.norm_w(), want.norm_w, d, 1, "norm_w");
  ExpectView(got.norm_b(), want.norm_b, d, 1, "norm_b");
  for (size_t b = 0; b < want.blocks.size(); ++b) {
    for (size_t j = 0; j < want.blocks[b].size(); ++j) {
      const RefLayer& w = want.blocks[b][j];
      const tconst::LayerWeights<Scalar>& L =
          got.layer(static_cast<int64_t>(b), static_cast<int64_t>(j));
      const std::string at = "block " + std::to_string(b) + " layer " + std::to_string(j) + " ";
      ExpectView(L.norm1_w, w.norm1_w, d, 1, at + "norm1_w");
      ExpectView(L.norm1_b, w.norm1_b, d, 1, at + "norm1_b");
      ExpectView(L.norm2_w, w.norm2_w, d, 1, at + "norm2_w");
      ExpectView(L.norm2_b, w.norm2_b, d, 1, at + "norm2_b");
      ExpectView(L.qkv_w, w.qkv_w, 3 * d, d, at + "qkv_w");
      ExpectView(L.qkv_b, w.qkv_b, 3 * d, 1, at + "qkv_b");
      ExpectView(L.out_w, w.out_w, d, d, at + "out_w");
      ExpectView(L.out_b, w.out_b, d, 1, at + "out_b");
      ExpectView(L.w1, w.w1, f, d, at + "w1");
      ExpectView(L.w3, w.w3, f, d, at + "w3");
      ExpectView(L.w2, w.w2, d, f, at + "w2");
    }
  }
  const int64_t dh = want.d / want.h;
  ASSERT_EQ(got.rope_theta().size(), static_cast<size_t>(dh / 2));
  for (int64_t m = 0; m < dh / 2; ++m) {
    EXPECT_EQ(got.rope_theta()[static_cast<size_t>(m)],
              std::pow(want.base, -2.0 * static_cast<double>(m) / static_cast<double>(dh)));
  }
}

TEST(LoaderTest, LoadsEveryDtypeInFloatAndDouble) {
  const RefShape untied{"tconstformer", 11, 8, 2, 2, 3, 4, 3, 12, false};
  for (const RefShape& shape : {kTConst, kTLin, kBaseline, untied}) {
    const RefModel m = tconst_test::make_random_model(shape, 11);
    for (const std::string& dtype : Strings{"F32", "F16", "BF16", "F64"}) {
      SCOPED_TRACE(shape.arch + (shape.tied ? "" : " untied") + " " + dtype);
      const std::string path = temp_path("good_" + shape.arch + "_" + dtype + ".safetensors");
      tconst_test::write_model(m, path, dtype);
      const RefModel stored = tconst_test::rounded_copy(m, dtype);
      const auto f = tconst::Model<float>::load(path);
      const auto d = tconst::Model<double>::load(path);
      ExpectModelEquals(*f, stored);
      ExpectModelEquals(*d, stored);
      const int64_t params = NumelSum(tconst_test::model_tensors(m, dtype));
      EXPECT_EQ(f->parameter_count(), params);
      EXPECT_EQ(d->parameter_count(), params);
      EXPECT_EQ(f->identity(), d->identity());
      // Tensors already in the scalar type are used in place; others converted once. A float
      // model keeps BF16 matrices as they are (SPEC §6.1): only its BF16 vectors are converted.
      int64_t vector_params = 0;
      for (const auto& t : tconst_test::model_tensors(m, dtype)) {
        if (t.shape.size() == 1) vector_params += t.shape[0];
      }
      const int64_t f_converted = dtype == "F32" ? 0 : dtype == "BF16" ? vector_params : params;
      EXPECT_EQ(f->converted_bytes(), f_converted * sizeof(float));
      EXPECT_EQ(d->converted_bytes(), dtype == "F64" ? 0u : params * sizeof(double));
    }
  }
}

TEST(LoaderTest, LoadsMisalignedData) {
  // A header length that leaves the data section on an odd address: values are still exact.
  const RefModel m = tconst_test::make_random_model(kTConst, 12);
  for (const std::string& dtype : Strings{"F32", "F64"}) {
    const std::vector<RawTensor> tensors = tconst_test::model_tensors(m, dtype);
    std::string text =
        tconst_test::safetensors_header(tensors, tconst_test::model_metadata(m)).dump();
    while ((8 + text.size()) % 8 != 3) text.push_back(' ');
    const std::string path =
        WriteText("misaligned_" + dtype, text, tconst_test::concat_tensor_bytes(tensors));
    const auto f = tconst::Model<float>::load(path);
    const auto d = tconst::Model<double>::load(path);
    ExpectModelEquals(*f, tconst_test::rounded_copy(m, dtype));
    ExpectModelEquals(*d, tconst_test::rounded_copy(m, dtype));
    EXPECT_GT(f->converted_bytes(), 0u);
    EXPECT_GT(d->converted_bytes(), 0u);
  }
}

TEST(LoaderTest, LoadFromBytesPutsTheDataSectionOnACacheLine) {
  // Whatever the header's length, a model loaded from bytes keeps them where the data section
  // starts on a 64-byte boundary, so a tensor at a multiple of 64 starts on a cache line; its
  // values stay exact and in place (no conversion).
  const RefModel m = tconst_test::make_random_model(kTConst, 13);
  const std::vector<RawTensor> tensors = tconst_test::model_tensors(m, "F32");
  const json header = tconst_test::safetensors_header(tensors, tconst_test::model_metadata(m));
  const uint64_t begin = header["embedding.weight"]["data_offsets"][0].get<uint64_t>();
  for (size_t start : {size_t{0}, size_t{8}, size_t{36}, size_t{56}}) {
    SCOPED_TRACE("data section at " + std::to_string(start) + " mod 64");
    std::string text = header.dump();
    while ((8 + text.size()) % 64 != start) text.push_back(' ');
    const std::string path = WriteText("cache_line_" + std::to_string(start), text,
                                       tconst_test::concat_tensor_bytes(tensors));
    const auto f = tconst::Model<float>::load_from_bytes(ReadBytes(path));
    EXPECT_EQ(f->converted_bytes(), 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(f->embedding().data) % 64, begin % 64);
    ExpectModelEquals(*f, tconst_test::rounded_copy(m, "F32"));
  }
}

TEST(LoaderTest, IgnoresStoredRopeInvFreq) {
  const Parts plain = GoodParts();
  Parts p = GoodParts();
  for (int b = 0; b < kTConst.B; ++b) {
    const std::string blk = "transformer.transformer_layers." + std::to_string(b);
    for (const std::string& layer : {blk + ".compress_context_layer", blk + ".hidden_layers.0",
                                     blk + ".restore_context_shape_layer"}) {
      p.tensors.push_back(RawTensor{layer + ".rope.inv_freq", "F32", {2}, std::vector<uint8_t>(8)});
    }
  }
  // Any dtype and shape: the buffer is never read.
  p.tensors.push_back(RawTensor{"transformer.rope.inv_freq", "I64", {3}, std::vector<uint8_t>(24)});
  const auto with = tconst::Model<float>::load(WriteParts("inv_freq", p));
  const auto without = tconst::Model<float>::load(WriteParts("inv_freq_plain", plain));
  EXPECT_EQ(with->parameter_count(), without->parameter_count());
  EXPECT_EQ(with->parameter_count(), NumelSum(plain.tensors));
  EXPECT_EQ(with->identity(), without->identity());
  ExpectModelEquals(*with, tconst_test::make_random_model(kTConst, 7));
}

TEST(LoaderTest, UsesAnExplicitLmHead) {
  const RefModel m =
      tconst_test::make_random_model({"tconstformer", 11, 8, 2, 2, 3, 4, 3, 12, false}, 5);
  ASSERT_FALSE(m.lm_head.empty());
  const std::string path = temp_path("untied.safetensors");
  tconst_test::write_model(m, path, "F32");
  const auto model = tconst::Model<double>::load(path);
  EXPECT_FALSE(model->config().tied_head);
  EXPECT_NE(model->lm_head().data, model->embedding().data);
  ExpectView(model->lm_head(), m.lm_head, m.V, m.d, "lm_head");
  EXPECT_EQ(model->parameter_count(), NumelSum(tconst_test::model_tensors(m, "F32")));

  const RefModel tied = tconst_test::make_random_model(kTConst, 5);
  tconst_test::write_model(tied, temp_path("tied.safetensors"), "F32");
  const auto tied_model = tconst::Model<double>::load(temp_path("tied.safetensors"));
  EXPECT_TRUE(tied_model->config().tied_head);
  EXPECT_EQ(tied_model->lm_head().data, tied_model->embedding().data);
  // The tied head is counted once.
  EXPECT_EQ(tied_model->parameter_count(), NumelSum(tconst_test::model_tensors(tied, "F32")));
}

TEST(LoaderTest, AcceptsExtraMetadataKeysAndOptionalDefaults) {
  Parts p = GoodParts();
  p.meta["format"] = "pt";
  p.meta["tconst.some_future_key"] = "anything";
  p.meta["tconst.tokenizer"] = "bytes";
  p.meta[""] = "";
  auto model = tconst::Model<float>::load(WriteParts("extra_meta", p));
  EXPECT_EQ(model->config().tokenizer, "bytes");

  p = GoodParts();
  p.meta.erase("tconst.rope_base");
  p.meta.erase("tconst.norm_eps");
  model = tconst::Model<float>::load(WriteParts("defaults", p));
  EXPECT_EQ(model->config().rope_base, 10000.0);
  EXPECT_EQ(model->config().norm_eps, 1e-5);
  EXPECT_EQ(model->config().tokenizer, "");

  p = GoodParts();
  p.meta["tconst.rope_base"] = "500000.5";
  p.meta["tconst.norm_eps"] = "1e-6";
  model = tconst::Model<float>::load(WriteParts("custom_floats", p));
  EXPECT_EQ(model->config().rope_base, 500000.5);
  EXPECT_EQ(model->config().norm_eps, 1e-6);

  // The baseline needs no window keys, and ignores them when present.
  Parts baseline = GoodParts(kBaseline);
  baseline.meta["tconst.block_inner_depth"] = "0";
  baseline.meta["tconst.generate_window"] = "nonsense";
  const auto base_model = tconst::Model<double>::load(WriteParts("baseline_extra", baseline));
  EXPECT_TRUE(base_model->config().is_baseline());
  EXPECT_EQ(base_model->config().generate_window, 0);
}

TEST(LoaderTest, ParameterCountIsTheSumOfTheUsedTensors) {
  for (const RefShape& shape : {kTConst, kTLin, kBaseline}) {
    const Parts p = GoodParts(shape, "BF16");
    const int64_t want = NumelSum(p.tensors);
    const std::string path = WriteParts("count_" + shape.arch, p);
    EXPECT_EQ(tconst::Model<float>::load(path)->parameter_count(), want) << shape.arch;
    EXPECT_EQ(tconst::Model<double>::load(path)->parameter_count(), want) << shape.arch;
  }
  // By hand for the tied TConstFormer: embedding, final norm, B * D layers.
  const int64_t V = 11, d = 8, f = 12;
  const int64_t layer = 4 * d + 3 * d * d + 3 * d + d * d + d + 3 * f * d;
  EXPECT_EQ(NumelSum(GoodParts().tensors), V * d + 2 * d + 2 * 3 * layer);
}

TEST(LoaderTest, LoadFromBytesEqualsLoadFromFile) {
  for (const std::string& dtype : Strings{"F32", "F16"}) {
    const RefModel m = tconst_test::make_random_model(kTLin, 21);
    const std::string path = temp_path("bytes_" + dtype + ".safetensors");
    tconst_test::write_model(m, path, dtype);
    const auto from_file = tconst::Model<float>::load(path);
    const auto from_bytes = tconst::Model<float>::load_from_bytes(ReadBytes(path));
    const RefModel stored = tconst_test::rounded_copy(m, dtype);
    ExpectModelEquals(*from_file, stored);
    ExpectModelEquals(*from_bytes, stored);
    EXPECT_EQ(from_file->identity(), from_bytes->identity());
    EXPECT_EQ(from_file->parameter_count(), from_bytes->parameter_count());
    EXPECT_EQ(from_file->converted_bytes(), from_bytes->converted_bytes());
  }
}

TEST(LoaderTest, LoadsTheGoldenModels) {
  // Files written by the reference exporter: exactly the SPEC tensors, nothing unexpected.
  for (const char* name : {"tconst_D4_W8_H8", "tlin_D4_W8_H8", "transformer_L4"}) {
    const std::string path =
        std::string(TCONST_TEST_DATA_DIR) + "/golden/" + name + "/model.safetensors";
    SCOPED_TRACE(path);
    const auto f = tconst::Model<float>::load(path);
    const auto d = tconst::Model<double>::load(path);
    EXPECT_EQ(f->parameter_count(), d->parameter_count());
    EXPECT_EQ(f->config().vocab_size, 61);
    EXPECT_EQ(f->config().n_embd, 32);
    EXPECT_TRUE(f->config().tied_head);
  }
}

}  // namespace
