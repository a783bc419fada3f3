// Tests of the tokenizers (include/tconst/tokenizer/): bytes, GPT-2 byte-level BPE on a small
// hand-made vocabulary and against the real GPT-2 vocabulary, streaming decoding, and the errors
// that bad tokenizer files give.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/errors.hpp"
#include "support/temp_files.hpp"
#include "tconst/error.hpp"
#include "tconst/tokenizer/bytes.hpp"
#include "tconst/tokenizer/gpt2_bpe.hpp"
#include "tconst/tokenizer/tokenizer.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using tconst::Gpt2BpeTokenizer;
using Ids = std::vector<int32_t>;
using tconst_test::expect_error;
using tconst_test::TempDir;

// ---- helpers -----------------------------------------------------------------------------------

/// GPT-2's spelling of one byte in vocabulary files.
std::string spell_byte(int b) {
  std::string s;
  tconst::detail::append_utf8(s, tconst::detail::kGpt2ByteToUnicode[static_cast<std::size_t>(b)]);
  return s;
}

/// GPT-2's spelling of a byte string ("Ġworld" for " world").
std::string spell(std::string_view bytes) {
  std::string s;
  for (const char c : bytes) s += spell_byte(static_cast<unsigned char>(c));
  return s;
}

/// A small vocabulary: the 256 single bytes (id = byte value), then the results of `merges` in
/// order (ids 256, 257, ...), each given as a pair of byte strings, and then `extra` tokens.
struct SmallVocab {
  json vocab = json::object();
  std::vector<std::pair<std::string, std::string>> merges;  // spelled
  int32_t next_id = 0;

  explicit SmallVocab(const std::vector<std::pair<std::string, std::string>>& byte_merges) {
    for (int b = 0; b < 256; ++b) vocab[spell_byte(b)] = next_id++;
    for (const auto& [left, right] : byte_merges) {
      merges.emplace_back(spell(left), spell(right));
      const std::string merged = spell(left + right);
      if (!vocab.contains(merged)) vocab[merged] = next_id++;
    }
  }

  int32_t id(std::string_view bytes) const { return vocab.at(spell(bytes)).get<int32_t>(); }

  std::string vocab_json() const { return vocab.dump(); }

  std::string merges_txt() const {
    std::string text = "#version: 0.2\n";
    for (const auto& [left, right] : merges) text += left + " " + right + "\n";
    return text;
  }

  json tokenizer_json(bool merges_as_arrays = false) const {
    json merge_list = json::array();
    for (const auto& [left, right] : merges) {
      merge_list.push_back(merges_as_arrays ? json::array({left, right})
                                            : json(left + " " + right));
    }
    return {
        {"version", "1.0"},
        {"added_tokens", json::array()},
        {"normalizer", nullptr},
        {"pre_tokenizer",
         {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", true}}},
        {"post_processor", nullptr},
        {"decoder", {{"type", "ByteLevel"}}},
        {"model",
         {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", nullptr},
          {"continuing_subword_prefix", ""},
          {"end_of_word_suffix", ""},
          {"fuse_unk", false},
          {"vocab", vocab},
          {"merges", merge_list}}},
    };
  }

  std::unique_ptr<Gpt2BpeTokenizer> load() const {
    return Gpt2BpeTokenizer::from_strings(vocab_json(), merges_txt());
  }
};

/// The merges of the hand-made vocabulary used by most BPE tests.
SmallVocab hello_vocab() {
  return SmallVocab({{"h", "e"},
                     {"l", "l"},
                     {"he", "ll"},
                     {"hell", "o"},
                     {" ", "w"},
                     {"o", "r"},
                     {" w", "or"},
                     {" wor", "l"},
                     {" worl", "d"},
                     {"a", "a"},
                     {"aa", "aa"}});
}

std::string all_bytes() {
  std::string s;
  for (int b = 0; b < 256; ++b) s.push_back(static_cast<char>(b));
  return s;
}

std::string random_bytes(std::mt19937& rng, std::size_t n) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s.push_back(static_cast<char>(byte(rng)));
  return s;
}

// ---- bytes tokenizer ---------------------------------------------------------------------------

TEST(BytesTokenizer, RoundTripsArbitraryBytes) {
  const tconst::BytesTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.name(), "bytes");
  std::mt19937 rng(7);
  const std::vector<std::string> texts = {
      "",
      "hello",
      std::string("nul\0inside", 10),
      "\xff\xfe invalid \xc0\xaf utf-8 \xed\xa0\x80",
      "caf\xc3\xa9 \xf0\x9f\x98\x80",
      all_bytes(),
      random_bytes(rng, 1000),
  };
  for (const std::string& text : texts) {
    const Ids ids = tok.encode(text);
    ASSERT_EQ(ids.size(), text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
      EXPECT_EQ(ids[i], static_cast<unsigned char>(text[i]));
    }
    EXPECT_EQ(tok.decode(ids), text);
  }
  EXPECT_EQ(tok.token_bytes(0xE9), "\xe9");
}

TEST(BytesTokenizer, RejectsOutOfRangeIds) {
  const tconst::BytesTokenizer tok;
  expect_error([&] { tok.decode({65, 256}); }, {"256", "out of range"});
  expect_error([&] { tok.token_bytes(-1); }, {"-1", "out of range"});
}

