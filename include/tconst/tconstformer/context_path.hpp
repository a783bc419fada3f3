#pragma once
// ContextPath: the O(N) resync (SPEC §4 context stream, SPEC §5).
//
// Over the history t[0..Lc) it runs, block by block, the three layer kinds of SPEC §4:
//   compress_layer  every context row's key and value, and the queries of the Z history rows
//                   hs..Lc, which attend to all Lc keys: Zc = C[hs:] + out0(A), then FFN0;
//   hidden_layer    the Z compressed rows attend to each other; their Kz, Vz go to the cache;
//   restore_layer   Kz, Vz of the compressed rows to the cache; every context row's compress
//                   query Qc attends to them, giving C', the context entering the next block.
//
// Memory does not grow with Lc. The context is streamed in chunks of kResyncChunk rows: the
// compress layer's attention over all Lc keys keeps a running (online) softmax per query row and
// head, so keys and values exist one chunk at a time (OnlineAttention explains the order). Block
// b's context rows C_b are not kept either: context_rows() computes a chunk of them from the
// tokens, embedding them and applying the restore layers of blocks 0..b-1 (whose Kz, Vz are already
// in the cache), which needs the compress query Qc of each earlier block again, one projection per
// row. With B = 2 that is all the recomputation there is (block 1 needs C_1 once, block 0's restore
// is run once either way); with more blocks SessionOptions::bounded_resync = false keeps C_b,
// [Lc, d], instead of recomputing it. The last block's C' is never used (SPEC §4) and never
// computed.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tconst/detail/growing_kv.hpp"
#include "tconst/detail/layers.hpp"
#include "tconst/detail/ops.hpp"
#include "tconst/model.hpp"
#include "tconst/tconstformer/kv_cache.hpp"

namespace tconst {

namespace detail {

/// Context rows per chunk of the resync.
constexpr Index kResyncChunk = 256;

/// Buffers of a resync; R = max(kResyncChunk, Z) rows each, so a chunk of context rows or all Z
/// compressed rows pass through the same buffers. They are sized at the first resync and reused;
/// only `kept` grows with the history (bounded_resync = false, more than two blocks).
template <typename S>
struct ContextScratch {
  std::vector<S> C;       // [R, d] context rows C_b of one chunk
  std::vector<S> Zc;      // [Z, d] the compressed stream: Zin = C_b[hs:], then each layer's output
  std::vector<S> Qz;      // [Z, d] rotated compress queries of the history rows hs..Lc
  std::vector<S> xn;      // [R, d] normalised rows
  std::vector<S> qkv;     // [R, 3d] projections (q | k | v, or a part of them)
  std::vector<S> att;     // [R, d] attention output
  std::vector<S> h1, h3;  // [R, f] FFN hidden
  std::vector<S> scores;  // [threads, R * max(R, Z)] attention scores of one head per thread
  std::vector<S> kept;    // [Lc, d] C_b kept for block b + 1 (bounded_resync = false only)
  OnlineAttention<S> online;
  GemmWorkspace gemm;       // the packed GEMM's input panels
  AttentionLanes<S> lanes;  // per thread: the attentions' products through the packed GEMM

  /// Frees what grows with the history (kept); the chunk buffers stay.
  void release_stream() { std::vector<S>().swap(kept); }

