// tconst info: a model file's architecture, sizes, parameter count and cache bytes.

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.hpp"
#include "tconst/tconst.hpp"

namespace tconst_cli {
namespace {

/// `{"key": value, ...}` on one line, keys in the order they were added (the spacing this
/// output has always had, which dump() does not write).
std::string one_line_json(const nlohmann::ordered_json& j) {
  std::string out = "{";
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it != j.begin()) out += ", ";
    out += nlohmann::json(it.key()).dump() + ": " + it.value().dump();
  }
  return out + "}";
}

template <typename Scalar>
void print_json(const tconst::Model<Scalar>& model) {
  const tconst::ModelConfig& c = model.config();
  nlohmann::ordered_json j;
  j["architecture"] = tconst::to_string(c.arch);
  j["vocab_size"] = c.vocab_size;
  j["n_embd"] = c.n_embd;
  j["n_head"] = c.n_head;
  j["n_block"] = c.n_block;
  j["block_inner_depth"] = c.inner_depth;
  j["history_window"] = c.history_window;
  j["generate_window"] = c.generate_window;
  j["ffn_hidden"] = c.ffn_hidden;
  j["tied_head"] = c.tied_head;
  j["parameters"] = model.parameter_count();
  j["fixed_cache_bytes"] = static_cast<size_t>(c.fixed_cache_scalars()) * sizeof(Scalar);
  j["tokenizer"] = c.tokenizer;
  std::printf("%s\n", one_line_json(j).c_str());
}

/// The layers, and for the windowed architectures the windows.
void print_shape(const tconst::ModelConfig& c) {
  if (c.is_baseline()) {
    std::printf("layers           %lld\n", (long long)c.n_block);
    return;
  }
  std::printf("blocks           %lld x inner depth %lld = %lld layers\n", (long long)c.n_block,
              (long long)c.inner_depth, (long long)c.total_layers());
  std::printf("generate_window  %lld (resync every %lld tokens)\n", (long long)c.generate_window,
              (long long)c.generate_window);
  std::printf("history_window   %lld\n", (long long)c.history_window);
}

/// What a stream's cache costs: per token for the baseline, fixed for the windowed ones.
template <typename Scalar>
void print_cache(const tconst::ModelConfig& c) {
  const char* precision = sizeof(Scalar) == 4 ? "float" : "double";
  if (c.is_baseline()) {
    std::printf("kv cache         grows: %lld bytes per token (%s)\n",
                (long long)(2 * c.n_embd * c.n_block * (int64_t)sizeof(Scalar)), precision);
    return;
  }
  const size_t fixed_bytes = static_cast<size_t>(c.fixed_cache_scalars()) * sizeof(Scalar);
  std::printf("fixed cache      %zu bytes (%s)%s\n", fixed_bytes, precision,
              c.arch == tconst::Architecture::kTLinFormer
                  ? ", plus a context cache that grows with the stream"
                  : "");
}

template <typename Scalar>
void print_text(const std::string& path, const tconst::Model<Scalar>& model) {
  const tconst::ModelConfig& c = model.config();
  std::printf("model            %s\n", path.c_str());
  std::printf("architecture     %s\n", tconst::to_string(c.arch));
  std::printf("vocab_size       %lld\n", (long long)c.vocab_size);
  std::printf("n_embd           %lld (%lld heads of %lld)\n", (long long)c.n_embd,
              (long long)c.n_head, (long long)c.head_dim());
  print_shape(c);
  std::printf("ffn_hidden       %lld\n", (long long)c.ffn_hidden);
  std::printf("head             %s\n", c.tied_head ? "tied to the embedding" : "separate");
  std::printf("rope_base        %g\nnorm_eps         %g\n", c.rope_base, c.norm_eps);
  std::printf("tokenizer        %s\n", c.tokenizer.empty() ? "(none named)" : c.tokenizer.c_str());
  std::printf("parameters       %lld\n", (long long)model.parameter_count());
  print_cache<Scalar>(c);
}

template <typename Scalar>
int info(const Args& args) {
  const std::string path = args.required("model");
  auto model = tconst::Model<Scalar>::load(path);
  if (args.flag("json")) {
    print_json(*model);
  } else {
    print_text(path, *model);
  }
  return 0;
}

}  // namespace

int cmd_info(const Args& args) {
  return with_precision(args, [&](auto s) { return info<decltype(s)>(args); });
}

}  // namespace tconst_cli