// ---- UTF-8 helpers -----------------------------------------------------------------------------

TEST(Utf8, ReplacesMaximalIllFormedParts) {
  EXPECT_EQ(tconst::to_valid_utf8("caf\xc3\xa9 \xf0\x9f\x98\x80"), "caf\xc3\xa9 \xf0\x9f\x98\x80");
  EXPECT_EQ(tconst::to_valid_utf8("a\xff"
                                  "b"),
            "a\uFFFD"
            "b");
  EXPECT_EQ(tconst::to_valid_utf8("\xe2\x82"
                                  "A"),
            "\uFFFD"
            "A");                                                          // cut-off character
  EXPECT_EQ(tconst::to_valid_utf8("\xc0\xaf"), "\uFFFD\uFFFD");            // overlong '/'
  EXPECT_EQ(tconst::to_valid_utf8("\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
  EXPECT_EQ(tconst::to_valid_utf8("\xf4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");  // > U+10FFFF
  EXPECT_EQ(tconst::to_valid_utf8("x\xf0\x9f\x98"), "x\uFFFD");  // truncated at the end
  EXPECT_TRUE(tconst::is_valid_utf8("\xe6\x97\xa5\xe6\x9c\xac"));
  EXPECT_FALSE(tconst::is_valid_utf8("\xe6\x97"));
}

// ---- GPT-2 byte alphabet and character classes -------------------------------------------------

TEST(Gpt2Alphabet, IsTheGpt2Table) {
  using tconst::detail::kGpt2ByteToUnicode;
  EXPECT_EQ(kGpt2ByteToUnicode[' '], U'\u0120');   // "Ġ"
  EXPECT_EQ(kGpt2ByteToUnicode['\n'], U'\u010A');  // "Ċ"
  EXPECT_EQ(kGpt2ByteToUnicode['\t'], U'\u0109');  // "ĉ"
  EXPECT_EQ(kGpt2ByteToUnicode[0], U'\u0100');
  EXPECT_EQ(kGpt2ByteToUnicode['a'], U'a');
  EXPECT_EQ(kGpt2ByteToUnicode[0xFF], U'\u00FF');
  // A bijection onto 0..323 whose inverse is gpt2_unicode_to_byte.
  std::vector<bool> seen(tconst::detail::kGpt2UnicodeLimit, false);
  for (int b = 0; b < 256; ++b) {
    const char32_t cp = kGpt2ByteToUnicode[static_cast<std::size_t>(b)];
    ASSERT_LT(cp, tconst::detail::kGpt2UnicodeLimit);
    EXPECT_FALSE(seen[cp]);
    seen[cp] = true;
    EXPECT_EQ(tconst::detail::gpt2_unicode_to_byte(cp), b);
  }
  EXPECT_EQ(tconst::detail::gpt2_unicode_to_byte(U' '), -1);
  EXPECT_EQ(tconst::detail::gpt2_unicode_to_byte(U'\u0144'), -1);
}

TEST(Gpt2Alphabet, CharacterClasses) {
  using tconst::detail::CharClass;
  using tconst::detail::classify;
  for (const char32_t c : {U'a', U'Z', U'é', U'Å', U'ß', U'Ω', U'λ', U'Ж', U'я', U'日', U'の',
                           U'한', U'ש', U'م', U'न', U'ｆ', U'ª'}) {
    EXPECT_EQ(classify(c), CharClass::kLetter) << std::hex << static_cast<uint32_t>(c);
  }
  for (const char32_t c : {U'0', U'9', U'٣', U'३', U'½', U'Ⅻ', U'①', U'²', U'𝟘'}) {
    EXPECT_EQ(classify(c), CharClass::kNumber) << std::hex << static_cast<uint32_t>(c);
  }
  for (const char32_t c :
       {U' ', U'\t', U'\n', U'\r', U'\v', U'\f', U'\u0085', U'\u00A0', U'\u2003', U'\u3000'}) {
    EXPECT_EQ(classify(c), CharClass::kSpace) << std::hex << static_cast<uint32_t>(c);
  }
  // Emoji, punctuation, symbols, combining marks and joiners are "other".
  for (const char32_t c : {U'😀', U'!', U'\'', U'€', U'∑', U'\u0301', U'\u0947', U'\u200D',
                           U'\uFEFF', U'\u0000', U'—', U'。'}) {
    EXPECT_EQ(classify(c), CharClass::kOther) << std::hex << static_cast<uint32_t>(c);
  }
}

// ---- pre-tokenisation --------------------------------------------------------------------------

std::vector<std::string> split(std::string_view text) {
  std::vector<std::string> pieces;
  for (const std::string_view piece : tconst::detail::gpt2_pretokenize(text)) {
    pieces.emplace_back(piece);
  }
  return pieces;
}

using Pieces = std::vector<std::string>;

TEST(Gpt2Pretokenizer, WordsNumbersAndOther) {
  EXPECT_EQ(split(""), Pieces{});
  EXPECT_EQ(split("Hello world"), (Pieces{"Hello", " world"}));
  EXPECT_EQ(split("Hello, world!"), (Pieces{"Hello", ",", " world", "!"}));
  EXPECT_EQ(split("abc123def 456 7.5"), (Pieces{"abc", "123", "def", " 456", " 7", ".", "5"}));
  EXPECT_EQ(split("hi!!? ?!x"), (Pieces{"hi", "!!?", " ?!", "x"}));
  EXPECT_EQ(split("a+b=c"), (Pieces{"a", "+", "b", "=", "c"}));
  EXPECT_EQ(split("café naïve"), (Pieces{"café", " naïve"}));
  EXPECT_EQ(split("cafe\u0301"), (Pieces{"cafe", "\u0301"}));  // a combining mark is "other"
  EXPECT_EQ(split("Καλημέρα κόσμε"), (Pieces{"Καλημέρα", " κόσμε"}));
  EXPECT_EQ(split("Привет, мир"), (Pieces{"Привет", ",", " мир"}));
  EXPECT_EQ(split("日本語のテキスト"), (Pieces{"日本語のテキスト"}));
  EXPECT_EQ(split("中文，世界。"), (Pieces{"中文", "，", "世界", "。"}));
  EXPECT_EQ(split("x 😀😀 y"), (Pieces{"x", " 😀😀", " y"}));
  EXPECT_EQ(split("Ⅻ½٣"), (Pieces{"Ⅻ½٣"}));
}

TEST(Gpt2Pretokenizer, Contractions) {
  EXPECT_EQ(split("I'm you'll they're we've he'd it's don't"),
            (Pieces{"I", "'m", " you", "'ll", " they", "'re", " we", "'ve", " he", "'d", " it",
                    "'s", " don", "'t"}));
  // Upper case is not a contraction; the apostrophe then starts an "other" run.
  EXPECT_EQ(split("IT'S"), (Pieces{"IT", "'", "S"}));
  EXPECT_EQ(split("'s'S"), (Pieces{"'s", "'", "S"}));
  EXPECT_EQ(split("''s"), (Pieces{"''", "s"}));
  EXPECT_EQ(split("x 's"), (Pieces{"x", " '", "s"}));
  EXPECT_EQ(split("'rex"), (Pieces{"'re", "x"}));
  EXPECT_EQ(split("'r"), (Pieces{"'", "r"}));
  EXPECT_EQ(split("'"), (Pieces{"'"}));
}

TEST(Gpt2Pretokenizer, Whitespace) {
  // A run of spaces before a word leaves its last space to the word (the (?!\S) lookahead).
  EXPECT_EQ(split("a  b"), (Pieces{"a", " ", " b"}));
  EXPECT_EQ(split("a    b"), (Pieces{"a", "   ", " b"}));
  EXPECT_EQ(split("   lead"), (Pieces{"  ", " lead"}));
  // At the end of the text the whole run is one piece.
  EXPECT_EQ(split("trail   "), (Pieces{"trail", "   "}));
  EXPECT_EQ(split(" "), (Pieces{" "}));
  EXPECT_EQ(split("\n"), (Pieces{"\n"}));
  EXPECT_EQ(split("  \n  \n"), (Pieces{"  \n  \n"}));
  // A newline is no "optional space": it stays alone before the word.
  EXPECT_EQ(split("a\nb"), (Pieces{"a", "\n", "b"}));
  EXPECT_EQ(split("a\n\n\nb"), (Pieces{"a", "\n\n", "\n", "b"}));
  EXPECT_EQ(split("a \n b"), (Pieces{"a", " \n", " b"}));
  EXPECT_EQ(split("\t\tx\ty"), (Pieces{"\t", "\t", "x", "\t", "y"}));
  EXPECT_EQ(split("x\r\n y"), (Pieces{"x", "\r\n", " y"}));
  EXPECT_EQ(split("x \t 1"), (Pieces{"x", " \t", " 1"}));
  EXPECT_EQ(split("no\u00a0break"), (Pieces{"no", "\u00a0", "break"}));
  EXPECT_EQ(split("  !"), (Pieces{" ", " !"}));
}

TEST(Gpt2Pretokenizer, InvalidUtf8BytesAreOther) {
  EXPECT_EQ(split("a\xff\xfe"
                  "b"),
            (Pieces{"a", "\xff\xfe", "b"}));
  EXPECT_EQ(split(" \xc3"), (Pieces{" \xc3"}));
  EXPECT_EQ(split("x\xe6\x97 y"), (Pieces{"x", "\xe6\x97", " y"}));
  // Pieces always concatenate to the input.
  std::mt19937 rng(11);
  for (int round = 0; round < 50; ++round) {
    const std::string text = random_bytes(rng, 200);
    std::string joined;
    for (const auto& piece : split(text)) {
      EXPECT_FALSE(piece.empty());
      joined += piece;
    }
    EXPECT_EQ(joined, text);
  }
}

// ---- GPT-2 BPE on a hand-made vocabulary -------------------------------------------------------

TEST(Gpt2Bpe, SmallVocabularyEncodes) {
  const SmallVocab v = hello_vocab();
  const auto tok = v.load();
  EXPECT_EQ(tok->name(), "gpt2");
  EXPECT_EQ(tok->vocab_size(), v.next_id);
  EXPECT_EQ(tok->num_merges(), 11u);
  EXPECT_EQ(tok->encode("hello world"), (Ids{v.id("hello"), v.id(" world")}));
  EXPECT_EQ(tok->encode("hello"), (Ids{v.id("hello")}));
  EXPECT_EQ(tok->encode("help"), (Ids{v.id("he"), 'l', 'p'}));
  EXPECT_EQ(tok->encode(" hello"), (Ids{' ', v.id("hello")}));  // no merge joins ' ' and "hello"
  EXPECT_EQ(tok->encode("world"), (Ids{'w', v.id("or"), 'l', 'd'}));
  EXPECT_EQ(tok->encode("hello, world!"), (Ids{v.id("hello"), ',', v.id(" world"), '!'}));
  EXPECT_EQ(tok->token_bytes(v.id(" world")), " world");
  EXPECT_EQ(tok->token_id("Ġworld"), v.id(" world"));
  EXPECT_EQ(tok->token_id("nonsense"), std::nullopt);
}

TEST(Gpt2Bpe, MergesEveryOccurrenceLeftToRight) {
  const SmallVocab v = hello_vocab();
  const auto tok = v.load();
  const int32_t a = 'a';
  const int32_t aa = v.id("aa");
  const int32_t aaaa = v.id("aaaa");
  EXPECT_EQ(tok->bpe("aaa"), (Ids{aa, a}));  // not (a, aa): the left pair goes first
  EXPECT_EQ(tok->bpe("aaaa"), (Ids{aaaa}));
  EXPECT_EQ(tok->bpe("aaaaa"), (Ids{aaaa, a}));
  EXPECT_EQ(tok->bpe("aaaaaaa"), (Ids{aaaa, aa, a}));
}

TEST(Gpt2Bpe, LowestRankWinsOverPosition) {
  // "b c" comes before "a b" in the merges list, so "abc" becomes a + bc, not ab + c.
  const SmallVocab v({{"b", "c"}, {"a", "b"}});
  const auto tok = v.load();
  EXPECT_EQ(tok->bpe("abc"), (Ids{'a', v.id("bc")}));
  EXPECT_EQ(tok->bpe("abd"), (Ids{v.id("ab"), 'd'}));
}

TEST(Gpt2Bpe, FinishesAPassBeforeALowerRankedNewPair) {
  // "ab a" (rank 0) can only appear after "a b" (rank 1) has merged. encoder.py merges every
  // "a b" in "abab" in one pass, giving ab + ab, before it looks at ranks again; merging one pair
  // at a time by rank would give aba + b instead.
  const SmallVocab v({{"ab", "a"}, {"a", "b"}});
  const auto tok = v.load();
  EXPECT_EQ(tok->bpe("abab"), (Ids{v.id("ab"), v.id("ab")}));
  EXPECT_EQ(tok->bpe("aba"), (Ids{v.id("aba")}));
}

TEST(Gpt2Bpe, RoundTripsArbitraryBytes) {
  const auto tok = hello_vocab().load();
  std::mt19937 rng(3);
  const std::vector<std::string> texts = {
      "", all_bytes(), "\xff\xfe hello \xc0\xaf world \xed\xa0\x80", random_bytes(rng, 3000),
      "hello  world\n\n\t 😀 日本 café"};
  for (const std::string& text : texts) EXPECT_EQ(tok->decode(tok->encode(text)), text);
}

TEST(Gpt2Bpe, LongPieceIsFast) {
  // 200k letters form one piece; a quadratic BPE would take minutes here.
  const auto tok = hello_vocab().load();
  const std::string text(200000, 'a');
  const Ids ids = tok->encode(text);
  EXPECT_EQ(ids.size(), 50000u);
  EXPECT_EQ(tok->decode(ids), text);
}

TEST(Gpt2Bpe, EncodeIsThreadSafe) {
  const SmallVocab v = hello_vocab();
  const auto tok = v.load();
  const std::string text = "hello world, aaaaa hello worlds! hellohello";
  const Ids expected = tok->encode(text);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        // Vary the text so that threads also insert into the cache at the same time.
        const std::string varied = text + " " + std::to_string(i * 4 + t) + "x" + std::to_string(i);
        if (tok->decode(tok->encode(varied)) != varied) ++mismatches[static_cast<std::size_t>(t)];
        if (tok->encode(text) != expected) ++mismatches[static_cast<std::size_t>(t)];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
  EXPECT_GT(tok->cache_size(), 0u);
}

TEST(Gpt2Bpe, LoadsEveryFileLayout) {
  const SmallVocab v = hello_vocab();
  const std::string text = "hello world aaaaa";
  const Ids expected = v.load()->encode(text);

  TempDir hf("hf");
  hf.write("vocab.json", v.vocab_json());
  hf.write("merges.txt", v.merges_txt());
  EXPECT_EQ(tconst::load_tokenizer(hf.path())->encode(text), expected);
  EXPECT_EQ(tconst::load_tokenizer(hf.path() + "/vocab.json")->encode(text), expected);

  TempDir openai("openai");
  openai.write("encoder.json", v.vocab_json());
  // Windows line endings and no "#version" line are both accepted.
  std::string crlf;
  for (const auto& [left, right] : v.merges) crlf += left + " " + right + "\r\n";
  openai.write("vocab.bpe", crlf);
  EXPECT_EQ(tconst::load_tokenizer(openai.path())->encode(text), expected);

  TempDir tj("tokenizer_json");
  const std::string file = tj.write("tokenizer.json", v.tokenizer_json().dump(2));
  EXPECT_EQ(tconst::load_tokenizer(file)->encode(text), expected);
  EXPECT_EQ(tconst::load_tokenizer(tj.path())->encode(text), expected);  // found in the directory
  tj.write("tokenizer.json", v.tokenizer_json(/*merges_as_arrays=*/true).dump());
  EXPECT_EQ(tconst::load_tokenizer(file)->encode(text), expected);

  const auto via_metadata = tconst::make_tokenizer("gpt2", hf.path());
  EXPECT_EQ(via_metadata->name(), "gpt2");
  EXPECT_EQ(via_metadata->encode(text), expected);
}

TEST(Gpt2Bpe, TokenizerJsonAddedTokens) {
  const SmallVocab v = hello_vocab();
  json j = v.tokenizer_json();
  j["added_tokens"] = json::array({
      {{"id", v.next_id}, {"content", "<|endoftext|>"}, {"special", true}},
      {{"id", v.next_id + 1}, {"content", "<my token>"}, {"special", false}},
  });
  const auto tok = Gpt2BpeTokenizer::from_tokenizer_json_string(j.dump());
  EXPECT_EQ(tok->vocab_size(), v.next_id + 2);
  EXPECT_EQ(tok->token_id("<|endoftext|>"), v.next_id);
  EXPECT_EQ(tok->decode({v.id("hello"), v.next_id}), "hello<|endoftext|>");
  // The content has a raw space, outside the byte alphabet: its bytes are the content as is.
  EXPECT_EQ(tok->token_bytes(v.next_id + 1), "<my token>");
  // Text is always encoded as plain text, as OpenAI's encoder does.
  const Ids ids = tok->encode("<|endoftext|>");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), v.next_id), 0);
  EXPECT_EQ(tok->decode(ids), "<|endoftext|>");
}

