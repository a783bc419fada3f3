// tconst info: a model file's architecture, sizes, parameter count and cache bytes, and how its
// tensors are stored (SPEC §6.1 formats) with the file's bytes.

#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "tconst/model/safetensors.hpp"
#include "tconst/model/weight_formats.hpp"
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

/// One tensor as stored: its format (the dtype, or Q8 for an I8 matrix with its scales) and its
/// bytes in the file (a Q8 matrix's with its scales).
struct Stored {
  std::string name, format;
  std::vector<int64_t> shape;
  uint64_t bytes;
};

std::vector<Stored> stored_tensors(const tconst::SafetensorsFile& file) {
  std::vector<Stored> out;
  for (const auto& kv : file.tensors()) {
    const tconst::TensorInfo& t = kv.second;
    const size_t suffix = std::strlen(tconst::kQ8ScaleSuffix);
    if (tconst::is_q8_scale_name(t.name) &&
        file.find(t.name.substr(0, t.name.size() - suffix)) != nullptr) {
      continue;  // counted with its matrix
    }
    Stored s{t.name, t.dtype == tconst::DType::kI8 ? "Q8" : t.dtype_name, t.shape, t.nbytes};
    if (const tconst::TensorInfo* scale = file.find(t.name + tconst::kQ8ScaleSuffix)) {
      s.bytes += scale->nbytes;
    }
    out.push_back(s);
  }
  return out;
}

/// "Q8 55, F32 52": tensors per format.
std::map<std::string, int64_t> format_counts(const std::vector<Stored>& tensors) {
  std::map<std::string, int64_t> n;
  for (const Stored& s : tensors) ++n[s.format];
  return n;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

/// The file's bytes and formats, as text lines (and each tensor with --tensors) or JSON fields.
void print_storage(const tconst::SafetensorsFile& file, bool each) {
  const std::vector<Stored> tensors = stored_tensors(file);
  std::string counts;
  for (const auto& kv : format_counts(tensors)) {
    counts += (counts.empty() ? "" : ", ") + kv.first + " " + std::to_string(kv.second);
  }
  const auto block = file.metadata().find(tconst::kQ8BlockKey);
  std::printf("file bytes       %zu\n", file.bytes()->size());
  std::printf("tensors          %s%s\n", counts.c_str(),
              block == file.metadata().end() ? "" : (" (Q8 block " + block->second + ")").c_str());
  if (!each) return;
  for (const Stored& s : tensors) {
    std::printf("  %-64s %-4s %-14s %llu bytes\n", s.name.c_str(), s.format.c_str(),
                shape_text(s.shape).c_str(), (unsigned long long)s.bytes);
  }
}

void add_storage(nlohmann::ordered_json& j, const tconst::SafetensorsFile& file, bool each) {
  const std::vector<Stored> tensors = stored_tensors(file);
  j["file_bytes"] = file.bytes()->size();
  j["tensor_formats"] = format_counts(tensors);
  const auto block = file.metadata().find(tconst::kQ8BlockKey);
  j["q8_block"] = block == file.metadata().end() ? 0 : std::stoll(block->second);
  if (!each) return;
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const Stored& s : tensors) {
    list.push_back(
        {{"name", s.name}, {"format", s.format}, {"shape", s.shape}, {"bytes", s.bytes}});
  }
  j["tensors"] = list;
}

template <typename Scalar>
void print_json(const tconst::Model<Scalar>& model, const tconst::SafetensorsFile& file,
                bool each) {
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
  nlohmann::ordered_json kernels;
  for (tconst::Compute k : {tconst::Compute::f32, tconst::Compute::bf16, tconst::Compute::int8}) {
    kernels[tconst::to_string(k)] = tconst::compute_kernels(k);
  }
  j["kernels"] = kernels;
  add_storage(j, file, each);
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
void print_text(const std::string& path, const tconst::Model<Scalar>& model,
                const tconst::SafetensorsFile& file, bool each) {
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
  std::printf("kernels          f32 %s, bf16 %s, int8 %s (--compute; TCONST_ISA caps them)\n",
              tconst::compute_kernels(tconst::Compute::f32),
              tconst::compute_kernels(tconst::Compute::bf16),
              tconst::compute_kernels(tconst::Compute::int8));
  print_storage(file, each);
}

template <typename Scalar>
int info(const Args& args) {
  const std::string path = args.required("model");
  const tconst::SafetensorsFile file = tconst::SafetensorsFile::open(path);
  auto model = tconst::Model<Scalar>::from_file(file);
  const bool each = args.flag("tensors");
  if (args.flag("json")) {
    print_json(*model, file, each);
  } else {
    print_text(path, *model, file, each);
  }
  return 0;
}

}  // namespace

int cmd_info(const Args& args) {
  return with_precision(args, [&](auto s) { return info<decltype(s)>(args); });
}

}  // namespace tconst_cli
