// GPT-2 byte-level BPE, loaded from
//   * vocab.json + merges.txt (Hugging Face file names) or encoder.json + vocab.bpe (OpenAI's), or
//   * a Hugging Face tokenizer.json whose model is BPE with the ByteLevel pre-tokenizer.
//
// Encoding: the text is cut into pieces by GPT-2's pre-tokenisation rule (gpt2_pretokenizer.hpp),
// each piece's bytes become single-byte tokens, and then, as in OpenAI's encoder.py, the adjacent
// pair whose merge comes first in the merges list is merged everywhere in the piece (left to
// right, without overlaps), and again, until no adjacent pair has a merge. Added/special tokens
// such as <|endoftext|> are never produced from text: "<|endoftext|>" in the input is encoded as
// the ordinary characters it consists of, exactly as encoder.py does; find a special token's id
// with token_id().
//
// Thread safety: encode() keeps a per-piece cache (piece bytes -> ids) behind a mutex, so one
// tokenizer object may be used from several threads at once; every other member is read-only
// after construction.
//
// Loading validates the files and reports problems as tconst::Error: unreadable files, malformed
// JSON, a key twice in one object, ids that are not integers or not exactly 0..V-1, a vocabulary
// string that is not spelled in GPT-2's byte alphabet, a missing single-byte token, a merges line
// that is not two tokens, and a merge that names or produces a token not in the vocabulary. A merge
// listed twice keeps its later position, as in encoder.py and Hugging Face tokenizers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/tokenizer/gpt2_pretokenizer.hpp"
#include "tconst/tokenizer/interface.hpp"
#include "tconst/tokenizer/json_util.hpp"
#include "tconst/tokenizer/utf8.hpp"
namespace tconst {
inline namespace TCONST_ABI {

class Gpt2BpeTokenizer final : public Tokenizer {
 public:
  /// One vocabulary entry as read from a file.
  struct VocabEntry {
    std::string token;  // as spelled in the file
    int64_t id = 0;
    // False: `token` is spelled in GPT-2's byte alphabet and must decode through it (vocab.json,
    // model.vocab). True: an added token of tokenizer.json, whose bytes follow Hugging Face's
    // ByteLevel decoder: the byte alphabet if every character is in it, else the UTF-8 as is.
    bool added = false;
  };

  /// One line of merges.txt: merge `left` followed by `right` into `left + right`.
  struct Merge {
    std::string left;
    std::string right;
    std::string where;  // for messages, e.g. "merges.txt line 7"
  };

  /// Reads vocab.json (or encoder.json) and merges.txt (or vocab.bpe).
  static std::unique_ptr<Gpt2BpeTokenizer> from_files(const std::string& vocab_json_path,
                                                      const std::string& merges_path) {
    const std::string vocab = detail::read_text_file(vocab_json_path, "vocabulary file");
    const std::string merges = detail::read_text_file(merges_path, "merges file");
    return from_strings(vocab, merges, vocab_json_path, merges_path);
  }

  /// The same from the files' contents; the source names only appear in error messages.
  static std::unique_ptr<Gpt2BpeTokenizer> from_strings(
      std::string_view vocab_json, std::string_view merges_txt,
      const std::string& vocab_source = "vocab.json",
      const std::string& merges_source = "merges.txt") {
    const nlohmann::json root = detail::parse_json_strict(vocab_json, vocab_source);
    std::vector<VocabEntry> vocab = parse_vocab_object(root, vocab_source);
    std::vector<Merge> merges = parse_merges_text(merges_txt, merges_source);
    return std::unique_ptr<Gpt2BpeTokenizer>(
        new Gpt2BpeTokenizer(std::move(vocab), merges, vocab_source, false));
  }

  /// Reads a Hugging Face tokenizer.json.
  static std::unique_ptr<Gpt2BpeTokenizer> from_tokenizer_json(const std::string& path) {
    return from_tokenizer_json_string(detail::read_text_file(path, "tokenizer file"), path);
  }

  static std::unique_ptr<Gpt2BpeTokenizer> from_tokenizer_json_string(
      std::string_view json_text, const std::string& source = "tokenizer.json") {
    const nlohmann::json root = detail::parse_json_strict(json_text, source);
    if (!root.is_object()) {
      throw Error(source + ": expected a JSON object, got " + std::string(root.type_name()));
    }
    const auto model_it = root.find("model");
    if (model_it == root.end() || !model_it->is_object()) {
      throw Error(source + ": no \"model\" object, so this is not a Hugging Face tokenizer.json");
    }
    const nlohmann::json& model = *model_it;
    if (const auto type = model.find("type"); type != model.end() && *type != "BPE") {
      throw Error(source + ": model.type is " + detail::describe_json(*type) +
                  "; only BPE models (GPT-2 style byte-level BPE) are supported");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      const auto it = model.find(key);
      if (it != model.end() && !it->is_null() && *it != "") {
        throw Error(source + ": model." + key + " is " + detail::describe_json(*it) +
                    "; GPT-2 byte-level BPE has none, and it is not supported");
      }
    }
    if (const auto it = root.find("normalizer"); it != root.end() && !it->is_null()) {
      throw Error(source + ": has a normalizer (" + detail::describe_json(*it) +
                  "); GPT-2 byte-level BPE has none, and it is not supported");
    }
    const bool add_prefix_space = check_byte_level_pre_tokenizer(root, source);

    const auto vocab_it = model.find("vocab");
    if (vocab_it == model.end()) throw Error(source + ": model has no \"vocab\"");
    std::vector<VocabEntry> vocab = parse_vocab_object(*vocab_it, source + ": model.vocab");

    const auto merges_it = model.find("merges");
    if (merges_it == model.end() || !merges_it->is_array()) {
      throw Error(source + ": model.merges must be an array" +
                  (merges_it == model.end() ? std::string(", but it is missing")
                                            : ", got " + detail::describe_json(*merges_it)));
    }
    std::vector<Merge> merges;
    merges.reserve(merges_it->size());
    for (std::size_t i = 0; i < merges_it->size(); ++i) {
      const nlohmann::json& m = (*merges_it)[i];
      const std::string where = source + ": model.merges[" + std::to_string(i) + "]";
      // Older files write a merge as "a b", newer ones (tokenizers >= 0.20) as ["a", "b"].
      if (m.is_string()) {
        merges.push_back(split_merge_line(m.get_ref<const std::string&>(), where));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.push_back({m[0].get<std::string>(), m[1].get<std::string>(), where});
      } else {
        throw Error(where + " must be a string \"a b\" or an array of two strings, got " +
                    detail::describe_json(m));
      }
    }

    if (const auto added_it = root.find("added_tokens");
        added_it != root.end() && !added_it->is_null()) {
      merge_added_tokens(*added_it, source, vocab);
    }
    return std::unique_ptr<Gpt2BpeTokenizer>(
        new Gpt2BpeTokenizer(std::move(vocab), merges, source, add_prefix_space));
  }

  Gpt2BpeTokenizer(const Gpt2BpeTokenizer&) = delete;
  Gpt2BpeTokenizer& operator=(const Gpt2BpeTokenizer&) = delete;

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 1);
    std::string prefixed;
    // tokenizer.json's ByteLevel pre-tokenizer with add_prefix_space (RoBERTa style) encodes a
    // leading word like a word in the middle of a sentence; decode does not undo it.
    if (add_prefix_space_ && !text.empty() && text.front() != ' ') {
      prefixed.reserve(text.size() + 1);
      prefixed += ' ';
      prefixed += text;
      text = prefixed;
    }
    detail::gpt2_pretokenize(text, [&](std::string_view piece) { encode_piece(piece, ids); });
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (const int32_t id : ids) out += bytes_of(id);
    return out;
  }

