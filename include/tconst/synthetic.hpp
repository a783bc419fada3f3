#pragma once
// Synthetic models and histories, for benchmarks and tests that need a model of a given shape but
// not a trained one: the cost of a step does not depend on the weights' values.
//
// random_model_bytes() writes a SPEC §6 file in memory with pseudo-random F32 weights (load it with
// Model::load_from_bytes); fill_synthetic_history() makes a baseline session look as if it had
// consumed `depth` tokens, without the O(depth^2) prefill. Both draw from tconst::Rng, seeded, so a
// seed always gives the same bytes.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tconst/config.hpp"
#include "tconst/detail/abi.hpp"
#include "tconst/model.hpp"
#include "tconst/sampling.hpp"
#include "tconst/transformer/session.hpp"
namespace tconst {
inline namespace TCONST_ABI {

/// The paper's 41M shape (V 50257, d 432, h 12, f 1280; B 2, D 4, W = Hh = 256; the baseline of
/// the same depth has 8 layers).
inline ModelConfig paper_41m(Architecture arch) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 50257;
  c.n_embd = 432;
  c.n_head = 12;
  c.ffn_hidden = 1280;
  if (arch == Architecture::kTransformer) {
    c.n_block = 8;
  } else {
    c.n_block = 2;
    c.inner_depth = 4;
    c.history_window = 256;
    c.generate_window = 256;
  }
  return c;
}

/// A 1.3B-parameter shape for measuring the kernels at a larger width (V 50257, d 2048, 16 heads
/// of 128, f 5632; B 2, D 12, W = Hh = 512; the baseline of the same depth has 24 layers).
inline ModelConfig preset_1b(Architecture arch) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 50257;
  c.n_embd = 2048;
  c.n_head = 16;
  c.ffn_hidden = 5632;
  if (arch == Architecture::kTransformer) {
    c.n_block = 24;
  } else {
    c.n_block = 2;
    c.inner_depth = 12;
    c.history_window = 512;
    c.generate_window = 512;
  }
  return c;
}

/// p[0..n) uniform in [lo, hi), drawn from rng.
template <typename Scalar>
void fill_uniform(Rng& rng, Scalar* p, int64_t n, double lo, double hi) {
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<Scalar>(lo + (hi - lo) * rng.uniform());
}

/// A SPEC §6 file of config c with pseudo-random F32 weights: matrices uniform in
/// +-1/sqrt(fan_in), LayerNorm weights 1, biases 0. The data section starts on a 64-byte line.
inline std::vector<uint8_t> random_model_bytes(const ModelConfig& c, uint64_t seed) {
  const auto tensors = model_tensor_shapes(c);
  nlohmann::json meta = {{"tconst.format", "1"},
                         {"tconst.architecture", to_string(c.arch)},
                         {"tconst.vocab_size", std::to_string(c.vocab_size)},
                         {"tconst.n_embd", std::to_string(c.n_embd)},
                         {"tconst.n_head", std::to_string(c.n_head)},
                         {"tconst.n_block", std::to_string(c.n_block)}};
  if (!c.is_baseline()) {
    meta["tconst.block_inner_depth"] = std::to_string(c.inner_depth);
    meta["tconst.history_window"] = std::to_string(c.history_window);
    meta["tconst.generate_window"] = std::to_string(c.generate_window);
  }
  nlohmann::json header;
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    int64_t n = 1;
    for (int64_t s : t.second) n *= s;
    header[t.first] = {
        {"dtype", "F32"}, {"shape", t.second}, {"data_offsets", {offset, offset + 4 * n}}};
    offset += 4 * static_cast<uint64_t>(n);
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 64 != 0) text += ' ';
  std::vector<uint8_t> out(8 + text.size() + offset);
  const uint64_t len = text.size();
  std::memcpy(out.data(), &len, 8);
  std::memcpy(out.data() + 8, text.data(), text.size());
  uint8_t* data = out.data() + 8 + text.size();
  Rng rng(seed);
  std::vector<float> values;
  for (const auto& t : tensors) {
    const std::string& name = t.first;
    const std::vector<int64_t>& shape = t.second;
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    values.assign(static_cast<size_t>(n), 0.0f);
    const bool is_norm_weight =
        name.find("norm") != std::string::npos && name.compare(name.size() - 7, 7, ".weight") == 0;
    if (shape.size() == 2) {
      const double a = 1.0 / std::sqrt(static_cast<double>(shape[1]));
      fill_uniform(rng, values.data(), n, -a, a);
    } else if (is_norm_weight) {
      values.assign(static_cast<size_t>(n), 1.0f);
    }
    std::memcpy(data, values.data(), sizeof(float) * values.size());
    data += sizeof(float) * values.size();
  }
  return out;
}

/// Makes a baseline session look as if `depth` tokens (all id 0) had been consumed, with
/// pseudo-random keys and values in place of a real O(depth^2) prefill, and room for 4096 more
/// tokens (so that the steps that follow do not include growing the cache). The logits that
/// follow are not those of any real stream; what a step costs is the same.
template <typename Scalar>
void fill_synthetic_history(TransformerSession<Scalar>& session, int64_t depth, uint64_t seed) {
  session.reset();
  session.reserve(depth + 4096);
  auto& kv = session.kv_;
  const int64_t d = session.model().config().n_embd;
  Rng rng(seed);
  for (Eigen::Index l = 0; l < kv.layers(); ++l) {
    fill_uniform(rng, kv.keys(l), depth * d, -0.5, 0.5);
    fill_uniform(rng, kv.values(l), depth * d, -0.5, 0.5);
  }
  kv.set_rows(static_cast<Eigen::Index>(depth));
  session.log_.assign(static_cast<size_t>(depth), 0);
}

}  // namespace TCONST_ABI
}  // namespace tconst