TEST(Gpt2Bpe, TokenizerJsonAddPrefixSpace) {
  const SmallVocab v = hello_vocab();
  json j = v.tokenizer_json();
  j["pre_tokenizer"]["add_prefix_space"] = true;
  const auto tok = Gpt2BpeTokenizer::from_tokenizer_json_string(j.dump());
  EXPECT_TRUE(tok->add_prefix_space());
  EXPECT_EQ(tok->encode("world"), (Ids{v.id(" world")}));
  EXPECT_EQ(tok->encode(" world"), (Ids{v.id(" world")}));
}

// ---- bad tokenizer files -----------------------------------------------------------------------

TEST(TokenizerErrors, MissingFiles) {
  TempDir dir("dir");
  expect_error([&] { tconst::load_tokenizer(dir.path() + "/nope"); }, {"does not exist", "nope"});
  expect_error([&] { tconst::load_tokenizer(dir.path()); },
               {"holds no tokenizer files", "vocab.json + merges.txt"});
  dir.write("vocab.json", hello_vocab().vocab_json());
  expect_error([&] { tconst::load_tokenizer(dir.path()); }, {"has vocab.json but not merges.txt"});
  expect_error([&] { tconst::load_tokenizer(dir.path() + "/vocab.json"); },
               {"needs its merges file", "merges.txt"});
  expect_error([&] { Gpt2BpeTokenizer::from_files(dir.path() + "/vocab.json", "/no/merges.txt"); },
               {"cannot open merges file", "/no/merges.txt"});
}

