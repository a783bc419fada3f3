#pragma once
// The pieces every architecture's token rows run through (SPEC §2, §4): the embedding, one inner
// layer's body and its FFN, the final norm and the tied head, with the buffers of a pass over a few
// rows. Activations are row-major, one row per token; nothing here holds state. Every product over
// a weight matrix goes through linear() of quant_linear.hpp (a float model's matrices, in any
// format of SPEC §6.1) or of ops.hpp (a double model's).

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/big_buffer.hpp"
#include "tconst/detail/ops.hpp"
#include "tconst/detail/quant_linear.hpp"
#include "tconst/model.hpp"
namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

/// Scores per attention call are bounded by processing query rows in blocks of at most this many
/// scores (or one row, when a row alone has more keys).
constexpr Index kScoreBudget = Index{1} << 16;

/// Working buffers of a window pass, sized once for `rows` rows and `keys` attended keys.
template <typename S>
struct WindowScratch {
  Index rows = 0, keys = 0;
  // Rows of d floats start on cache lines when d is a multiple of 16 (LineVector).
  detail::LineVector<S> x;       // [rows, d] residual stream
  detail::LineVector<S> xn;      // [rows, d] normalised stream; after a pass, LN_f of every row
  detail::LineVector<S> qkv;     // [rows, 3d] q | k | v, q and k rotated
  detail::LineVector<S> att;     // [rows, d] attention output
  detail::LineVector<S> h1, h3;  // [rows, f] FFN hidden
  detail::LineVector<S> scores;  // attention scores of one query block
  GemmWorkspace gemm;            // the packed GEMM's input panels (prefill: many rows)

  void reserve(Index n_rows, Index n_keys, Index d, Index f, Index heads) {
    if (n_rows > rows) {
      rows = n_rows;
      x.resize(static_cast<size_t>(rows * d));
      xn.resize(static_cast<size_t>(rows * d));
      qkv.resize(static_cast<size_t>(rows * 3 * d));
      att.resize(static_cast<size_t>(rows * d));
      h1.resize(static_cast<size_t>(rows * f));
      h3.resize(static_cast<size_t>(rows * f));
    }
    keys = std::max(keys, n_keys);
    // One query row needs heads * keys (all heads at once); a block of rows, one head at a time;
    // several streams stepped together, heads * keys for each thread attending at once.
    const Index workers = std::min<Index>(rows, max_workers());
    const Index need = std::max(workers * heads * keys, std::min(rows * keys, kScoreBudget));
    if (static_cast<Index>(scores.size()) < need) scores.resize(static_cast<size_t>(need));
  }

  /// Bytes allocated for the pass (rows, scores and the GEMM's panels).
  size_t bytes() const {
    return (x.capacity() + xn.capacity() + qkv.capacity() + att.capacity() + h1.capacity() +
            h3.capacity() + scores.capacity()) *
               sizeof(S) +
           gemm.packed.capacity() * sizeof(float);
  }
};

/// Where a layer's new rows go: rows [rows_before, rows_before + n) of K and V ([*, d], stride ld).
template <typename S>
struct SelfKV {
  S* K;
  S* V;
  Index ld;
  Index rows_before;
};

/// Frozen keys and values a layer also attends to, with its own softmax (none when rows is 0).
template <typename S>
struct CrossKV {
  const S* K = nullptr;
  const S* V = nullptr;
  Index ld = 0;
  Index rows = 0;
};

/// Attention of nq = Q.rows query rows (attend_rows) in blocks that keep the score buffer within
/// its budget.
template <typename S>
void attend_blocked(ConstRows<S> Q, ConstRows<S> K, ConstRows<S> V, Heads heads, Index causal_base,
                    RowsView<S> out, bool accumulate, S* scores) {
  const Index nq = Q.rows, nk = K.rows;
  const Index block =
      std::max<Index>(1, std::min<Index>(nq, kScoreBudget / std::max<Index>(nk, 1)));
  for (Index r0 = 0; r0 < nq; r0 += block) {
    const Index n = std::min(block, nq - r0);
    attend_rows(Q.block(r0, n), K, V, heads, causal_base >= 0 ? causal_base + r0 : -1,
                out.block(r0, n), accumulate, {scores});
  }
}

/// Whether this CPU has a few-row kernel for W's format (rows_gemm.inl for F32, quant_rows.inl for
/// BF16 and Q8) that ffn_up_fused() may call directly (f32 compute only).
inline bool has_few_rows_kernel(const WeightMatrix& W) noexcept {
  if (W.compute != Compute::f32) return false;  // compute_linear.hpp's products, through linear()
  return W.format == WeightFormat::f32 ? active_kernels().rows_gemm != nullptr
                                       : active_kernels().quant_rows != nullptr;
}