  std::string token_bytes(int32_t id) const override { return bytes_of(id); }

  int32_t vocab_size() const override { return static_cast<int32_t>(id_bytes_.size()); }

  std::string name() const override { return "gpt2"; }

  /// The id of the token spelled `token` in the vocabulary file (e.g. "<|endoftext|>", "Ġthe").
  std::optional<int32_t> token_id(std::string_view token) const {
    const auto it = token_ids_.find(std::string(token));
    if (it == token_ids_.end()) return std::nullopt;
    return it->second;
  }

  std::size_t num_merges() const { return merges_.size(); }

  bool add_prefix_space() const { return add_prefix_space_; }

  /// The BPE of one pre-tokenised piece, without the cache (exposed for tests).
  std::vector<int32_t> bpe(std::string_view piece) const {
    std::vector<int32_t> out;
    run_bpe(piece, out);
    return out;
  }

  std::size_t cache_size() const {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    return cache_.size();
  }

 private:
  struct MergeResult {
    int32_t rank;
    int32_t merged;
  };

  // The cache only takes short pieces (long ones are rare and would make it hold a copy of the
  // input) and is emptied when it gets large, so memory stays bounded on endless input.
  static constexpr std::size_t kMaxCachedPieceBytes = 64;
  static constexpr std::size_t kMaxCacheEntries = std::size_t{1} << 17;