TEST(TokenizerErrors, MalformedJson) {
  const std::string merges = hello_vocab().merges_txt();
  expect_error([&] { Gpt2BpeTokenizer::from_strings("{\"a\": 0,", merges); },
               {"vocab.json is not valid JSON"});
  expect_error([&] { Gpt2BpeTokenizer::from_strings("", merges); }, {"not valid JSON"});
  expect_error([&] { Gpt2BpeTokenizer::from_strings("[1, 2]", merges); },
               {"expected a JSON object", "array"});
  expect_error([&] { Gpt2BpeTokenizer::from_tokenizer_json_string("{\"model\": {\"vocab\": "); },
               {"tokenizer.json is not valid JSON"});
  TempDir dir("dir");
  const std::string file = dir.write("tokenizer.json", "not json at all");
  expect_error([&] { tconst::load_tokenizer(file); }, {file, "not valid JSON"});
}

TEST(TokenizerErrors, BadIds) {
  const SmallVocab v = hello_vocab();
  const std::string merges = v.merges_txt();
  auto with = [&](const std::function<void(json&)>& change) {
    json vocab = v.vocab;
    change(vocab);
    return vocab.dump();
  };
  expect_error(
      [&] { Gpt2BpeTokenizer::from_strings(with([](json& j) { j["a"] = "97"; }), merges); },
      {"the id of \"a\"", "must be an integer", "string"});
  expect_error(
      [&] { Gpt2BpeTokenizer::from_strings(with([](json& j) { j["a"] = 97.5; }), merges); },
      {"must be an integer", "number"});
  expect_error(
      [&] { Gpt2BpeTokenizer::from_strings(with([](json& j) { j["a"] = nullptr; }), merges); },
      {"must be an integer", "null"});
  // Two tokens with one id.
  expect_error([&] { Gpt2BpeTokenizer::from_strings(with([](json& j) { j["zz"] = 5; }), merges); },
               {"id 5 is given to both", "\"zz\"", "unique"});
  // A gap: ids 0..V-1 with one moved past the end.
  expect_error(
      [&] { Gpt2BpeTokenizer::from_strings(with([](json& j) { j["hello"] = 9999; }), merges); },
      {"contiguous", "\"hello\" has id 9999", "is missing"});
  expect_error(
      [&] { Gpt2BpeTokenizer::from_strings(with([](json& j) { j["hello"] = -1; }), merges); },
      {"contiguous", "has id -1"});
  // A key twice in the file (a JSON object cannot say that, so write it by hand).
  std::string dup = v.vocab_json();
  dup.insert(1, "\"hello\": 3, ");
  expect_error([&] { Gpt2BpeTokenizer::from_strings(dup, merges); }, {"\"hello\" appears twice"});
  expect_error([&] { Gpt2BpeTokenizer::from_strings("{}", ""); }, {"vocabulary is empty"});
}