/// out[g, o] = in[g, :] . W[o, :] for g < n, o in [r0, r1), on the calling thread, with the
/// few-row kernel of W's format (has_few_rows_kernel(W) must hold).
inline void few_rows_range(const WeightMatrix& W, Index r0, Index r1, const float* in, Index ld_in,
                           Index n, float* out, Index ld_out) noexcept {
  if (W.format == WeightFormat::f32) {
    active_kernels().rows_gemm(static_cast<const float*>(W.data), W.cols, r0, r1, in, ld_in, n,
                               nullptr, out, ld_out);
  } else {
    active_kernels().quant_rows(W, r0, r1, in, ld_in, n, nullptr, out, ld_out, false);
  }
}

/// h1[n, f] = silu(xn W1^T) * (xn W3^T) with the few-row kernels, both products and the gate of a
/// range of hidden units on the same thread (one parallel region instead of two, and the gate no
/// longer runs on one thread between them); false (nothing done) when there are no kernels for S
/// or this CPU, or n is above kRowsGemmMaxRows. W1 and W3 may be in any format. h3 is scratch.
template <typename S>
bool ffn_up_fused(const S* xn, Index d, Index n, const LayerWeights<S>& L, S* h1, S* h3) noexcept {
  if constexpr (std::is_same_v<S, float>) {
    const SiluGateFn gate = active_kernels().silu_gate;
    if (gate == nullptr || n > kRowsGemmMaxRows) return false;
    if (!has_few_rows_kernel(L.w1) || !has_few_rows_kernel(L.w3)) return false;
    const Index f = L.w1.rows;
    for_row_ranges(f, [&](Index r0, Index r1) {
      few_rows_range(L.w1, r0, r1, xn, d, n, h1, f);
      few_rows_range(L.w3, r0, r1, xn, d, n, h3, f);
      for (Index g = 0; g < n; ++g) gate(h1 + g * f + r0, h3 + g * f + r0, r1 - r0);
    });
    return true;
  } else {
    (void)xn, (void)d, (void)n, (void)L, (void)h1, (void)h3;
    return false;
  }
}

/// x[n, d] += FFN(LN2(x)) (SPEC §2, SwiGLU without biases). Buffers: xn [n, d], h1 and h3 [n, f];
/// `ws` the packed GEMM's, for many rows.
template <typename S>
void ffn_residual(RowsView<S> x, const LayerWeights<S>& L, double eps, S* xn, S* h1, S* h3,
                  GemmWorkspace* ws = nullptr) {
  const Index d = L.w2.rows, f = L.w1.rows, n = x.rows, ld_x = x.ld;
  const RowsView<S> xn_rows = rows_view(xn, n, d);
  layer_norm(x.cols_from(0, d), xn_rows, L.norm2_w, L.norm2_b, eps);
  if (!ffn_up_fused(xn, d, n, L, h1, h3)) {
    linear(xn_rows, L.w1, nullptr, rows_view(h1, n, f), ws);
    linear(xn_rows, L.w3, nullptr, rows_view(h3, n, f), ws);
    for_row_ranges(n,
                   [&](Index r0, Index r1) { silu_gate(h1 + r0 * f, h3 + r0 * f, (r1 - r0) * f); });
  }
  if (n <= kRowsGemmMaxRows) {
    // w2's product into xn, free again, then the residual, so that the product can take the
    // few-row kernel.
    linear(rows_view(h1, n, f), L.w2, nullptr, xn_rows, ws);
    RowsMap<S>(x.data, n, d, Eigen::OuterStride<>(ld_x)) +=
        ConstRowsMap<S>(xn, n, d, Eigen::OuterStride<>(d));
    return;
  }
  linear(rows_view(h1, n, f), L.w2, nullptr, x.cols_from(0, d), ws, true);
}

