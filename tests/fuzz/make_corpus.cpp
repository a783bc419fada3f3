// Writes the seed corpus of the fuzz targets: `fuzz_make_corpus DIR` fills DIR/model, DIR/ids,
// DIR/tokenizer and DIR/snapshot (tests/fuzz/corpus is committed; rerun this only to change it).
// Every seed is small: the fuzzers mutate them, and libFuzzer's input length limit follows them.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "fuzz/fuzz_common.hpp"
#include "tconst/model/quantize.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/model/weight_formats.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path g_root;

void put(const std::string& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(g_root / dir);
  std::ofstream out(g_root / dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + (g_root / dir / name).string());
}

std::string str(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  return s;
}

void models() {
  using tconst_fuzz::kTinyShapes;
  for (const auto& shape : kTinyShapes) {
    put("model", shape.arch + ".safetensors", str(tconst_fuzz::model_bytes(shape, 1)));
  }
  tconst_test::RefShape untied = kTinyShapes[2];
  untied.tied = false;
  put("model", "transformer_untied_bf16.safetensors",
      str(tconst_fuzz::model_bytes(untied, 2, "BF16")));
  put("model", "tconstformer_f16.safetensors",
      str(tconst_fuzz::model_bytes(kTinyShapes[0], 3, "F16")));
  tconst_test::RefShape deeper{"tconstformer", 8, 4, 1, 1, 3, 1, 1, 4};
  put("model", "tconstformer_D3_W1.safetensors", str(tconst_fuzz::model_bytes(deeper, 4)));

  // SPEC §6.1: matrices in BF16 and in Q8 (block 16: every row one partial block), as
  // quantize_model writes them, and Q8 files with a NaN scale and without the block size.
  const tconst::SafetensorsFile f32 =
      tconst::SafetensorsFile::from_bytes(tconst_fuzz::model_bytes(kTinyShapes[1], 5), "seed");
  tconst::QuantizeOptions q8;
  q8.block = 16;
  const std::string q8_bytes = str(tconst::quantize_model(f32, q8));
  put("model", "tlinformer_q8.safetensors", q8_bytes);
  tconst::QuantizeOptions bf16;
  bf16.format = tconst::detail::WeightFormat::bf16;
  put("model", "tlinformer_bf16_matrices.safetensors", str(tconst::quantize_model(f32, bf16)));
  const tconst::SafetensorsFile q8_file =
      tconst::SafetensorsFile::from_bytes(tconst::quantize_model(f32, q8), "seed");
  const tconst::TensorInfo* scale = q8_file.find("embedding.weight.q8_scale");
  std::string nan_scale = q8_bytes;
  const size_t at = static_cast<size_t>(scale->data - q8_file.bytes()->data());
  nan_scale.replace(at, 4, std::string("\x00\x00\xc0\x7f", 4));
  put("model", "bad_q8_nan_scale.safetensors", nan_scale);
  std::string no_block = q8_bytes;
  const size_t key = no_block.find("tconst.q8_block");
  no_block.replace(key, 15, "tconst.q8_bloc_");
  put("model", "bad_q8_no_block.safetensors", no_block);

  // Malformed: cut in the data, a header length past the end, a header that is not JSON, tensors
  // whose ranges overlap, metadata only.
  const std::string good = str(tconst_fuzz::model_bytes(kTinyShapes[0], 1));
  put("model", "bad_truncated.safetensors", good.substr(0, good.size() * 3 / 4));
  put("model", "bad_header_length.safetensors", le64(1u << 20) + good.substr(8, 200));
  put("model", "bad_not_json.safetensors",
      le64(10) + "{\"a\":[1" + std::string(1, '\0') + "\x01\x02");
  const std::string overlap =
      R"({"__metadata__":{"tconst.format":"1"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  put("model", "bad_overlap.safetensors", le64(overlap.size()) + overlap + std::string(12, '\0'));
  const std::string meta =
      R"({"__metadata__":{"tconst.format":"1","tconst.architecture":"tconstformer",)"
      R"("tconst.vocab_size":"99999999999","tconst.n_embd":"-4","tconst.n_head":"1",)"
      R"("tconst.n_block":"1","tconst.block_inner_depth":"2","tconst.history_window":"2",)"
      R"("tconst.generate_window":"2","tconst.rope_base":"1e400"}})";
  put("model", "bad_metadata_only.safetensors", le64(meta.size()) + meta);
}

void ids() {
  tconst_test::SplitMix64 rng(5);
  std::string golden;
  for (int i = 0; i < 45; ++i) golden += (i ? " " : "") + std::to_string(rng.next() % 64);
  put("ids", "golden_like.txt", golden + "\n");
  put("ids", "lines.txt", "50256 0 1\n\t 17\r\n2147483647\n");
  put("ids", "empty.txt", "");
  put("ids", "bad_sign.txt", "1 2 -3 4\n");
  put("ids", "bad_overflow.txt", "7 2147483648 9\n");
  put("ids", "bad_letters.txt", "12 0x1f 3.5 abc\n");
}

std::string spell(std::string_view bytes) {
  std::string s;
  for (const char c : bytes) {
    tconst::detail::append_utf8(s,
                                tconst::detail::kGpt2ByteToUnicode[static_cast<unsigned char>(c)]);
  }
  return s;
}