TEST(TokenizerErrors, BadTokens) {
  const SmallVocab v = hello_vocab();
  const std::string merges = v.merges_txt();
  json no_space = v.vocab;
  const int32_t moved = no_space["Ġ"].get<int32_t>();
  no_space.erase("Ġ");
  no_space["Ġx"] = moved;  // keeps the ids contiguous
  expect_error([&] { Gpt2BpeTokenizer::from_strings(no_space.dump(), ""); },
               {"no token for the byte 0x20", "\"Ġ\"", "all 256"});
  json raw_space = v.vocab;
  raw_space["hello world"] = v.next_id;
  expect_error([&] { Gpt2BpeTokenizer::from_strings(raw_space.dump(), merges); },
               {"\"hello world\"", "not in GPT-2's byte alphabet"});
  json empty = v.vocab;
  empty[""] = v.next_id;
  expect_error([&] { Gpt2BpeTokenizer::from_strings(empty.dump(), merges); }, {"empty string"});
}

TEST(TokenizerErrors, BadMerges) {
  const SmallVocab v = hello_vocab();
  const std::string vocab = v.vocab_json();
  expect_error([&] { Gpt2BpeTokenizer::from_strings(vocab, "#version: 0.2\nh e\nhe ll o\n"); },
               {"merges.txt line 3", "two tokens separated by one space", "\"he ll o\""});
  expect_error([&] { Gpt2BpeTokenizer::from_strings(vocab, "h e\nhello\n"); },
               {"merges.txt line 2", "two tokens"});
  expect_error([&] { Gpt2BpeTokenizer::from_strings(vocab, "h  e\n"); }, {"line 1", "two tokens"});
  expect_error([&] { Gpt2BpeTokenizer::from_strings(vocab, "h e\nq xyz\n"); },
               {"merges.txt line 2", "\"xyz\"", "not in the vocabulary"});
  expect_error([&] { Gpt2BpeTokenizer::from_strings(vocab, "h e\nx y\n"); },
               {"merges.txt line 2", "gives \"xy\"", "not in the vocabulary"});
  TempDir dir("dir");
  dir.write("encoder.json", vocab);
  const std::string bpe = dir.write("vocab.bpe", "#version: 0.2\nh e\nzz top\n");
  expect_error([&] { tconst::load_tokenizer(dir.path()); }, {bpe + " line 3", "\"zz\""});
}