  Gpt2BpeTokenizer(std::vector<VocabEntry> vocab, const std::vector<Merge>& merges,
                   const std::string& source, bool add_prefix_space)
      : add_prefix_space_(add_prefix_space) {
    const std::vector<const VocabEntry*> by_id = check_ids(vocab, source);
    id_bytes_.resize(by_id.size());
    token_ids_.reserve(by_id.size());
    for (std::size_t id = 0; id < by_id.size(); ++id) {
      const VocabEntry& e = *by_id[id];
      id_bytes_[id] = token_to_bytes(e, source);
      if (!token_ids_.emplace(e.token, static_cast<int32_t>(id)).second) {
        // Only reachable through added tokens; vocabulary keys are unique JSON keys.
        throw Error(source + ": the token " + detail::quote_for_message(e.token) +
                    " has two ids, " + std::to_string(token_ids_.at(e.token)) + " and " +
                    std::to_string(id));
      }
    }
    for (int b = 0; b < 256; ++b) {
      std::string spelled;
      detail::append_utf8(spelled, detail::kGpt2ByteToUnicode[b]);
      const auto it = token_ids_.find(spelled);
      if (it == token_ids_.end()) {
        static constexpr char kHex[] = "0123456789ABCDEF";
        throw Error(source + ": the vocabulary has no token for the byte 0x" +
                    std::string{kHex[b >> 4], kHex[b & 15]} + " (spelled " +
                    detail::quote_for_message(spelled) +
                    "); a byte-level BPE vocabulary needs all 256 single-byte tokens");
      }
      byte_ids_[b] = it->second;
    }
    merges_.reserve(merges.size());
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const Merge& m = merges[rank];
      const int32_t left = lookup_merge_part(m.left, m);
      const int32_t right = lookup_merge_part(m.right, m);
      const auto merged = token_ids_.find(m.left + m.right);
      if (merged == token_ids_.end()) {
        throw Error(m.where + ": merging " + detail::quote_for_message(m.left) + " and " +
                    detail::quote_for_message(m.right) + " gives " +
                    detail::quote_for_message(m.left + m.right) +
                    ", which is not in the vocabulary");
      }
      // A repeated pair keeps its later rank, as dict(zip(merges, range(...))) does in encoder.py.
      merges_[pair_key(left, right)] = {static_cast<int32_t>(rank), merged->second};
    }
  }

  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  int32_t lookup_merge_part(const std::string& token, const Merge& m) const {
    const auto it = token_ids_.find(token);
    if (it == token_ids_.end()) {
      throw Error(m.where + ": the merge " + detail::quote_for_message(m.left + " " + m.right) +
                  " names " + detail::quote_for_message(token) +
                  ", which is not in the vocabulary");
    }
    return it->second;
  }

  /// Checks that the ids are exactly 0..V-1 and returns the entries indexed by id.
  static std::vector<const VocabEntry*> check_ids(const std::vector<VocabEntry>& vocab,
                                                  const std::string& source) {
    if (vocab.empty()) throw Error(source + ": the vocabulary is empty");
    if (vocab.size() > static_cast<std::size_t>(INT32_MAX)) {
      throw Error(source + ": the vocabulary has more tokens than 32-bit ids can number");
    }
    const auto size = static_cast<int64_t>(vocab.size());
    std::vector<const VocabEntry*> by_id(vocab.size(), nullptr);
    const VocabEntry* out_of_range = nullptr;
    for (const VocabEntry& e : vocab) {
      if (e.id < 0 || e.id >= size) {
        if (out_of_range == nullptr) out_of_range = &e;
        continue;
      }
      const VocabEntry*& slot = by_id[static_cast<std::size_t>(e.id)];
      if (slot != nullptr) {
        throw Error(source + ": the id " + std::to_string(e.id) + " is given to both " +
                    detail::quote_for_message(slot->token) + " and " +
                    detail::quote_for_message(e.token) + "; ids must be unique");
      }
      slot = &e;
    }
    if (out_of_range != nullptr) {
      // V distinct ids of which one is outside 0..V-1 always leave a gap; name both.
      std::size_t missing = 0;
      while (by_id[missing] != nullptr) ++missing;
      throw Error(source + ": ids must be the contiguous range 0.." + std::to_string(size - 1) +
                  " for " + std::to_string(size) + " tokens, but " +
                  detail::quote_for_message(out_of_range->token) + " has id " +
                  std::to_string(out_of_range->id) + " and id " + std::to_string(missing) +
                  " is missing");
    }
    return by_id;
  }

  static std::string token_to_bytes(const VocabEntry& e, const std::string& source) {
    if (e.token.empty()) {
      throw Error(source + ": the token with id " + std::to_string(e.id) + " is the empty string");
    }
    std::string bytes;
    bytes.reserve(e.token.size());
    for (std::size_t pos = 0; pos < e.token.size();) {
      const detail::Utf8Step step = detail::decode_utf8_at(e.token, pos);
      const int b = step.status == detail::Utf8Status::kValid
                        ? detail::gpt2_unicode_to_byte(step.code_point)
                        : -1;
      if (b < 0) {
        if (e.added) return e.token;  // Hugging Face's ByteLevel decoder keeps such tokens as is
        std::string character(e.token.substr(pos, step.length));
        throw Error(
            source + ": the token " + detail::quote_for_message(e.token) + " (id " +
            std::to_string(e.id) + ") contains " + detail::quote_for_message(character) +
            ", which is not in GPT-2's byte alphabet; is this a byte-level BPE vocabulary?");
      }
      bytes.push_back(static_cast<char>(b));
      pos += step.length;
    }
    return bytes;
  }

  static int64_t parse_id(const nlohmann::json& v, const std::string& context) {
    if (!v.is_number_integer()) {
      throw Error(context + " must be an integer token id, got " + detail::describe_json(v));
    }
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      return u > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(u);
    }
    return v.get<int64_t>();
  }

  static std::vector<VocabEntry> parse_vocab_object(const nlohmann::json& v,
                                                    const std::string& source) {
    if (!v.is_object()) {
      throw Error(source + ": expected a JSON object that maps token strings to ids, got " +
                  detail::describe_json(v));
    }
    std::vector<VocabEntry> vocab;
    vocab.reserve(v.size());
    for (auto it = v.begin(); it != v.end(); ++it) {
      const std::string context = source + ": the id of " + detail::quote_for_message(it.key());
      vocab.push_back({it.key(), parse_id(it.value(), context), false});
    }
    return vocab;
  }

  static Merge split_merge_line(std::string_view line, const std::string& where) {
    const std::size_t space = line.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos) {
      throw Error(where + ": expected two tokens separated by one space, got " +
                  detail::quote_for_message(line));
    }
    return {std::string(line.substr(0, space)), std::string(line.substr(space + 1)), where};
  }

  static std::vector<Merge> parse_merges_text(std::string_view text, const std::string& source) {
    std::vector<Merge> merges;
    std::size_t line_number = 0;
    for (std::size_t pos = 0; pos < text.size();) {
      std::size_t end = text.find('\n', pos);
      if (end == std::string_view::npos) end = text.size();
      std::string_view line = text.substr(pos, end - pos);
      pos = end + 1;
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // written on Windows
      // The first line of OpenAI's vocab.bpe and of Hugging Face's merges.txt is "#version: 0.2".
      if (line.empty() || (line_number == 1 && line.substr(0, 8) == "#version")) continue;
      merges.push_back(split_merge_line(line, source + " line " + std::to_string(line_number)));
    }
    return merges;
  }

  /// Accepts the pre_tokenizer of a GPT-2 style tokenizer.json; returns its add_prefix_space.
  static bool check_byte_level_pre_tokenizer(const nlohmann::json& root,
                                             const std::string& source) {
    const auto it = root.find("pre_tokenizer");
    const nlohmann::json* pre = it == root.end() ? nullptr : &*it;
    // Some writers wrap the one ByteLevel step in a Sequence.
    if (pre != nullptr && pre->is_object() && pre->value("type", nlohmann::json()) == "Sequence") {
      const auto steps = pre->find("pretokenizers");
      if (steps != pre->end() && steps->is_array() && steps->size() == 1) pre = &(*steps)[0];
    }
    if (pre == nullptr || !pre->is_object() ||
        pre->value("type", nlohmann::json()) != "ByteLevel") {
      throw Error(source + ": the pre_tokenizer is " +
                  (pre == nullptr ? std::string("missing") : detail::describe_json(*pre)) +
                  "; only GPT-2's ByteLevel pre-tokenizer is supported");
    }
    const nlohmann::json use_regex = pre->value("use_regex", nlohmann::json(true));
    if (use_regex != true) {
      throw Error(source + ": the ByteLevel pre_tokenizer has use_regex " +
                  detail::describe_json(use_regex) +
                  "; only the GPT-2 split rule (use_regex true) is supported");
    }
    const nlohmann::json prefix = pre->value("add_prefix_space", nlohmann::json(false));
    if (!prefix.is_boolean()) {
      throw Error(source + ": pre_tokenizer.add_prefix_space must be true or false, got " +
                  detail::describe_json(prefix));
    }
    return prefix.get<bool>();
  }

  /// Folds tokenizer.json's added_tokens into the vocabulary: an added token either repeats a
  /// vocabulary entry (same id and spelling, like GPT-2's <|endoftext|>) or brings a new id.
  static void merge_added_tokens(const nlohmann::json& added, const std::string& source,
                                 std::vector<VocabEntry>& vocab) {
    if (!added.is_array()) {
      throw Error(source + ": added_tokens must be an array, got " + detail::describe_json(added));
    }
    std::unordered_map<int64_t, std::size_t> index_of_id;
    std::unordered_map<std::string, std::size_t> index_of_token;
    for (std::size_t i = 0; i < vocab.size(); ++i) {
      index_of_id.emplace(vocab[i].id, i);
      index_of_token.emplace(vocab[i].token, i);
    }
    for (std::size_t i = 0; i < added.size(); ++i) {
      const nlohmann::json& a = added[i];
      const std::string where = source + ": added_tokens[" + std::to_string(i) + "]";
      if (!a.is_object())
        throw Error(where + " must be an object, got " + detail::describe_json(a));
      const auto id_it = a.find("id");
      const auto content_it = a.find("content");
      if (id_it == a.end()) throw Error(where + " has no \"id\"");
      if (content_it == a.end() || !content_it->is_string()) {
        throw Error(
            where + ".content must be a string, got " +
            (content_it == a.end() ? std::string("nothing") : detail::describe_json(*content_it)));
      }
      const int64_t id = parse_id(*id_it, where + ".id");
      const std::string& content = content_it->get_ref<const std::string&>();
      if (const auto same_id = index_of_id.find(id); same_id != index_of_id.end()) {
        VocabEntry& existing = vocab[same_id->second];
        if (existing.token != content) {
          throw Error(where + ": the id " + std::to_string(id) + " of " +
                      detail::quote_for_message(content) + " already belongs to " +
                      detail::quote_for_message(existing.token));
        }
        existing.added = true;
        continue;
      }
      if (const auto same_token = index_of_token.find(content);
          same_token != index_of_token.end()) {
        throw Error(where + ": " + detail::quote_for_message(content) + " has id " +
                    std::to_string(id) + " here but id " +
                    std::to_string(vocab[same_token->second].id) + " elsewhere");
      }
      index_of_id.emplace(id, vocab.size());
      index_of_token.emplace(content, vocab.size());
      vocab.push_back({content, id, true});
    }
  }

  const std::string& bytes_of(int32_t id) const {
    if (id < 0 || id >= vocab_size()) {
      throw Error("token id " + std::to_string(id) + " is out of range for the gpt2 tokenizer " +
                  "(valid ids are 0.." + std::to_string(vocab_size() - 1) + ")");
    }
    return id_bytes_[static_cast<std::size_t>(id)];
  }

  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const {
    if (piece.size() == 1) {
      ids.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
      return;
    }
    if (piece.size() > kMaxCachedPieceBytes) {
      run_bpe(piece, ids);
      return;
    }
    std::string key(piece);
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      const auto it = cache_.find(key);
      if (it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    // BPE runs outside the lock; two threads that miss on the same piece both compute it, which
    // is harmless because the result is the same.
    const std::size_t first = ids.size();
    run_bpe(piece, ids);
    std::vector<int32_t> result(ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end());
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::move(key), std::move(result));
  }

  /// Appends the BPE of `piece` to `out`.
  ///
  /// encoder.py repeats: find the adjacent pair with the lowest merge rank, then merge every
  /// occurrence of that pair left to right. A naive rescan per merge is quadratic in the piece
  /// length, which matters for long runs such as a line of 10k '=' signs, so this keeps the
  /// symbols in a linked list and the candidate pairs in a heap ordered by (rank, position), and
  /// takes all candidates of the lowest rank as one batch. Taking the batch (instead of one pair
  /// at a time) keeps encoder.py's order even when a merge creates a pair whose rank is lower than
  /// the current one: like encoder.py, such a pair waits until the current pass is done. Entries
  /// made stale by earlier merges are recognised by their ids no longer matching; that is exact,
  /// because a merged token is longer than both its parts, so a position never gets an old id back.
  void run_bpe(std::string_view piece, std::vector<int32_t>& out) const {
    const auto n = static_cast<int32_t>(piece.size());
    if (n == 0) return;
    std::vector<int32_t> sym(static_cast<std::size_t>(n));
    std::vector<int32_t> next(static_cast<std::size_t>(n));
    std::vector<int32_t> prev(static_cast<std::size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
      sym[i] = byte_ids_[static_cast<unsigned char>(piece[static_cast<std::size_t>(i)])];
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    struct Candidate {
      int32_t rank;
      int32_t pos;  // index of the left symbol
      int32_t left;
      int32_t right;
      int32_t merged;
    };
    auto later = [](const Candidate& a, const Candidate& b) {
      return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
    };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> heap(later);
    auto consider = [&](int32_t pos) {
      if (pos < 0 || next[pos] < 0) return;
      const auto it = merges_.find(pair_key(sym[pos], sym[next[pos]]));
      if (it != merges_.end()) {
        heap.push({it->second.rank, pos, sym[pos], sym[next[pos]], it->second.merged});
      }
    };
    for (int32_t i = 0; i + 1 < n; ++i) consider(i);

    std::vector<Candidate> batch;
    while (!heap.empty()) {
      const int32_t rank = heap.top().rank;
      batch.clear();
      // The heap yields equal ranks by increasing position, i.e. left to right.
      while (!heap.empty() && heap.top().rank == rank) {
        batch.push_back(heap.top());
        heap.pop();
      }
      for (const Candidate& c : batch) {
        const int32_t q = next[c.pos];
        if (sym[c.pos] != c.left || q < 0 || sym[q] != c.right) continue;  // stale
        sym[c.pos] = c.merged;
        sym[q] = -1;
        next[c.pos] = next[q];
        if (next[q] >= 0) prev[next[q]] = c.pos;
        consider(prev[c.pos]);
        consider(c.pos);
      }
    }
    for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
  }

  std::vector<std::string> id_bytes_;                   // raw bytes of each token
  std::unordered_map<std::string, int32_t> token_ids_;  // file spelling -> id
  int32_t byte_ids_[256] = {};                          // id of each single-byte token
  std::unordered_map<uint64_t, MergeResult> merges_;    // (left id, right id) -> rank, result
  bool add_prefix_space_ = false;

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace TCONST_ABI
}  // namespace tconst