void tokenizers() {
  const std::vector<std::pair<std::string, std::string>> byte_merges = {
      {" ", "w"}, {"o", "r"}, {" w", "or"}, {"l", "d"},    {" wor", "ld"},
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"\xC3", "\xA9"}};
  json vocab = json::object();
  int next = 0;
  for (int b = 0; b < 256; ++b) vocab[spell(std::string(1, static_cast<char>(b)))] = next++;
  std::string merges_txt = "#version: 0.2\n";
  json merges_strings = json::array(), merges_arrays = json::array();
  for (const auto& [l, r] : byte_merges) {
    vocab[spell(l + r)] = next++;
    merges_txt += spell(l) + " " + spell(r) + "\n";
    merges_strings.push_back(spell(l) + " " + spell(r));
    merges_arrays.push_back(json::array({spell(l), spell(r)}));
  }
  vocab["<|endoftext|>"] = next++;
  put("tokenizer", "vocab_and_merges", vocab.dump() + std::string(1, '\0') + merges_txt);
  put("tokenizer", "vocab_and_crlf_merges",
      vocab.dump() + std::string(1, '\0') + "\xC4\xA0 w\r\no r\r\n");

  auto tokenizer_json = [&](const json& merges, bool prefix) {
    return json{{"version", "1.0"},
                {"added_tokens",
                 json::array({{{"id", next - 1}, {"content", "<|endoftext|>"}, {"special", true}},
                              {{"id", next}, {"content", "<pad>"}, {"special", true}}})},
                {"normalizer", nullptr},
                {"pre_tokenizer",
                 {{"type", "ByteLevel"}, {"add_prefix_space", prefix}, {"use_regex", true}}},
                {"decoder", {{"type", "ByteLevel"}}},
                {"model",
                 {{"type", "BPE"},
                  {"continuing_subword_prefix", ""},
                  {"vocab", vocab},
                  {"merges", merges}}}}
        .dump();
  };
  put("tokenizer", "tokenizer_strings.json", tokenizer_json(merges_strings, false));
  put("tokenizer", "tokenizer_arrays_prefix.json", tokenizer_json(merges_arrays, true));

  json missing_byte = vocab;
  missing_byte.erase(spell("A"));
  put("tokenizer", "bad_missing_byte", missing_byte.dump() + std::string(1, '\0') + merges_txt);
  put("tokenizer", "bad_merge", vocab.dump() + std::string(1, '\0') + "x yz\n");
  put("tokenizer", "bad_duplicate_key.json", R"({"model":{"type":"BPE","vocab":{"a":0,"a":1}}})");
  // Regression: nesting this deep is refused (a million levels used to overflow the stack).
  put("tokenizer", "regress_deep_nesting.json",
      R"({"model":{"type":)" + std::string(200, '[') + std::string(200, ']') + "}}");
}

void snapshots() {
  for (size_t k = 0; k < 3; ++k) {
    const auto& shape = tconst_fuzz::kSnapshotShapes[k];
    auto model = tconst::Model<float>::load_from_bytes(
        tconst_fuzz::model_bytes(shape, tconst_fuzz::kSnapshotSeed));
    auto s = tconst::make_session(model);
    for (int n : {0, 1, 5}) {
      while (s->position() < n) s->feed(static_cast<int32_t>(s->position() * 3 % shape.V));
      const std::string path = tconst_fuzz::temp_path("seed.snap");
      tconst::save_session(*s, path);
      const std::string bytes = tconst::read_file(path);
      std::remove(path.c_str());
      put("snapshot", shape.arch + "_" + std::to_string(n) + ".snap", bytes);
      if (n == 5) {
        put("snapshot", "bad_truncated_" + shape.arch + ".snap", bytes.substr(0, bytes.size() / 2));
        std::string future = bytes;
        future[8] = 2;  // format version 2
        put("snapshot", "bad_version_" + shape.arch + ".snap", future);
      }
    }
  }
  put("snapshot", "bad_magic.snap", std::string("TCSNAPSX") + std::string(40, '\0'));

  // Regression: a baseline snapshot whose token log claims 2^30 tokens (with a valid checksum)
  // made read_state allocate 4 GiB before finding the file too short for them.
  const auto& shape = tconst_fuzz::kSnapshotShapes[2];
  auto model = tconst::Model<float>::load_from_bytes(
      tconst_fuzz::model_bytes(shape, tconst_fuzz::kSnapshotSeed));
  const std::string path = tconst_fuzz::temp_path("seed.snap");
  tconst::save_session(*tconst::make_session(model), path);
  std::string huge = tconst::read_file(path);
  std::remove(path.c_str());
  const std::string n = le64(uint64_t{1} << 30);
  huge.replace(32, 8, n);  // the state's first field: the token count
  const uint64_t sum =
      tconst::detail::fnv1a(reinterpret_cast<const uint8_t*>(huge.data()), huge.size() - 8);
  huge.replace(huge.size() - 8, 8, le64(sum));
  put("snapshot", "regress_huge_log_transformer.snap", huge);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  models();
  ids();
  tokenizers();
  snapshots();
  return 0;
}
