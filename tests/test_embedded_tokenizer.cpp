// A model file that carries its tokenizer (SPEC §6.2): the library reads it from the file's
// metadata, the command-line program needs no --tokenizer for it, and every inconsistent form is
// an error naming the key.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "support/errors.hpp"
#include "support/ref_model.hpp"
#include "support/safetensors_writer.hpp"
#include "support/temp_files.hpp"
#include "tconst/tconst.hpp"
#include "tconst/tokenizer/embedded.hpp"
#include "tconst/tokenizer/gpt2_bpe.hpp"

namespace {

using tconst_test::temp_path;
using ::testing::HasSubstr;

// GPT-2's spelling of a byte string: printable bytes as themselves, the rest shifted past 255.
std::string spell(const std::string& bytes) {
  std::string out;
  for (unsigned char b : bytes) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    int cp = b;
    if (!printable) {
      int shift = 0;
      for (int x = 0; x < b; ++x) {
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) ++shift;
      }
      cp = 256 + shift;
    }
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else {
      out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
  }
  return out;
}

// A byte-level vocabulary of 256 byte tokens and five merges: 261 tokens.
struct Vocab {
  std::string vocab_json, merges_txt;
  nlohmann::json tokenizer_json;
};

Vocab small_vocab() {
  nlohmann::json vocab = nlohmann::json::object();
  int next = 0;
  for (int b = 0; b < 256; ++b) vocab[spell(std::string(1, static_cast<char>(b)))] = next++;
  Vocab v;
  v.merges_txt = "#version: 0.2\n";
  nlohmann::json merge_list = nlohmann::json::array();
  for (const auto& [l, r] : {std::pair<std::string, std::string>{"t", "h"},
                             {"th", "e"},
                             {" ", "the"},
                             {"a", "n"},
                             {"an", "d"}}) {
    vocab[spell(l + r)] = next++;
    v.merges_txt += spell(l) + " " + spell(r) + "\n";
    merge_list.push_back(spell(l) + " " + spell(r));
  }
  v.vocab_json = vocab.dump();
  v.tokenizer_json = {{"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                      {"decoder", {{"type", "ByteLevel"}}},
                      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
  return v;
}

// A small random TConstFormer file with vocabulary V and `extra` metadata.
std::string write_model(const std::string& tag, const std::map<std::string, std::string>& extra,
                        int V = 261) {
  const auto m = tconst_test::make_random_model({"tconstformer", V, 16, 2, 1, 2, 4, 8, 24}, 7);
  auto meta = tconst_test::model_metadata(m);
  for (const auto& [k, v] : extra) meta[k] = v;
  const std::string path = temp_path(tag + ".safetensors");
  tconst_test::write_safetensors_file(path, tconst_test::model_tensors(m, "F32"), meta);
  return path;
}

std::map<std::string, std::string> carrying(const Vocab& v) {
  return {{"tconst.tokenizer", "gpt2"},
          {"tconst.tokenizer.vocab", v.vocab_json},
          {"tconst.tokenizer.merges", v.merges_txt}};
}

const char* const kText = "the band and the hand then";

TEST(EmbeddedTokenizer, VocabularyAndMergesEncodeLikeTheFiles) {
  const Vocab v = small_vocab();
  const auto tok = tconst::embedded_tokenizer(write_model("pair", carrying(v)));
  ASSERT_NE(tok, nullptr);
  const auto direct = tconst::Gpt2BpeTokenizer::from_strings(v.vocab_json, v.merges_txt);
  EXPECT_EQ(tok->vocab_size(), 261);
  const auto ids = tok->encode(kText);
  EXPECT_EQ(ids, direct->encode(kText));
  EXPECT_LT(ids.size(), std::string(kText).size());  // the merges were applied
  EXPECT_EQ(tok->decode(ids), kText);
}

TEST(EmbeddedTokenizer, TokenizerJsonForm) {
  const Vocab v = small_vocab();
  const auto tok = tconst::embedded_tokenizer(write_model(
      "json", {{"tconst.tokenizer", "gpt2"}, {"tconst.tokenizer.json", v.tokenizer_json.dump()}}));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->encode(kText),
            tconst::Gpt2BpeTokenizer::from_strings(v.vocab_json, v.merges_txt)->encode(kText));
}

TEST(EmbeddedTokenizer, AFileWithoutOneCarriesNone) {
  EXPECT_EQ(tconst::embedded_tokenizer(write_model("none", {{"tconst.tokenizer", "gpt2"}})),
            nullptr);
}

TEST(EmbeddedTokenizer, InconsistentFormsNameTheKey) {
  const Vocab v = small_vocab();
  auto error_of = [&](std::map<std::string, std::string> meta) {
    const std::string path = write_model("bad", meta);
    try {
      tconst::embedded_tokenizer(path);
    } catch (const tconst::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto meta = carrying(v);
  meta.erase("tconst.tokenizer.merges");
  EXPECT_THAT(error_of(meta), HasSubstr("tconst.tokenizer.vocab without tconst.tokenizer.merges"));
  meta = carrying(v);
  meta["tconst.tokenizer.json"] = v.tokenizer_json.dump();
  EXPECT_THAT(error_of(meta), HasSubstr("carries both tconst.tokenizer.json"));
  meta = carrying(v);
  meta["tconst.tokenizer"] = "bytes";
  EXPECT_THAT(error_of(meta), HasSubstr("its tconst.tokenizer is 'bytes', expected 'gpt2'"));
  meta = carrying(v);
  meta.erase("tconst.tokenizer");
  EXPECT_THAT(error_of(meta), HasSubstr("its tconst.tokenizer is missing"));
  meta = carrying(v);
  meta["tconst.tokenizer.vocab"] = "{\"a\": 0,";
  EXPECT_THAT(error_of(meta), HasSubstr("tconst.tokenizer.vocab"));
  EXPECT_THAT(error_of(meta), HasSubstr("not valid JSON"));
  meta = carrying(v);
  meta["tconst.tokenizer.merges"] = "#version: 0.2\nt h e\n";
  EXPECT_THAT(error_of(meta), HasSubstr("tconst.tokenizer.merges"));
}

// The command-line program, as a user runs it.
struct Outcome {
  int status;
  std::string out, err;
};

Outcome run(const std::string& args, const std::string& input = "") {
  const std::string in = temp_path("stdin"), out = temp_path("stdout"), err = temp_path("stderr");
  tconst_test::write_file(in, input);
  const std::string cmd =
      std::string(TCONST_CLI_PATH) + " " + args + " <'" + in + "' >'" + out + "' 2>'" + err + "'";
  const int raw = std::system(cmd.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : 128, tconst::read_file(out), tconst::read_file(err)};
}

TEST(EmbeddedTokenizerCli, GenerateAndTokenizeNeedNothingElse) {
  const Vocab v = small_vocab();
  const std::string model = "'" + write_model("cli", carrying(v)) + "'";
  // The same vocabulary as files beside each other, the way --tokenizer takes them.
  const std::string dir = temp_path("vocab_dir");
  ASSERT_EQ(std::system(("mkdir -p '" + dir + "'").c_str()), 0);
  tconst_test::write_file(dir + "/vocab.json", v.vocab_json);
  tconst_test::write_file(dir + "/merges.txt", v.merges_txt);

  const Outcome alone = run("tokenize --model " + model, kText);
  ASSERT_EQ(alone.status, 0) << alone.err;
  const Outcome with_files = run("tokenize --tokenizer '" + dir + "'", kText);
  ASSERT_EQ(with_files.status, 0) << with_files.err;
  EXPECT_EQ(alone.out, with_files.out);

  const std::string gen =
      "generate --model " + model + " --prompt 'the band' --max-new 12 --greedy";
  const Outcome a = run(gen);
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_THAT(a.out, HasSubstr("the band"));
  const Outcome b = run(gen + " --tokenizer '" + dir + "'");
  ASSERT_EQ(b.status, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
}

TEST(EmbeddedTokenizerCli, ErrorsAreOneLine) {
  const Vocab v = small_vocab();
  auto meta = carrying(v);
  meta.erase("tconst.tokenizer.vocab");
  const Outcome r = run("tokenize --model '" + write_model("cli_bad", meta) + "'", kText);
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.err, HasSubstr("tconst.tokenizer.merges without tconst.tokenizer.vocab"));
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  // A vocabulary larger than the model's.
  const Outcome big =
      run("tokenize --model '" + write_model("cli_big", carrying(v), 258) + "'", kText);
  EXPECT_NE(big.status, 0);
  EXPECT_THAT(big.err, HasSubstr("tokenizer has 261 tokens but the model's vocabulary is 258"));
}

}  // namespace