/// One inner layer over n rows x[n, d] (SPEC §4's window stream; every baseline layer):
/// x += out(Attn(...)); x += FFN(LN2(x)), with (q, k, v) = qkv(LN1(x)). `attend(qkv, att)` gets the
/// rows' unrotated q | k | v ([n, 3d]) and writes their attention output to att ([n, d]): it
/// rotates q and k at the rows' positions, stores k and v where the layer keeps them and attends.
/// That is the only part in which one stream of n rows and n streams of one row differ.
template <typename S, typename Attend>
void layer_body(const Model<S>& m, const LayerWeights<S>& L, S* x, Index n, WindowScratch<S>& s,
                const Attend& attend) {
  const ModelConfig& c = m.config();
  const Index d = c.n_embd;
  S* xn = s.xn.data();
  S* qkv = s.qkv.data();
  S* att = s.att.data();
  layer_norm(rows_view<const S>(x, n, d), rows_view(xn, n, d), L.norm1_w, L.norm1_b, c.norm_eps);
  linear(rows_view(xn, n, d), L.qkv_w, L.qkv_b.data, rows_view(qkv, n, 3 * d), &s.gemm);
  attend(qkv, att);
  linear(rows_view(att, n, d), L.out_w, L.out_b.data, rows_view(xn, n, d), &s.gemm);
  RowsMap<S>(x, n, d, Eigen::OuterStride<>(d)) +=
      ConstRowsMap<S>(xn, n, d, Eigen::OuterStride<>(d));
  ffn_residual(rows_view(x, n, d), L, c.norm_eps, xn, s.h1.data(), s.h3.data(), &s.gemm);
}

/// The attention of n consecutive rows of one stream at positions pos0.. (qkv [n, 3d] as
/// layer_body passes it): q and k rotated, k and v appended to `self` after its rows_before rows,
/// causal attention over them, plus, with its own softmax, non-causal attention to `cross` (when it
/// has rows).
template <typename S>
void attend_consecutive_rows(const Model<S>& m, S* qkv, Index n, int64_t pos0,
                             const SelfKV<S>& self, const CrossKV<S>& cross, S* att, S* scores) {
  const ModelConfig& c = m.config();
  const Index d = c.n_embd, heads = c.n_head, dh = c.head_dim();
  rope(qkv, 3 * d, n, 2 * d, dh, pos0, m.rope_theta());
  for (Index r = 0; r < n; ++r) {
    std::memcpy(self.K + (self.rows_before + r) * self.ld, qkv + r * 3 * d + d, sizeof(S) * d);
    std::memcpy(self.V + (self.rows_before + r) * self.ld, qkv + r * 3 * d + 2 * d, sizeof(S) * d);
  }
  const RowsView<S> q = rows_view(qkv, n, d, 3 * d), out = rows_view(att, n, d);
  const Index nk = self.rows_before + n;
  attend_blocked(q, rows_view<const S>(self.K, nk, d, self.ld),
                 rows_view<const S>(self.V, nk, d, self.ld), Heads{heads, dh}, self.rows_before,
                 out, false, scores);
  if (cross.rows > 0) {
    attend_blocked(q, rows_view(cross.K, cross.rows, d, cross.ld),
                   rows_view(cross.V, cross.rows, d, cross.ld), Heads{heads, dh}, Index{-1}, out,
                   true, scores);
  }
}

/// out[cols] = row r of a matrix, widened to float (SPEC §6.1).
inline void matrix_row(const WeightMatrix& W, Index r, float* out) noexcept {
  dequantize_row(W, r, out);
}
/// out[cols] = row r of a double model's matrix.
inline void matrix_row(const WeightView<double>& W, Index r, double* out) noexcept {
  std::memcpy(out, W.data + r * W.cols, sizeof(double) * W.cols);
}

/// x[n, d] = embedding rows of the tokens (already validated to lie in [0, V)).
template <typename S>
void embed(const Model<S>& m, const int32_t* tokens, Index n, S* x) noexcept {
  const Index d = m.config().n_embd;
  for (Index r = 0; r < n; ++r) matrix_row(m.embedding(), static_cast<Index>(tokens[r]), x + r * d);
}

/// s.xn[n, d] = LN_f(x) after the last layer.
template <typename S>
void final_norm(const Model<S>& m, Index n, WindowScratch<S>& s) noexcept {
  const Index d = m.config().n_embd;
  layer_norm(rows_view<const S>(s.x.data(), n, d), rows_view(s.xn.data(), n, d), m.norm_w(),
             m.norm_b(), m.config().norm_eps);
}

/// logits[V] = head * h, h one row of final-normalised hidden state; ws: the compute modes'
/// buffers (reserve_compute_rows).
template <typename S>
void head_logits(const Model<S>& m, const S* h, S* logits, GemmWorkspace* ws = nullptr) noexcept {
  const auto& W = m.lm_head();
  linear(rows_view(h, 1, W.cols), W, nullptr, rows_view(logits, 1, W.rows), ws);
}

/// Reserves s's buffers for the compute modes' products of up to `rows` rows (none for f32).
template <typename S>
void reserve_compute(const Model<S>& m, Index rows, GemmWorkspace& ws) {
  if (m.compute() == Compute::f32) return;
  const ModelConfig& c = m.config();
  reserve_compute_rows(ws, std::min(rows, kRowsGemmMaxRows), std::max(c.n_embd, c.ffn_hidden));
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