TEST(TokenizerErrors, BadTokenizerJson) {
  const SmallVocab v = hello_vocab();
  auto load = [](const json& j) { Gpt2BpeTokenizer::from_tokenizer_json_string(j.dump()); };
  expect_error([&] { load(json{{"version", "1.0"}}); }, {"no \"model\" object"});
  expect_error([&] { load(json::array()); }, {"expected a JSON object"});
  json j = v.tokenizer_json();
  j["model"]["type"] = "Unigram";
  expect_error([&] { load(j); }, {"model.type", "Unigram", "only BPE"});
  j = v.tokenizer_json();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  expect_error([&] { load(j); }, {"pre_tokenizer", "Metaspace", "ByteLevel"});
  j = v.tokenizer_json();
  j["pre_tokenizer"]["use_regex"] = false;
  expect_error([&] { load(j); }, {"use_regex"});
  j = v.tokenizer_json();
  j["normalizer"] = {{"type", "NFC"}};
  expect_error([&] { load(j); }, {"normalizer", "NFC"});
  j = v.tokenizer_json();
  j["model"]["continuing_subword_prefix"] = "##";
  expect_error([&] { load(j); }, {"continuing_subword_prefix"});
  j = v.tokenizer_json();
  j["model"]["merges"] = "h e";
  expect_error([&] { load(j); }, {"model.merges must be an array", "string"});
  j = v.tokenizer_json();
  j["model"]["merges"][3] = 42;
  expect_error([&] { load(j); }, {"model.merges[3]", "number 42"});
  j = v.tokenizer_json();
  j["model"]["merges"][1] = json::array({"l", "nope"});
  expect_error([&] { load(j); }, {"model.merges[1]", "\"nope\"", "not in the vocabulary"});
  j = v.tokenizer_json();
  j["model"]["vocab"]["h"] = "7";
  expect_error([&] { load(j); }, {"model.vocab", "\"h\"", "must be an integer"});
  j = v.tokenizer_json();
  j["added_tokens"] = json::array({{{"id", 104}, {"content", "<special>"}}});
  expect_error([&] { load(j); }, {"added_tokens[0]", "id 104", "already belongs to \"h\""});
  j = v.tokenizer_json();
  j["added_tokens"] = json::array({{{"id", "x"}, {"content", "<special>"}}});
  expect_error([&] { load(j); }, {"added_tokens[0].id", "must be an integer"});
  j = v.tokenizer_json();
  j["added_tokens"] = json::array({{{"id", v.next_id + 5}, {"content", "<far>"}}});
  expect_error([&] { load(j); }, {"contiguous", "\"<far>\""});
}