  size_t bytes() const {
    return sizeof(S) * (C.capacity() + Zc.capacity() + Qz.capacity() + xn.capacity() +
                        qkv.capacity() + att.capacity() + h1.capacity() + h3.capacity() +
                        scores.capacity() + kept.capacity()) +
           online.bytes() + sizeof(float) * gemm.packed.capacity() + lanes.bytes();
  }
};

template <typename S>
void grow(std::vector<S>& v, Index n) {
  if (static_cast<Index>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace detail

/// The context path of TConstFormer and TLinFormer. Stateless over the model's weights: the cache
/// and the scratch are passed in.
template <typename Scalar>
class ContextPath {
 public:
  using Index = Eigen::Index;

  /// Resync over the history tokens[0..Lc), Lc > 0: fills every block's compressed Kz, Vz and
  /// clears the window caches. With `context_kv` (TLinFormer) it also stores every block's rotated
  /// compress keys and values of all Lc rows there. With keep_context (more than two blocks), each
  /// block's context rows are kept for the next instead of recomputed. Buffers are sized before the
  /// cache is first written; should anything still throw part-way, the cache is inconsistent and
  /// the caller (Scheduler) rebuilds it from its token log.
  static void resync(const Model<Scalar>& m, const int32_t* tokens, int64_t Lc,
                     FixedKVCache<Scalar>& cache, detail::GrowingKV<Scalar>* context_kv,
                     detail::ContextScratch<Scalar>& s, bool keep_context = false) {
    Resync r(m, tokens, Lc, cache, context_kv, s, keep_context);
    for (Index b = 0; b < r.B; ++b) {
      r.compress_layer(b);
      for (Index j = 1; j + 1 < r.D; ++j) r.hidden_layer(b, j);
      r.restore_layer(b);
    }
    if (context_kv != nullptr) context_kv->set_rows(r.Lc);
    cache.set_context(Lc, r.Z);
  }

 private:
  // One resync's sizes (SPEC §3's names) and what it works on.
  struct Resync {
    const Model<Scalar>& m;
    const ModelConfig& c;
    const int32_t* tokens;
    FixedKVCache<Scalar>& cache;
    detail::GrowingKV<Scalar>* context_kv;
    detail::ContextScratch<Scalar>& s;
    const Index d, f, heads, dh, B, D;
    const Index Lc;  // context rows
    const Index hs;  // first history row: max(0, Lc - Hh)
    const Index Z;   // compressed rows: Lc - hs
    const bool keep;
    Index kept_block = -1;  // the block whose C_b s.kept holds (-1: none)

    Resync(const Model<Scalar>& model, const int32_t* t, int64_t n, FixedKVCache<Scalar>& kv,
           detail::GrowingKV<Scalar>* ctx, detail::ContextScratch<Scalar>& scratch,
           bool keep_context)
        : m(model),
          c(model.config()),
          tokens(t),
          cache(kv),
          context_kv(ctx),
          s(scratch),
          d(c.n_embd),
          f(c.ffn_hidden),
          heads(c.n_head),
          dh(c.head_dim()),
          B(c.n_block),
          D(c.inner_depth),
          Lc(static_cast<Index>(n)),
          hs(std::max<Index>(0, Lc - c.history_window)),
          Z(Lc - hs),
          keep(keep_context && B > 2) {
      using detail::grow;
      const Index R = std::max<Index>(detail::kResyncChunk, Z);
      grow(s.C, R * d);
      grow(s.Zc, Z * d);
      grow(s.Qz, Z * d);
      grow(s.xn, R * d);
      grow(s.qkv, R * 3 * d);
      grow(s.att, R * d);
      grow(s.h1, R * f);
      grow(s.h3, R * f);
      // One block of scores per thread: the attentions split their heads over the threads.
      grow(s.scores, detail::max_threads() * R * std::max(R, Z));
      if (static_cast<Index>(s.lanes.lanes.size()) < detail::max_threads()) {
        s.lanes.lanes.resize(static_cast<size_t>(detail::max_threads()));
      }
      if (keep) grow(s.kept, Lc * d);
      s.online.reset(s.Qz.data(), d, Z, heads, dh);  // sizes its accumulators
      if (context_kv != nullptr) context_kv->reserve(Lc);
    }

    // Compress layer of block b (j = 0, P0): (Qc, Kc, Vc) = qkv0(LN1_0(C)) over all Lc rows;
    // A = Attn(RoPE(Qc[hs:]), RoPE(Kc), Vc), non-causal; Zc = C[hs:] + out0(A);
    // Zc += FFN0(LN2_0(Zc)).
    void compress_layer(Index b) {
      const LayerWeights<Scalar>& P0 = m.layer(b, 0);
      Scalar* Zc = s.Zc.data();
      // The history rows first: their queries must be known before any key is folded in.
      context_rows(b, hs, Z, Zc);
      detail::layer_norm(Zc, d, s.xn.data(), d, Z, d, P0.norm1_w, P0.norm1_b, c.norm_eps);
      project(s.xn.data(), Z, P0, 0, 1, s.Qz.data(), d);
      detail::rope(s.Qz.data(), d, Z, d, dh, hs, m.rope_theta());
      s.online.reset(s.Qz.data(), d, Z, heads, dh);
      // Keys and values of every context row, chunk by chunk: rows [0, hs) from context_rows,
      // the history rows from Zin, which Zc still holds.
      for (Index r0 = 0; r0 < Lc; r0 += detail::kResyncChunk) {
        const Index n = std::min(detail::kResyncChunk, Lc - r0);
        const Index fresh = std::max<Index>(0, std::min(n, hs - r0));
        if (fresh > 0) context_rows(b, r0, fresh, s.C.data());
        if (fresh < n) {
          std::memcpy(s.C.data() + fresh * d, Zc + (r0 + fresh - hs) * d,
                      sizeof(Scalar) * (n - fresh) * d);
        }
        fold_keys(b, P0, r0, n);
      }
      s.online.finish(s.att.data(), d);
      add_linear(s.att.data(), Z, P0.out_w, P0.out_b.data, Zc);
      detail::ffn_residual(Zc, d, Z, P0, c.norm_eps, s.xn.data(), s.h1.data(), s.h3.data(),
                           &s.gemm);
    }

    // Hidden layer j of block b (P_j) over Zin = Zc: (Qz, Kz, Vz) = qkv_j(LN1_j(Zin)), rotated at
    // hs..; Kz, Vz to the cache (the window attends to them); Zc = Zin + out_j(Attn(Qz, Kz, Vz));
    // Zc += FFN_j(LN2_j(Zc)).
    void hidden_layer(Index b, Index j) {
      const LayerWeights<Scalar>& Pj = m.layer(b, j);
      Scalar* Zc = s.Zc.data();
      Scalar* qkv = s.qkv.data();
      detail::layer_norm(Zc, d, s.xn.data(), d, Z, d, Pj.norm1_w, Pj.norm1_b, c.norm_eps);
      project(s.xn.data(), Z, Pj, 0, 3, qkv, 3 * d);
      detail::rope(qkv, 3 * d, Z, 2 * d, dh, hs, m.rope_theta());
      store_z(b, j, qkv + d, qkv + 2 * d, 3 * d);
      detail::attend_rows(qkv, 3 * d, Z, qkv + d, qkv + 2 * d, 3 * d, Z, heads, dh, Index{-1},
                          s.att.data(), d, false, s.scores.data(), scores_len(), &s.lanes);
      add_linear(s.att.data(), Z, Pj.out_w, Pj.out_b.data, Zc);
      detail::ffn_residual(Zc, d, Z, Pj, c.norm_eps, s.xn.data(), s.h1.data(), s.h3.data(),
                           &s.gemm);
    }

    // Restore layer of block b (P_R) over Zin = Zc: (_, Kz, Vz) = qkv_R(LN1_R(Zin)), rotated at
    // hs..; Kz, Vz to the cache. C' = C + out_R(Attn(Qc, Kz, Vz)) is computed where the next block
    // reads its context rows (restore_rows).
    void restore_layer(Index b) {
      const LayerWeights<Scalar>& PR = m.layer(b, D - 1);
      Scalar* kv = s.qkv.data();
      detail::layer_norm(s.Zc.data(), d, s.xn.data(), d, Z, d, PR.norm1_w, PR.norm1_b, c.norm_eps);
      project(s.xn.data(), Z, PR, 1, 2, kv, 2 * d);
      detail::rope(kv, 2 * d, Z, d, dh, hs, m.rope_theta());
      store_z(b, D - 1, kv, kv + d, 2 * d);
    }

    // out[n, d] = C_b rows [r0, r0 + n): the embeddings, then the restore layers of blocks
    // 0..b-1 (or block b-1's alone, on the rows kept from the block before).
    void context_rows(Index b, Index r0, Index n, Scalar* out) {
      Index from = 0;
      if (kept_block >= 0 && kept_block < b) {
        std::memcpy(out, s.kept.data() + r0 * d, sizeof(Scalar) * n * d);
        from = kept_block;
      } else {
        detail::embed(m, tokens + r0, n, out);
      }
      for (Index i = from; i < b; ++i) restore_rows(i, r0, n, out);
    }

    // C[n, d] (rows r0..) = C' of block b's restore layer (P_R), in place:
    // C' = C + out_R(Attn(RoPE(Qc, r0..), Kz, Vz)), Qc the compress layer's query of these rows;
    // C' += FFN_R(LN2_R(C')).
    void restore_rows(Index b, Index r0, Index n, Scalar* C) {
      const LayerWeights<Scalar>& P0 = m.layer(b, 0);
      const LayerWeights<Scalar>& PR = m.layer(b, D - 1);
      Scalar* Qc = s.qkv.data();
      detail::layer_norm(C, d, s.xn.data(), d, n, d, P0.norm1_w, P0.norm1_b, c.norm_eps);
      project(s.xn.data(), n, P0, 0, 1, Qc, d);
      detail::rope(Qc, d, n, d, dh, r0, m.rope_theta());
      detail::attend_rows(Qc, d, n, cache.z_keys(b, D - 1), cache.z_values(b, D - 1), d, Z, heads,
                          dh, Index{-1}, s.att.data(), d, false, s.scores.data(), scores_len(),
                          &s.lanes);
      add_linear(s.att.data(), n, PR.out_w, PR.out_b.data, C);
      detail::ffn_residual(C, d, n, PR, c.norm_eps, s.xn.data(), s.h1.data(), s.h3.data(), &s.gemm);
    }

    // The compress layer's keys and values of context rows [r0, r0 + n) of block b, whose rows
    // are in s.C: rotated, folded into the history rows' attention, and for TLinFormer kept as
    // the window's Kc, Vc. With keep, the rows are kept for the next block's context_rows.
    void fold_keys(Index b, const LayerWeights<Scalar>& P0, Index r0, Index n) {
      Scalar* kv = s.qkv.data();
      detail::layer_norm(s.C.data(), d, s.xn.data(), d, n, d, P0.norm1_w, P0.norm1_b, c.norm_eps);
      project(s.xn.data(), n, P0, 1, 2, kv, 2 * d);
      detail::rope(kv, 2 * d, n, d, dh, r0, m.rope_theta());
      s.online.add(kv, kv + d, 2 * d, n, s.scores.data(), scores_len(), &s.lanes);
      if (context_kv != nullptr) {
        for (Index r = 0; r < n; ++r) {
          std::memcpy(context_kv->keys(b) + (r0 + r) * d, kv + r * 2 * d, sizeof(Scalar) * d);
          std::memcpy(context_kv->values(b) + (r0 + r) * d, kv + r * 2 * d + d, sizeof(Scalar) * d);
        }
      }
      if (keep && b + 1 < B) {
        std::memcpy(s.kept.data() + r0 * d, s.C.data(), sizeof(Scalar) * n * d);
        if (r0 + n == Lc) kept_block = b;
      }
    }

    Index scores_len() const { return static_cast<Index>(s.scores.size()); }

    // out[n, parts * d] = parts [first, first + parts) of qkv(xn): 0 = q, 1 = k, 2 = v.
    void project(const Scalar* x, Index n, const LayerWeights<Scalar>& P, Index first, Index parts,
                 Scalar* out, Index ld_out) {
      detail::linear(x, d, n, P.qkv_w.row_block(first * d, parts * d), P.qkv_b.data + first * d,
                     out, ld_out, &s.gemm);
    }

    // x[n, d] += in[n, d] W^T + bias.
    void add_linear(const Scalar* in, Index n, const MatrixOf<Scalar>& W, const Scalar* bias,
                    Scalar* x) {
      detail::linear(in, d, n, W, bias, x, d, &s.gemm, true);
    }

    // Copies Z rows of rotated keys k and values v (row stride ld) into the cache's Kz, Vz.
    void store_z(Index b, Index j, const Scalar* k, const Scalar* v, Index ld) {
      Scalar* K = cache.z_keys(b, j);
      Scalar* V = cache.z_values(b, j);
      for (Index r = 0; r < Z; ++r) {
        std::memcpy(K + r * d, k + r * ld, sizeof(Scalar) * d);
        std::memcpy(V + r * d, v + r * ld, sizeof(Scalar) * d);
      }
    }
  };
};

}  // namespace tconst
