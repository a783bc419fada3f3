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
//
// Threads. The chunks of a compress layer form up to kResyncGroups contiguous runs, each folded
// into its own online accumulator; the accumulators are merged in order at the end. The threads
// take whole runs at once, each with its own buffers (RowScratch), every layer of a chunk on one
// thread: no fork and join per product, and a chunk's rows stay in one core's caches. The layers
// of the Z compressed rows split each layer over the threads. The runs do not depend on the
// number of threads, and neither does the result.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/growing_kv.hpp"
#include "tconst/detail/layers.hpp"
#include "tconst/detail/ops.hpp"
#include "tconst/detail/parallel.hpp"
#include "tconst/model.hpp"
#include "tconst/tconstformer/kv_cache.hpp"

namespace tconst {
inline namespace TCONST_ABI {

namespace detail {

/// Context rows per chunk of the resync.
constexpr Index kResyncChunk = 256;

/// The compress layer folds its keys into this many online accumulators, each over a contiguous
/// run of chunks, merged in order at the end: so that threads can take whole chunks at once, with
/// the same result on any number of threads (the runs do not depend on it).
constexpr Index kResyncGroups = 8;

/// Buffers of one run of rows through a layer: R rows, each set of buffers used by one thread at a
/// time (the Z compressed rows, or chunks of context rows).
template <typename S>
struct RowScratch {
  std::vector<S> C;             // [R, d] context rows C_b of one chunk
  std::vector<S> xn;            // [R, d] normalised rows
  std::vector<S> qkv;           // [R, 3d] projections (q | k | v, or a part of them)
  std::vector<S> att;           // [R, d] attention output
  std::vector<S> h1, h3;        // [ffn_rows + kRowsGemmMaxRows, f] FFN hidden
  std::vector<S> scores;        // [workers, R * max(R, Z)] attention scores of one head per worker
  Index ffn_rows = 0;           // rows per slice of a chunk's FFN (0 or R: one slice)
  GemmWorkspace gemm;           // the packed GEMM's input panels
  AttentionWorkers<S> workers;  // per worker: the attentions' products through the packed GEMM

  size_t bytes() const {
    return sizeof(S) * (C.capacity() + xn.capacity() + qkv.capacity() + att.capacity() +
                        h1.capacity() + h3.capacity() + scores.capacity()) +
           sizeof(float) * gemm.packed.capacity() + workers.bytes();
  }
};

/// Buffers of a resync. They are sized at the first resync and reused; only `kept` grows with the
/// history (bounded_resync = false, more than two blocks).
template <typename S>
struct ContextScratch {
  std::vector<S> Zc;    // [Z, d] the compressed stream: Zin = C_b[hs:], then each layer's output
  std::vector<S> Qz;    // [Z, d] rotated compress queries of the history rows hs..Lc
  std::vector<S> kept;  // [Lc, d] C_b kept for block b + 1 (bounded_resync = false only)
  // [0]: the Z-row layers, and the chunks when one thread takes them at a time (its layers split
  // over the threads); [t]: thread t's chunks when the threads take chunks at once.
  std::vector<RowScratch<S>> rows;
  std::vector<OnlineAttention<S>> online;  // one per run of chunks (kResyncGroups, or 1)

  /// Frees what grows with the history (kept); the chunk buffers stay.
  void release_stream() { std::vector<S>().swap(kept); }

  size_t bytes() const {
    size_t b = sizeof(S) * (Zc.capacity() + Qz.capacity() + kept.capacity());
    for (const RowScratch<S>& r : rows) b += r.bytes();
    for (const OnlineAttention<S>& o : online) b += o.bytes();
    return b;
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
  // Rows per slice of a chunk's FFN on a thread that takes whole chunks: its hidden rows, [rows,
  // f] twice, then stay in the core's L2.
  static constexpr Index kTakerFfnRows = 64;

  // One resync's sizes (SPEC §3's names) and what it works on.
  struct Resync {
    using Rows = detail::RowScratch<Scalar>;
    using Online = detail::OnlineAttention<Scalar>;

    const Model<Scalar>& m;
    const ModelConfig& c;
    const int32_t* tokens;
    FixedKVCache<Scalar>& cache;
    detail::GrowingKV<Scalar>* context_kv;
    detail::ContextScratch<Scalar>& s;
    const Index d, f, heads, dh, B, D;
    const Index Lc;      // context rows
    const Index hs;      // first history row: max(0, Lc - Hh)
    const Index Z;       // compressed rows: Lc - hs
    const Index chunks;  // chunks of context rows
    const Index groups;  // runs of chunks, each with its own online accumulator
    const Index takers;  // threads taking whole chunks at once (1: one chunk at a time)
    const bool keep;
    // A bf16 or int8 session's attention products take BF16 inputs (SPEC §6.3).
    const bool bf16_attention;
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
          chunks((Lc + detail::kResyncChunk - 1) / detail::kResyncChunk),
          groups(chunks > 1 ? std::min(detail::kResyncGroups, chunks) : 1),
          takers(chunks > 1 ? std::min(detail::max_workers(), groups) : 1),
          keep(keep_context && B > 2),
          bf16_attention(model.compute() != Compute::f32) {
      using detail::grow;
      const Index threads = detail::max_workers();
      grow(s.Zc, Z * d);
      grow(s.Qz, Z * d);
      if (keep) grow(s.kept, Lc * d);
      // Buffers for the chunks' takers: thread 0's also serve the Z rows and, split over the
      // threads, everything when one chunk is taken at a time. As many as there could be takers
      // at any context of more than one chunk, so that they do not grow with the context.
      const Index sets = chunks > 1 ? std::min(threads, detail::kResyncGroups) : 1;
      if (static_cast<Index>(s.rows.size()) < sets) s.rows.resize(static_cast<size_t>(sets));
      for (Index i = 0; i < sets; ++i) {
        const Index R = i == 0 ? std::max(detail::kResyncChunk, Z) : detail::kResyncChunk;
        const Index workers = i == 0 ? threads : 1;
        reserve_rows(s.rows[static_cast<size_t>(i)], R, i == 0 ? R : kTakerFfnRows, workers);
      }
      const Index accumulators = chunks > 1 ? detail::kResyncGroups : 1;
      if (static_cast<Index>(s.online.size()) < accumulators) {
        s.online.resize(static_cast<size_t>(accumulators));
      }
      for (Online& o : s.online) {
        o.reset(s.Qz.data(), d, Z, heads, dh, bf16_attention);  // sizes them
      }
      if (context_kv != nullptr) context_kv->reserve(Lc);
    }

    // Room in `r` for R rows, the FFN in slices of ffn_rows, one head's scores per worker and
    // `workers` attention workers' buffers.
    void reserve_rows(Rows& r, Index R, Index ffn_rows, Index workers) {
      using detail::grow;
      r.ffn_rows = ffn_rows;
      const Index hidden = ffn_rows < R ? ffn_rows + detail::kRowsGemmMaxRows : R;
      grow(r.C, R * d);
      grow(r.xn, R * d);
      grow(r.qkv, R * 3 * d);
      grow(r.att, R * d);
      grow(r.h1, hidden * f);
      grow(r.h3, hidden * f);
      grow(r.scores, workers * R * std::max(R, Z));
      if (static_cast<Index>(r.workers.workers.size()) < workers) {
        r.workers.workers.resize(static_cast<size_t>(workers));
      }
    }

    // Compress layer of block b (j = 0, P0): (Qc, Kc, Vc) = qkv0(LN1_0(C)) over all Lc rows;
    // A = Attn(RoPE(Qc[hs:]), RoPE(Kc), Vc), non-causal; Zc = C[hs:] + out0(A);
    // Zc += FFN0(LN2_0(Zc)).
    void compress_layer(Index b) {
      const LayerWeights<Scalar>& P0 = m.layer(b, 0);
      Rows& w = s.rows[0];
      Scalar* Zc = s.Zc.data();
      // The history rows first: their queries must be known before any key is folded in.
      context_rows(b, hs, Z, Zc, w);
      detail::layer_norm(detail::rows_view<const Scalar>(Zc, Z, d),
                         detail::rows_view(w.xn.data(), Z, d), P0.norm1_w, P0.norm1_b, c.norm_eps);
      project(s.Qz.data(), d, w.xn.data(), Z, P0, 0, 1, w);
      detail::rope(s.Qz.data(), d, Z, d, dh, hs, m.rope_theta());
      for (Index g = 0; g < groups; ++g)
        s.online[static_cast<size_t>(g)].reset(s.Qz.data(), d, Z, heads, dh, bf16_attention);
      take_chunks([&](Index g, Rows& rows) {
        Online& acc = s.online[static_cast<size_t>(g)];
        for (Index ch = chunks * g / groups; ch < chunks * (g + 1) / groups; ++ch) {
          chunk_keys(b, P0, ch * detail::kResyncChunk, rows, acc);
        }
      });
      if (keep && b + 1 < B) kept_block = b;
      Online& acc = s.online[0];
      for (Index g = 1; g < groups; ++g) acc.merge(s.online[static_cast<size_t>(g)]);
      acc.finish(w.att.data(), d);
      add_linear(w.att.data(), Z, P0.out_w, P0.out_b.data, Zc, w);
      detail::ffn_residual(detail::rows_view(Zc, Z, d), P0, c.norm_eps, w.xn.data(), w.h1.data(),
                           w.h3.data(), &w.gemm);
    }

    // Runs run(g, rows) for every run g of chunks: with several takers, on that many threads at
    // once, each with its own buffers and its layers on one thread; otherwise in order on this
    // thread, with s.rows[0] and the layers split over the threads. The same result either way
    // (each run's chunks in order into its own accumulator; every layer has the same bits on any
    // number of threads).
    template <typename Run>
    void take_chunks(const Run& run) {
      if (takers > 1 && !detail::in_parallel()) {
        detail::parallel_for_dynamic(groups, takers, [&](Index g, Index worker) {
          run(g, s.rows[static_cast<size_t>(worker)]);
        });
        return;
      }
      for (Index g = 0; g < groups; ++g) run(g, s.rows[0]);
    }

    // The compress layer's keys and values of block b's context rows [r0, r0 + n) of one chunk,
    // folded into acc: rows before hs from context_rows, the history rows from Zin, which Zc
    // still holds.
    void chunk_keys(Index b, const LayerWeights<Scalar>& P0, Index r0, Rows& w, Online& acc) {
      const Index n = std::min(detail::kResyncChunk, Lc - r0);
      const Index fresh = std::max<Index>(0, std::min(n, hs - r0));
      if (fresh > 0) context_rows(b, r0, fresh, w.C.data(), w);
      if (fresh < n) {
        std::memcpy(w.C.data() + fresh * d, s.Zc.data() + (r0 + fresh - hs) * d,
                    sizeof(Scalar) * (n - fresh) * d);
      }
      fold_keys(b, P0, r0, n, w, acc);
    }

    // Hidden layer j of block b (P_j) over Zin = Zc: (Qz, Kz, Vz) = qkv_j(LN1_j(Zin)), rotated at
    // hs..; Kz, Vz to the cache (the window attends to them); Zc = Zin + out_j(Attn(Qz, Kz, Vz));
    // Zc += FFN_j(LN2_j(Zc)).
    void hidden_layer(Index b, Index j) {
      const LayerWeights<Scalar>& Pj = m.layer(b, j);
      Rows& w = s.rows[0];
      Scalar* Zc = s.Zc.data();
      Scalar* qkv = w.qkv.data();
      detail::layer_norm(detail::rows_view<const Scalar>(Zc, Z, d),
                         detail::rows_view(w.xn.data(), Z, d), Pj.norm1_w, Pj.norm1_b, c.norm_eps);
      project(qkv, 3 * d, w.xn.data(), Z, Pj, 0, 3, w);
      detail::rope(qkv, 3 * d, Z, 2 * d, dh, hs, m.rope_theta());
      store_z(b, j, qkv + d, qkv + 2 * d, 3 * d);
      detail::attend_rows(detail::rows_view(qkv, Z, d, 3 * d),
                          detail::rows_view(qkv + d, Z, d, 3 * d),
                          detail::rows_view(qkv + 2 * d, Z, d, 3 * d), detail::Heads{heads, dh},
                          Index{-1}, detail::rows_view(w.att.data(), Z, d), false,
                          {w.scores.data(), scores_len(w), &w.workers, bf16_attention});
      add_linear(w.att.data(), Z, Pj.out_w, Pj.out_b.data, Zc, w);
      detail::ffn_residual(detail::rows_view(Zc, Z, d), Pj, c.norm_eps, w.xn.data(), w.h1.data(),
                           w.h3.data(), &w.gemm);
    }

    // Restore layer of block b (P_R) over Zin = Zc: (_, Kz, Vz) = qkv_R(LN1_R(Zin)), rotated at
    // hs..; Kz, Vz to the cache. C' = C + out_R(Attn(Qc, Kz, Vz)) is computed where the next block
    // reads its context rows (restore_rows).
    void restore_layer(Index b) {
      const LayerWeights<Scalar>& PR = m.layer(b, D - 1);
      Rows& w = s.rows[0];
      Scalar* kv = w.qkv.data();
      detail::layer_norm(detail::rows_view<const Scalar>(s.Zc.data(), Z, d),
                         detail::rows_view(w.xn.data(), Z, d), PR.norm1_w, PR.norm1_b, c.norm_eps);
      project(kv, 2 * d, w.xn.data(), Z, PR, 1, 2, w);
      detail::rope(kv, 2 * d, Z, d, dh, hs, m.rope_theta());
      store_z(b, D - 1, kv, kv + d, 2 * d);
    }

    // out[n, d] = C_b rows [r0, r0 + n): the embeddings, then the restore layers of blocks
    // 0..b-1 (or block b-1's alone, on the rows kept from the block before).
    void context_rows(Index b, Index r0, Index n, Scalar* out, Rows& w) {
      Index from = 0;
      if (kept_block >= 0 && kept_block < b) {
        std::memcpy(out, s.kept.data() + r0 * d, sizeof(Scalar) * n * d);
        from = kept_block;
      } else {
        detail::embed(m, tokens + r0, n, out);
      }
      for (Index i = from; i < b; ++i) restore_rows(i, r0, n, out, w);
    }

    // C[n, d] (rows r0..) = C' of block b's restore layer (P_R), in place:
    // C' = C + out_R(Attn(RoPE(Qc, r0..), Kz, Vz)), Qc the compress layer's query of these rows;
    // C' += FFN_R(LN2_R(C')).
    void restore_rows(Index b, Index r0, Index n, Scalar* C, Rows& w) {
      const LayerWeights<Scalar>& P0 = m.layer(b, 0);
      const LayerWeights<Scalar>& PR = m.layer(b, D - 1);
      Scalar* Qc = w.qkv.data();
      detail::layer_norm(detail::rows_view<const Scalar>(C, n, d),
                         detail::rows_view(w.xn.data(), n, d), P0.norm1_w, P0.norm1_b, c.norm_eps);
      project(Qc, d, w.xn.data(), n, P0, 0, 1, w);
      detail::rope(Qc, d, n, d, dh, r0, m.rope_theta());
      detail::attend_rows(
          detail::rows_view(Qc, n, d), detail::rows_view(cache.z_keys(b, D - 1), Z, d),
          detail::rows_view(cache.z_values(b, D - 1), Z, d), detail::Heads{heads, dh}, Index{-1},
          detail::rows_view(w.att.data(), n, d), false,
          {w.scores.data(), scores_len(w), &w.workers, bf16_attention});
      add_linear(w.att.data(), n, PR.out_w, PR.out_b.data, C, w);
      // In slices of w.ffn_rows rows, none of kRowsGemmMaxRows or fewer (unless n is): every
      // slice takes the packed product, whose rows do not depend on the others, so the result is
      // that of one slice of n rows.
      const Index slice = w.ffn_rows > 0 ? w.ffn_rows : n;
      for (Index r = 0; r < n;) {
        Index rows = std::min(slice, n - r);
        if (n - r - rows <= detail::kRowsGemmMaxRows) rows = n - r;
        detail::ffn_residual(detail::rows_view(C + r * d, rows, d), PR, c.norm_eps, w.xn.data(),
                             w.h1.data(), w.h3.data(), &w.gemm);
        r += rows;
      }
    }

    // The compress layer's keys and values of context rows [r0, r0 + n) of block b, whose rows
    // are in w.C: rotated, folded into acc, and for TLinFormer kept as the window's Kc, Vc. With
    // keep, the rows are kept for the next block's context_rows.
    void fold_keys(Index b, const LayerWeights<Scalar>& P0, Index r0, Index n, Rows& w,
                   Online& acc) {
      Scalar* kv = w.qkv.data();
      detail::layer_norm(detail::rows_view<const Scalar>(w.C.data(), n, d),
                         detail::rows_view(w.xn.data(), n, d), P0.norm1_w, P0.norm1_b, c.norm_eps);
      project(kv, 2 * d, w.xn.data(), n, P0, 1, 2, w);
      detail::rope(kv, 2 * d, n, d, dh, r0, m.rope_theta());
      acc.add(kv, kv + d, 2 * d, n, w.scores.data(), scores_len(w), &w.workers);
      if (context_kv != nullptr) {
        for (Index r = 0; r < n; ++r) {
          std::memcpy(context_kv->keys(b) + (r0 + r) * d, kv + r * 2 * d, sizeof(Scalar) * d);
          std::memcpy(context_kv->values(b) + (r0 + r) * d, kv + r * 2 * d + d, sizeof(Scalar) * d);
        }
      }
      if (keep && b + 1 < B)
        std::memcpy(s.kept.data() + r0 * d, w.C.data(), sizeof(Scalar) * n * d);
    }

    static Index scores_len(const Rows& w) { return static_cast<Index>(w.scores.size()); }

    // out[n, parts * d] = parts [first, first + parts) of qkv(x): 0 = q, 1 = k, 2 = v.
    void project(Scalar* out, Index ld_out, const Scalar* x, Index n, const LayerWeights<Scalar>& P,
                 Index first, Index parts, Rows& w) {
      detail::linear(detail::rows_view(x, n, d), P.qkv_w.row_block(first * d, parts * d),
                     P.qkv_b.data + first * d, detail::rows_view(out, n, parts * d, ld_out),
                     &w.gemm);
    }

    // x[n, d] += in[n, d] W^T + bias.
    void add_linear(const Scalar* in, Index n, const MatrixOf<Scalar>& W, const Scalar* bias,
                    Scalar* x, Rows& w) {
      detail::linear(detail::rows_view(in, n, d), W, bias, detail::rows_view(x, n, d), &w.gemm,
                     true);
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

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class ContextPath<float>;
extern template class ContextPath<double>;
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