TEST(TokenizerErrors, TruncatedFilesNeverCrash) {
  // Every prefix of a valid tokenizer.json either loads or throws tconst::Error.
  const std::string text = SmallVocab({{"h", "e"}, {"l", "l"}}).tokenizer_json().dump();
  int errors = 0;
  for (std::size_t cut = 0; cut < text.size(); cut += 7) {
    try {
      Gpt2BpeTokenizer::from_tokenizer_json_string(std::string_view(text).substr(0, cut));
    } catch (const tconst::Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(TokenizerErrors, BadIdsAndNames) {
  const auto tok = hello_vocab().load();
  expect_error([&] { tok->decode({1, tok->vocab_size()}); }, {"out of range", "gpt2"});
  expect_error([&] { tok->token_bytes(-3); }, {"-3", "out of range"});
  expect_error([] { tconst::make_tokenizer_by_name("gpt2"); }, {"needs its vocabulary files"});
  expect_error([] { tconst::make_tokenizer_by_name("sentencepiece"); },
               {"unknown tokenizer 'sentencepiece'"});
  expect_error([] { tconst::make_tokenizer("gpt2", ""); }, {"pass --tokenizer PATH"});
  expect_error([] { tconst::make_tokenizer("bytes", "/some/dir"); }, {"takes no files"});
  expect_error([] { tconst::make_tokenizer("llama", ""); }, {"unknown tokenizer 'llama'"});
  EXPECT_EQ(tconst::make_tokenizer_by_name("bytes")->name(), "bytes");
  EXPECT_EQ(tconst::make_tokenizer("bytes", "")->vocab_size(), 256);
}

// ---- streaming decoding ------------------------------------------------------------------------

TEST(StreamDecoder, HoldsBackSplitCharacters) {
  const tconst::BytesTokenizer tok;
  const std::string text = "héllo 😀 世界 ∑ end";
  tconst::StreamDecoder stream(tok);
  std::string printed;
  int held = 0;
  for (const int32_t id : tok.encode(text)) {
    const std::string out = stream.push(id);
    EXPECT_TRUE(tconst::is_valid_utf8(out)) << "emitted half a character";
    EXPECT_LE(stream.pending_bytes(), 3u);
    if (out.empty()) ++held;
    printed += out;
  }
  printed += stream.flush();
  EXPECT_EQ(printed, text);
  EXPECT_EQ(held, 1 + 3 + 2 + 2 + 2);  // the bytes before the last of each multi-byte character
}

TEST(StreamDecoder, SplitsAcrossMultiByteTokens) {
  // Tokens whose boundaries cut characters: "日" = E6 97 A5 split as [E6] [97 A5 E6] [97 A5].
  const SmallVocab v({{"\x97", "\xa5"}, {"\x97\xa5", "\xe6"}});
  const auto tok = v.load();
  tconst::StreamDecoder stream(*tok);
  EXPECT_EQ(stream.push(0xE6), "");
  EXPECT_EQ(stream.push(v.id("\x97\xa5\xe6")), "日");
  EXPECT_EQ(stream.pending_bytes(), 1u);
  EXPECT_EQ(stream.push(v.id("\x97\xa5")), "日");
  EXPECT_EQ(stream.flush(), "");
}

TEST(StreamDecoder, InvalidBytes) {
  const tconst::BytesTokenizer tok;
  tconst::StreamDecoder replace(tok);
  EXPECT_EQ(replace.push(tok.encode("a\xff")), "a\uFFFD");
  EXPECT_EQ(replace.push(0xE2), "");
  EXPECT_EQ(replace.push(0x82), "");
  EXPECT_EQ(replace.push('A'), "\uFFFDA");  // E2 82 never got its third byte
  EXPECT_EQ(replace.push(0xF0), "");
  EXPECT_EQ(replace.flush(), "\uFFFD");  // the stream ended inside a character
  EXPECT_EQ(replace.pending_bytes(), 0u);

  tconst::StreamDecoder raw(tok, tconst::StreamDecoder::InvalidBytes::kPassThrough);
  EXPECT_EQ(raw.push(tok.encode("a\xff")), "a\xff");
  EXPECT_EQ(raw.push(tok.encode("\xe2\x82"
                                "A")),
            "\xe2\x82"
            "A");
  EXPECT_EQ(raw.push(0xF0), "");
  EXPECT_EQ(raw.flush(), "\xf0");

  // An out-of-range id throws and changes nothing.
  EXPECT_EQ(replace.push(0xC3), "");
  expect_error([&] { replace.push(999); }, {"out of range"});
  expect_error([&] { replace.push(Ids{0xA9, 999}); }, {"out of range"});
  EXPECT_EQ(replace.push(0xA9), "é");
}

TEST(StreamDecoder, MatchesWholeDecodeOnRandomBytes) {
  const tconst::BytesTokenizer tok;
  std::mt19937 rng(5);
  for (int round = 0; round < 100; ++round) {
    // Mostly valid text with some damage, so both paths are exercised.
    std::string text = "añ😀日x" + random_bytes(rng, 3) + "ü€";
    text += random_bytes(rng, 5);
    tconst::StreamDecoder replace(tok);
    tconst::StreamDecoder raw(tok, tconst::StreamDecoder::InvalidBytes::kPassThrough);
    std::string replaced;
    std::string passed;
    for (const int32_t id : tok.encode(text)) {
      replaced += replace.push(id);
      passed += raw.push(id);
    }
    replaced += replace.flush();
    passed += raw.flush();
    EXPECT_EQ(replaced, tconst::to_valid_utf8(text));
    EXPECT_EQ(passed, text);
  }
}

// ---- conformance with the real GPT-2 vocabulary ------------------------------------------------

std::string gpt2_vocab_dir() {
  if (const char* env = std::getenv("TCONST_GPT2_VOCAB_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
#ifdef TCONST_GPT2_VOCAB_DIR
  return TCONST_GPT2_VOCAB_DIR;
#else
  return "";
#endif
}

class Gpt2Conformance : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = gpt2_vocab_dir();
    std::error_code ec;
    const bool present =
        !dir.empty() && ((fs::is_regular_file(fs::path(dir) / "encoder.json", ec) &&
                          fs::is_regular_file(fs::path(dir) / "vocab.bpe", ec)) ||
                         (fs::is_regular_file(fs::path(dir) / "vocab.json", ec) &&
                          fs::is_regular_file(fs::path(dir) / "merges.txt", ec)));
    if (present) tokenizer_ = tconst::load_tokenizer(dir).release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  void SetUp() override {
    if (tokenizer_ == nullptr) {
      GTEST_SKIP() << "GPT-2 vocabulary not found in '" << gpt2_vocab_dir()
                   << "'; run tools/fetch_gpt2_vocab.sh DIR and set TCONST_GPT2_VOCAB_DIR=DIR "
                      "(or configure with -DTCONST_GPT2_VOCAB_DIR=DIR)";
    }
  }

  struct Case {
    std::string text;
    Ids ids;
  };
  static std::vector<Case> cases() {
    const std::string path = std::string(TCONST_TEST_DATA_DIR) + "/tokenizer/gpt2_expected.json";
    std::ifstream in(path);
    EXPECT_TRUE(in) << "cannot open " << path;
    std::vector<Case> out;
    if (!in) return out;
    const json j = json::parse(in);
    for (const json& c : j.at("cases")) {
      out.push_back({c.at("text").get<std::string>(), c.at("ids").get<Ids>()});
    }
    return out;
  }

  static inline tconst::Tokenizer* tokenizer_ = nullptr;
};

TEST_F(Gpt2Conformance, Vocabulary) {
  EXPECT_EQ(tokenizer_->name(), "gpt2");
  EXPECT_EQ(tokenizer_->vocab_size(), 50257);
  const auto* gpt2 = dynamic_cast<const Gpt2BpeTokenizer*>(tokenizer_);
  ASSERT_NE(gpt2, nullptr);
  EXPECT_EQ(gpt2->num_merges(), 50000u);
  EXPECT_EQ(gpt2->token_id("<|endoftext|>"), 50256);
  EXPECT_EQ(tokenizer_->token_bytes(50256), "<|endoftext|>");
  EXPECT_EQ(tokenizer_->encode("Hello, world!"), (Ids{15496, 11, 995, 0}));
}

TEST_F(Gpt2Conformance, MatchesTheJavaScriptEncoder) {
  const std::vector<Case> all = cases();
  ASSERT_GE(all.size(), 30u);
  for (const Case& c : all) {
    EXPECT_EQ(tokenizer_->encode(c.text), c.ids) << "text: " << json(c.text).dump();
    EXPECT_EQ(tokenizer_->decode(c.ids), c.text) << "text: " << json(c.text).dump();
    EXPECT_EQ(tokenizer_->decode(tokenizer_->encode(c.text)), c.text);
  }
}

TEST_F(Gpt2Conformance, StreamsExactlyTheOriginalText) {
  int split_characters = 0;  // tokens that end inside a character
  for (const Case& c : cases()) {
    tconst::StreamDecoder stream(*tokenizer_);
    std::string printed;
    for (const int32_t id : c.ids) {
      const std::string out = stream.push(id);
      EXPECT_TRUE(tconst::is_valid_utf8(out));
      if (stream.pending_bytes() > 0) ++split_characters;
      printed += out;
    }
    printed += stream.flush();
    EXPECT_EQ(printed, c.text);
  }
  // The emoji, CJK and Devanagari cases do cut characters; otherwise this test would prove little.
  EXPECT_GT(split_characters, 10);
}

TEST_F(Gpt2Conformance, RoundTripsArbitraryBytes) {
  std::mt19937 rng(9);
  for (int round = 0; round < 20; ++round) {
    const std::string text = random_bytes(rng, 500);
    EXPECT_EQ(tokenizer_->decode(tokenizer_->encode(text)), text);
  }
}

}  // namespace
