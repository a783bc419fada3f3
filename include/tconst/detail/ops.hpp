#pragma once
// The kernels of SPEC §2: LayerNorm, linear layers, SwiGLU FFN, RoPE and attention.
//
// Activations are row-major, one row per token, addressed by row views (RowsView: pointer, rows,
// columns, row stride; views.hpp) so that the kernels read and write straight into the cache and
// scratch buffers. The single-row variants are
// the cache-hit hot path: they allocate nothing and are noexcept.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/dispatch.hpp"
#include "tconst/detail/gemm.hpp"
#include "tconst/detail/parallel.hpp"
#include "tconst/detail/views.hpp"
#include "tconst/matrix.hpp"

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

using Eigen::Index;

template <typename S>
using RowsMap = Eigen::Map<MatrixRM<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using ConstRowsMap = Eigen::Map<const MatrixRM<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using RowVecMap = Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>;
template <typename S>
using ConstRowVecMap = Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>;

/// out[n, d] = LN(in[n, d]) with biased variance (SPEC §2); n = in.rows, d = in.cols. `out` may
/// equal `in`. Many rows are
/// split over the threads (each row's arithmetic is the same on any).
template <typename S>
void layer_norm(ConstRows<S> in, RowsView<S> out, const WeightView<S>& w, const WeightView<S>& b,
                double eps) noexcept {
  const Index n = in.rows, d = in.cols;
  const auto wa = w.vec().transpose().array();
  const auto ba = b.vec().transpose().array();
  const S inv_d = S(1) / static_cast<S>(d);
  for_row_ranges(n, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      ConstRowVecMap<S> x(in.row(r), d);
      const S mean = x.sum() * inv_d;
      const S var = (x.array() - mean).square().sum() * inv_d;
      const S scale = S(1) / std::sqrt(var + static_cast<S>(eps));
      RowVecMap<S>(out.row(r), d) = ((x.array() - mean) * scale) * wa + ba;
    }
  });
}

/// Input rows up to which linear() uses the few-row kernel (rows_gemm.inl: each weight row read
/// once, no packing), where the CPU has one; above, the packed GEMM (gemm.hpp), whose packing of
/// the input pays off once there are more rows than one register tile holds.
constexpr Index kRowsGemmMaxRows = 16;

/// out[n, o] = in[n, i] W^T (+ bias) with the few-row kernel, or false when there is none
/// for S or this CPU, or n is above kRowsGemmMaxRows.
template <typename S>
bool linear_few_rows(const S* in, Index ld_in, Index n, const ConstMatrixMap<S>& W, const S* bias,
                     S* out, Index ld_out) noexcept {
  if constexpr (std::is_same_v<S, float>) {
    const RowsGemmFn fn = active_kernels().rows_gemm;
    if (fn == nullptr || n > kRowsGemmMaxRows) return false;
    const Index k = W.cols();
    for_row_ranges(W.rows(), [&](Index r0, Index r1) {
      fn(W.data(), k, r0, r1, in, ld_in, n, bias, out, ld_out);
    });
    return true;
  } else {
    (void)in, (void)ld_in, (void)n, (void)W, (void)bias, (void)out, (void)ld_out;
    return false;
  }
}

/// y[o] = W[o, :] . x (+ bias[o]) for one row; the hot GEMV. Rows of W are split over threads when
/// OpenMP is enabled and the matrix is large enough to pay for it.
template <typename S>
void gemv(const ConstMatrixMap<S>& W, const S* x, const S* bias, S* y) noexcept {
  if (linear_few_rows(x, W.cols(), 1, W, bias, y, W.rows())) return;
  Eigen::Map<const Vector<S>> xv(x, W.cols());
  for_row_ranges(W.rows(), [&](Index r0, Index r1) {
    Eigen::Map<Vector<S>> yc(y + r0, r1 - r0);
    yc.noalias() = W.middleRows(r0, r1 - r0) * xv;
    if (bias != nullptr) yc += Eigen::Map<const Vector<S>>(bias + r0, r1 - r0);
  });
}

/// out[n, o] = in[n, i] W^T + bias, W stored [o, i] (PyTorch layout); out += that with
/// `accumulate`. n = in.rows; in's first i and out's first o columns are used. A few rows take the
/// few-row kernel (or a GEMV); more take the packed GEMM, whose packing buffer `ws` holds (many
/// rows need one).
template <typename S>
void linear(ConstRows<S> in, const ConstMatrixMap<S>& W, const S* bias, RowsView<S> out,
            GemmWorkspace* ws = nullptr, bool accumulate = false) {
  const Index n = in.rows;
  if (!accumulate) {
    if (linear_few_rows(in.data, in.ld, n, W, bias, out.data, out.ld)) return;
    if (n == 1) {
      gemv(W, in.data, bias, out.data);
      return;
    }
  }
  if (ws != nullptr) {
    gemm(rows_view(W.data(), W.rows(), W.cols()), in, bias, out, accumulate, *ws);
    return;
  }
  RowsMap<S> O(out.data, n, W.rows(), Eigen::OuterStride<>(out.ld));
  const auto product =
      ConstRowsMap<S>(in.data, n, W.cols(), Eigen::OuterStride<>(in.ld)) * W.transpose();
  if (accumulate) {
    O.noalias() += product;
  } else {
    O.noalias() = product;
  }
  if (bias != nullptr) O.rowwise() += Eigen::Map<const Vector<S>>(bias, W.rows()).transpose();
}

/// The same over a double model's weight matrix (Model<double> keeps every matrix as doubles).
inline void linear(RowsView<const double> in, const WeightView<double>& W, const double* bias,
                   RowsView<double> out, GemmWorkspace* ws = nullptr, bool accumulate = false) {
  linear<double>(in, W.mat(), bias, out, ws, accumulate);
}

/// Rotates in place the head vectors in columns [0, width) of n rows, row r at absolute position
/// pos0 + r (SPEC §2: adjacent pairs; angle, sine and cosine in double). `width` is a multiple of
/// dh, so q and k stored side by side (as in a qkv row) rotate in one call. Many rows are split
/// over the threads (each row's arithmetic is the same on any).
template <typename S>
void rope(S* x, Index ld, Index n, Index width, Index dh, int64_t pos0,
          const std::vector<double>& theta) noexcept {
  const Index half = dh / 2;
  for_row_ranges(n, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      S* row = x + r * ld;
      const double p = static_cast<double>(pos0 + r);
      for (Index m = 0; m < half; ++m) {
        const double a = p * theta[static_cast<size_t>(m)];
        const S c = static_cast<S>(std::cos(a)), s = static_cast<S>(std::sin(a));
        for (Index h0 = 0; h0 < width; h0 += dh) {
          S& u0 = row[h0 + 2 * m];
          S& u1 = row[h0 + 2 * m + 1];
          const S a0 = u0, a1 = u1;
          u0 = a0 * c - a1 * s;
          u1 = a0 * s + a1 * c;
        }
      }
    }
  });
}

/// p[0..n) = softmax(p[0..n)) in place, shifted by the maximum so that no exponent is positive:
/// the portable form of the vector kernel's softmax.
template <typename S>
void softmax_portable(S* p, Index n) noexcept {
  Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>> a(p, n);
  a = (a - a.maxCoeff()).exp();
  a /= a.sum();
}

/// p[0..n) = softmax(p[0..n)) in place, with the vector kernel where there is one.
template <typename S>
void softmax(S* p, Index n) noexcept {
  if constexpr (std::is_same_v<S, float>) {
    if (const SoftmaxFn fn = active_kernels().softmax) {
      fn(p, n);
      return;
    }
  }
  softmax_portable(p, n);
}

/// max_j p[j], with the vector kernel where there is one (n >= 1).
template <typename S>
S max_of(const S* p, Index n) noexcept {
  if constexpr (std::is_same_v<S, float>) {
    if (const MaxOfFn fn = active_kernels().max_of) return fn(p, n);
  }
  return Eigen::Map<const Vector<S>>(p, n).maxCoeff();
}

/// p[j] = e^(p[j] - shift) for j < n (shift >= every p[j]); returns their sum. With the vector
/// kernel where there is one.
template <typename S>
S exp_sum(S* p, Index n, S shift) noexcept {
  if constexpr (std::is_same_v<S, float>) {
    if (const ExpSumFn fn = active_kernels().exp_sum) return fn(p, n, shift);
  }
  Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>> a(p, n);
  a = (a - shift).exp();
  return a.sum();
}

/// One query row against nk = K.rows key rows, every head (attend_one's arithmetic), portably:
/// P[h, j] = q_h . K[j, h] / sqrt(dh), softmax over j, out_h (+)= P[h, :] V[:, h]. V's rows are
/// K.ld apart, as K's.
template <typename S>
void attend_one_portable(const S* q, ConstRows<S> K, ConstRows<S> V, Heads hd, S* scores, S* out,
                         bool accumulate) noexcept {
  const Index ld_kv = K.ld, nk = K.rows, heads = hd.count, dh = hd.size;
  const S scale = S(1) / std::sqrt(static_cast<S>(dh));
  Eigen::Map<MatrixRM<S>> P(scores, heads, nk);
  for (Index j = 0; j < nk; ++j) {
    const S* kj = K.data + j * ld_kv;
    for (Index h = 0; h < heads; ++h) {
      P(h, j) = scale * Eigen::Map<const Vector<S>>(q + h * dh, dh)
                            .dot(Eigen::Map<const Vector<S>>(kj + h * dh, dh));
    }
  }
  for (Index h = 0; h < heads; ++h) softmax_portable(scores + h * nk, nk);
  Eigen::Map<Vector<S>> o(out, heads * dh);
  if (!accumulate) o.setZero();
  for (Index j = 0; j < nk; ++j) {
    const S* vj = V.data + j * ld_kv;
    for (Index h = 0; h < heads; ++h) {
      o.segment(h * dh, dh) += P(h, j) * Eigen::Map<const Vector<S>>(vj + h * dh, dh);
    }
  }
}

/// attend_one on the calling thread: the vector kernel where there is one.
template <typename S>
void attend_one_serial(const S* q, ConstRows<S> K, ConstRows<S> V, Heads hd, S* scores, S* out,
                       bool accumulate) noexcept {
  if constexpr (std::is_same_v<S, float>) {
    if (const AttendOneFn fn = active_kernels().attend_one) {
      fn(q, K.data, V.data, K.ld, K.rows, hd.count, hd.size, scores, out, accumulate);
      return;
    }
  }
  attend_one_portable(q, K, V, hd, scores, out, accumulate);
}

/// Keys (and as many values) one query row's attention must read before its heads are split over
/// threads: below that an OpenMP fork costs about as much as the split saves.
constexpr Index kMinAttendSplitFloats = Index{1} << 14;

/// One query row against nk = K.rows key rows: out[d] (+)= concat_h softmax(q_h K_h^T / sqrt(dh))
/// V_h, V's rows K.ld apart as K's.
/// The cache-hit attention. Keys and values are each read in one pass for all heads (a key row
/// holds every head's slice side by side), which keeps long caches streaming from memory instead
/// of being walked once per head. Outside a parallel region, with OpenMP and enough keys, the
/// heads are split over the threads (each head's arithmetic is the same either way, so the
/// result does not depend on the thread count). `scores` holds at least heads * nk scalars.
template <typename S>
void attend_one(const S* q, ConstRows<S> K, ConstRows<S> V, Heads hd, S* scores, S* out,
                bool accumulate) noexcept {
  const Index nk = K.rows, heads = hd.count, dh = hd.size;
  const Index parts = std::min<Index>(max_workers(), heads);
  if (parts > 1 && nk * heads * dh >= kMinAttendSplitFloats && !in_parallel()) {
    parallel_for(parts, parts, [&](Index p, Index) {
      const Index h0 = heads * p / parts, h1 = heads * (p + 1) / parts;
      attend_one_serial(q + h0 * dh, K.cols_from(h0 * dh, (h1 - h0) * dh),
                        V.cols_from(h0 * dh, (h1 - h0) * dh), Heads{h1 - h0, dh}, scores + h0 * nk,
                        out + h0 * dh, accumulate);
    });
    return;
  }
  attend_one_serial(q, K, V, hd, scores, out, accumulate);
}

/// Per-thread buffers for the attention products of many query rows. In float on a CPU with the
/// packed kernels: one head's keys and values gathered into rows of dh, its queries packed, and one
/// panel of their scores (gemm.inl's attend_panels). Otherwise (double, Isa::none): one head's keys
/// gathered, its values transposed, and the product's panels. Sized at first use, then reused.
template <typename S>
struct AttentionWorkers {
  struct Worker {
    std::vector<S> k;   // [nk, dh] one head's keys, contiguous
    std::vector<S> v;   // [nk, dh] one head's values, contiguous (panel kernels)
    std::vector<S> vt;  // [dh, nk] one head's values, transposed (the other path)
    GemmWorkspace gemm;
    LineVector<float> qp;  // [nq rounded up to vectors, dh] one head's queries, packed
    LineVector<float> pp;  // [panel rows, nk] one panel's scores, then probabilities
    // The bf16 attention's (attend_head_bf16), in units of two BF16 values, du = ceil(dh / 2):
    LineVector<uint32_t> q2;   // [nq, du] one head's queries
    LineVector<uint32_t> qp2;  // [nq rounded up to panels, du] the same, packed
    LineVector<uint32_t> k2;   // [nk, du] one head's keys
    LineVector<uint32_t> v2;   // [ceil(nk / 2), dh] the values, rows 2u and 2u + 1 paired
  };
  std::vector<Worker> workers;

  size_t bytes() const {
    size_t b = 0;
    for (const Worker& l : workers) {
      b += sizeof(S) * (l.k.capacity() + l.v.capacity() + l.vt.capacity()) +
           sizeof(float) * (l.gemm.packed.capacity() + l.qp.capacity() + l.pp.capacity()) +
           sizeof(uint32_t) *
               (l.q2.capacity() + l.qp2.capacity() + l.k2.capacity() + l.v2.capacity());
    }
    return b;
  }
};

/// The kernels that run one head's attention of many rows a panel of query rows at a time, or
/// nullptr where that cannot run (float only: a CPU with the kernels, a worker's buffers, a key).
inline const KernelTable* panel_kernels(const AttentionWorkers<float>::Worker* worker, Index nk) {
  if (worker == nullptr || nk <= 0) return nullptr;
  const KernelTable& kern = active_kernels();
  return kern.attend != nullptr ? &kern : nullptr;
}

/// One head through the active kernels' attend (panel_kernels() must have found them): the nq
/// queries Qh [nq, dh] packed into worker.qp, the nk keys Kh and values Vh [nk, dh] (Vh's rows
/// Kh.ld apart, as Kh's) gathered, then out (+)= softmax(Qh Kh^T / sqrt(dh)) Vh (normalised when
/// mx is nullptr, else one online step with the rows' running maximum mx and sum; see gemm.inl).
inline void attend_head_panels(RowsView<const float> Qh, RowsView<const float> Kh,
                               RowsView<const float> Vh, AttentionWorkers<float>::Worker& worker,
                               float* mx, float* sum, RowsView<float> out, bool accumulate) {
  const KernelTable& kern = active_kernels();
  const Index nq = Qh.rows, nk = Kh.rows, dh = Qh.cols, ld_kv = Kh.ld;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  const Index padded = (nq + kern.lanes - 1) / kern.lanes * kern.lanes;
  if (static_cast<Index>(worker.qp.size()) < padded * dh) {
    worker.qp.resize(static_cast<size_t>(padded * dh));
  }
  if (static_cast<Index>(worker.pp.size()) < kern.nr * nk) {
    worker.pp.resize(static_cast<size_t>(kern.nr * nk));
  }
  for (Index j0 = 0; j0 < nq; j0 += kern.nr) {
    kern.pack(Qh.row(j0), Qh.ld, std::min(kern.nr, nq - j0), 0, dh, worker.qp.data() + j0 * dh);
  }
  // The head's keys and values gathered into rows of dh: the tiles then read them from a few
  // contiguous kilobytes instead of one slice of each long row (BM_OnlineAttentionAdd,
  // BM_AttendRows; docs/benchmarks.md, "Choices measured").
  if (static_cast<Index>(worker.k.size()) < nk * dh) worker.k.resize(static_cast<size_t>(nk * dh));
  if (static_cast<Index>(worker.v.size()) < nk * dh) worker.v.resize(static_cast<size_t>(nk * dh));
  for (Index j = 0; j < nk; ++j) {
    std::memcpy(worker.k.data() + j * dh, Kh.data + j * ld_kv,
                sizeof(float) * static_cast<size_t>(dh));
    std::memcpy(worker.v.data() + j * dh, Vh.data + j * ld_kv,
                sizeof(float) * static_cast<size_t>(dh));
  }
  kern.attend(worker.k.data(), worker.v.data(), dh, nk, worker.qp.data(), nq, dh, scale,
              worker.pp.data(), mx, sum, out.data, out.ld, accumulate);
}

/// One head of the resync's attention in bf16 (SPEC §6.3), portably: the queries, keys and values
/// rounded to BF16, each weight bf16(e^(s - k ln 2)) with s the scaled score and k an integer, k =
/// ceil(max s / ln 2) over the row's keys (online: at least the running mx), the sums of the
/// unrounded weights. Normalised (out overwritten) when mx is nullptr, else one online step (as
/// bf16_softmax_panel). `p` holds nk floats.
inline void attend_head_bf16_portable(RowsView<const float> Qh, RowsView<const float> Kh,
                                      RowsView<const float> Vh, float* mx, float* sum, float* p,
                                      RowsView<float> out) {
  const Index nq = Qh.rows, nk = Kh.rows, dh = Qh.cols;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  const float ln2 = 0.693147180559945309f;
  for (Index i = 0; i < nq; ++i) {
    const float* q = Qh.row(i);
    float top = -std::numeric_limits<float>::infinity();
    for (Index t = 0; t < nk; ++t) {
      const float* kt = Kh.row(t);
      float s = 0.0f;
      for (Index c = 0; c < dh; ++c) s += round_to_bf16(q[c]) * round_to_bf16(kt[c]);
      p[t] = s * scale;
      top = std::max(top, p[t]);
    }
    float k = std::ceil(top / ln2);
    float factor = 0.0f;
    if (mx != nullptr) {
      k = std::max(mx[i], k);
      if (mx[i] != -std::numeric_limits<float>::infinity()) {
        factor = std::ldexp(1.0f, static_cast<int>(mx[i] - k));
      }
    }
    float total = 0.0f;
    for (Index t = 0; t < nk; ++t) {
      const float e = std::exp(p[t] - k * ln2);
      total += e;
      p[t] = round_to_bf16(e);
    }
    float* o = out.row(i);
    for (Index e = 0; e < dh; ++e) {
      float acc = 0.0f;
      for (Index t = 0; t < nk; ++t) acc += p[t] * round_to_bf16(Vh.row(t)[e]);
      o[e] = mx != nullptr ? o[e] * factor + acc : acc / total;
    }
    if (mx != nullptr) {
      sum[i] = sum[i] * factor + total;
      mx[i] = k;
    }
  }
}

/// The queries of one head in the bf16 attention's form (AttendBf16Fn's qp): rounded to BF16 and
/// packed a panel of kern.cnr rows at a time, into qp (bf16_queries_units(kern, nq, dh) units)
/// through q2 (nq ceil(dh / 2) units).
inline void bf16_pack_queries(const KernelTable& kern, RowsView<const float> Qh, uint32_t* q2,
                              uint32_t* qp) {
  const Index nq = Qh.rows, du = (Qh.cols + 1) / 2;
  kern.bf16_prepare(Qh.data, Qh.ld, nq, Qh.cols, q2, du);
  for (Index j0 = 0; j0 < nq; j0 += kern.cnr) {
    kern.unit_pack(q2 + j0 * du, du, std::min(kern.cnr, nq - j0), 0, du, qp + j0 * du);
  }
}

/// Units of one head's packed queries (bf16_pack_queries).
inline Index bf16_queries_units(const KernelTable& kern, Index nq, Index dh) {
  return (nq + kern.cnr - 1) / kern.cnr * kern.cnr * ((dh + 1) / 2);
}

/// One head of the resync's attention in bf16 (SPEC §6.3): kern's kernel (AttendBf16Fn) with
/// `worker`'s buffers, else (none, or no worker) the portable form with p (nk floats). The queries
/// already packed at qp (bf16_pack_queries), or packed here when qp is nullptr. Normalised (out
/// overwritten) when mx is nullptr, else one online step with the rows' running power-of-two
/// exponent mx and sum.
inline void attend_head_bf16(const KernelTable& kern, RowsView<const float> Qh,
                             RowsView<const float> Kh, RowsView<const float> Vh,
                             AttentionWorkers<float>::Worker* worker, const uint32_t* qp, float* mx,
                             float* sum, float* p, RowsView<float> out) {
  if (kern.attend_bf16 == nullptr || worker == nullptr) {
    attend_head_bf16_portable(Qh, Kh, Vh, mx, sum, p, out);
    return;
  }
  AttentionWorkers<float>::Worker& w = *worker;
  const Index nq = Qh.rows, nk = Kh.rows, dh = Qh.cols, du = (dh + 1) / 2;
  if (qp == nullptr) {
    uint32_t* packed = at_least(w.qp2, bf16_queries_units(kern, nq, dh));
    bf16_pack_queries(kern, Qh, at_least(w.q2, nq * du), packed);
    qp = packed;
  }
  uint32_t* k2 = at_least(w.k2, nk * du);
  uint32_t* v2 = at_least(w.v2, (nk + 1) / 2 * dh);
  float* pp = at_least(w.pp, kern.cnr * nk);
  kern.bf16_prepare(Kh.data, Kh.ld, nk, dh, k2, du);
  kern.bf16_pair_rows(Vh.data, Vh.ld, nk, dh, v2);
  kern.attend_bf16(k2, v2, nk, qp, nq, dh, 1.0f / std::sqrt(static_cast<float>(dh)), pp, mx, sum,
                   out.data, out.ld);
}

/// P[nq, nk] = Qh Kh^T for one head (Qh [nq, dh], Kh [nk, dh]; P contiguous): through the packed
/// GEMM with `worker`, else Eigen's product.
template <typename S>
void head_scores(ConstRows<S> Qh, ConstRows<S> Kh, S* P,
                 typename AttentionWorkers<S>::Worker* worker) {
  const Index nq = Qh.rows, nk = Kh.rows, dh = Qh.cols;
  if (worker == nullptr) {
    RowsMap<S>(P, nq, nk, Eigen::OuterStride<>(nk)).noalias() =
        ConstRowsMap<S>(Qh.data, nq, dh, Eigen::OuterStride<>(Qh.ld)) *
        ConstRowsMap<S>(Kh.data, nk, dh, Eigen::OuterStride<>(Kh.ld)).transpose();
    return;
  }
  if (static_cast<Index>(worker->k.size()) < nk * dh)
    worker->k.resize(static_cast<size_t>(nk * dh));
  for (Index j = 0; j < nk; ++j) std::memcpy(worker->k.data() + j * dh, Kh.row(j), sizeof(S) * dh);
  gemm(rows_view<const S>(worker->k.data(), nk, dh), Qh, nullptr, rows_view(P, nq, nk), false,
       worker->gemm);
}

/// out[nq, dh] (+)= P[nq, nk] Vh[nk, dh] for one head: through the packed GEMM with `worker`, else
/// Eigen's product.
template <typename S>
void head_values(ConstRows<S> P, ConstRows<S> Vh, RowsView<S> out, bool accumulate,
                 typename AttentionWorkers<S>::Worker* worker) {
  const Index nq = P.rows, nk = P.cols, dh = Vh.cols;
  if (worker == nullptr) {
    RowsMap<S> O(out.data, nq, dh, Eigen::OuterStride<>(out.ld));
    const auto product = ConstRowsMap<S>(P.data, nq, nk, Eigen::OuterStride<>(P.ld)) *
                         ConstRowsMap<S>(Vh.data, nk, dh, Eigen::OuterStride<>(Vh.ld));
    if (accumulate) {
      O.noalias() += product;
    } else {
      O.noalias() = product;
    }
    return;
  }
  if (static_cast<Index>(worker->vt.size()) < nk * dh)
    worker->vt.resize(static_cast<size_t>(nk * dh));
  RowsMap<S>(worker->vt.data(), dh, nk, Eigen::OuterStride<>(nk)) =
      ConstRowsMap<S>(Vh.data, nk, dh, Eigen::OuterStride<>(Vh.ld)).transpose();
  gemm(rows_view<const S>(worker->vt.data(), dh, nk), P, nullptr, out, accumulate, worker->gemm);
}

/// The worker buffers of thread `worker`, or nullptr without any.
template <typename S>
typename AttentionWorkers<S>::Worker* worker_of(AttentionWorkers<S>* al, Index worker) {
  return al != nullptr && worker < static_cast<Index>(al->workers.size())
             ? &al->workers[static_cast<size_t>(worker)]
             : nullptr;
}

/// The buffers of an attention of many rows: `scores` (see attend_rows), the scalars it holds
/// (scores_len, 0 when not given) and the workers' buffers (none when nullptr).
template <typename S>
struct AttendScratch {
  S* scores = nullptr;
  Index scores_len = 0;
  AttentionWorkers<S>* workers = nullptr;
  bool bf16 = false;  // the resync's attention of a bf16 or int8 session (float, non-causal)
};

/// nq = Q.rows query rows against nk = K.rows key rows, per head, separate softmax per call
/// (SPEC §2): out[nq, d] (+)= Attn(Q, K, V), V's rows K.ld apart as K's. With causal_base >= 0,
/// query row r sees keys j <= causal_base + r only (the window's causal mask, rows offset by the
/// cache rows already present). `scores` holds at least max(nq, heads) * nk scalars; given
/// scores_len, the heads are split over as many threads as it has room for (nq * nk scalars each;
/// each head's arithmetic is the same on any thread, so the result does not depend on the thread
/// count).
template <typename S>
void attend_rows(ConstRows<S> Q, ConstRows<S> K, ConstRows<S> V, Heads hd, Index causal_base,
                 RowsView<S> out, bool accumulate, AttendScratch<typename NoDeduce<S>::type> sc) {
  const Index nq = Q.rows, nk = K.rows, heads = hd.count, dh = hd.size;
  S* const scores = sc.scores;
  AttentionWorkers<S>* const al = sc.workers;
  if constexpr (std::is_same_v<S, float>) {
    if (sc.bf16) {
      if (causal_base >= 0 || accumulate) {
        throw std::logic_error("attend_rows: the bf16 attention is non-causal and overwrites");
      }
      const Index workers = workers_for(heads, 2 * nq * nk * dh, nk, sc.scores_len);
      parallel_for(heads, workers, [&](Index h, Index worker) {
        attend_head_bf16(active_kernels(), Q.cols_from(h * dh, dh), K.cols_from(h * dh, dh),
                         V.cols_from(h * dh, dh), worker_of(al, worker), nullptr, nullptr, nullptr,
                         scores + worker * nk, out.cols_from(h * dh, dh));
      });
      return;
    }
  }
  if (nq == 1) {
    const Index visible = causal_base >= 0 ? std::min(nk, causal_base + 1) : nk;
    attend_one(Q.data, K.block(0, visible), V.block(0, visible), hd, scores, out.data, accumulate);
    return;
  }
  const S scale = S(1) / std::sqrt(static_cast<S>(dh));
  const Index workers = workers_for(heads, 2 * nq * nk * dh, nq * nk, sc.scores_len);
  parallel_for(heads, workers, [&](Index h, Index worker) {
    const ConstRows<S> Qh = Q.cols_from(h * dh, dh), Kh = K.cols_from(h * dh, dh);
    const ConstRows<S> Vh = V.cols_from(h * dh, dh);
    if constexpr (std::is_same_v<S, float>) {
      const KernelTable* kern =
          causal_base < 0 ? panel_kernels(worker_of(al, worker), nk) : nullptr;
      if (kern != nullptr) {
        attend_head_panels(Qh, Kh, Vh, *worker_of(al, worker), nullptr, nullptr,
                           out.cols_from(h * dh, dh), accumulate);
        return;
      }
    }
    S* p = scores + worker * nq * nk;
    head_scores(Qh, Kh, p, worker_of(al, worker));
    RowsMap<S> P(p, nq, nk, Eigen::OuterStride<>(nk));
    for (Index r = 0; r < nq; ++r) {
      const Index visible = causal_base >= 0 ? std::min(nk, causal_base + r + 1) : nk;
      auto row = P.row(r);
      row.head(visible) *= scale;
      softmax(row.data(), visible);
      row.tail(nk - visible).setZero();
    }
    head_values(rows_view<const S>(p, nq, nk), Vh, out.cols_from(h * dh, dh), accumulate,
                worker_of(al, worker));
  });
}

/// Non-causal attention of a fixed set of queries to keys that arrive in chunks, with a running
/// (online) softmax per query row and head, so that keys and values never need to exist all at
/// once. Used by the compress layer's context attention, whose keys span the whole history.
template <typename S>
class OnlineAttention {
 public:
  /// Q: [nq, d] rotated queries, kept by pointer until finish().
  void reset(const S* Q, Index ld_q, Index nq, Index heads, Index dh, bool bf16 = false) {
    bf16_ = bf16;
    Q_ = Q;
    ld_q_ = ld_q;
    nq_ = nq;
    heads_ = heads;
    dh_ = dh;
    stride_ = (nq + kStatAlign - 1) / kStatAlign * kStatAlign;
    acc_.setZero(nq, heads * dh);
    max_.assign(static_cast<size_t>(heads * stride_), -std::numeric_limits<S>::infinity());
    if constexpr (std::is_same_v<S, float>) {
      const KernelTable& kern = active_kernels();
      if (bf16 && kern.attend_bf16 != nullptr) {
        at_least(queries_, heads * bf16_queries_units(kern, nq, dh));
        queries_ready_.assign(static_cast<size_t>(heads), 0);
      }
    }
    sum_.assign(static_cast<size_t>(heads * stride_), S(0));
  }

  /// Folds in nk more keys and values. `scores` holds at least nq * nk scalars; given scores_len,
  /// the heads are split over as many threads as it has room for (as attend_rows).
  ///
  /// The order that makes a chunk at a time exact: for each query row and head, with m the running
  /// maximum of the scaled scores, l the running sum of exp(score - m) and acc the running sum of
  /// exp(score - m) * value, a new chunk with maximum m' >= m rescales l and acc by exp(m - m')
  /// and adds its own terms taken against m'. finish() divides acc by l: the softmax over every key
  /// seen, whatever the chunking.
  void add(const S* K, const S* V, Index ld_kv, Index nk, S* scores, Index scores_len = 0,
           AttentionWorkers<S>* al = nullptr) {
    const S scale = S(1) / std::sqrt(static_cast<S>(dh_));
    const Index workers = workers_for(heads_, 2 * nq_ * nk * dh_, nq_ * nk, scores_len);
    parallel_for(heads_, workers, [&](Index h, Index worker) {
      S* mx = max_.data() + h * stride_;
      S* sum = sum_.data() + h * stride_;
      const RowsView<const S> Qh = rows_view(Q_ + h * dh_, nq_, dh_, ld_q_);
      const RowsView<const S> Kh = rows_view(K + h * dh_, nk, dh_, ld_kv);
      const RowsView<const S> Vh = rows_view(V + h * dh_, nk, dh_, ld_kv);
      const RowsView<S> acc_h = rows_view(acc_.data() + h * dh_, nq_, dh_, heads_ * dh_);
      if constexpr (std::is_same_v<S, float>) {
        if (bf16_) {
          // The queries are the same for every chunk: rounded and packed at the first.
          const KernelTable& kern = active_kernels();
          uint32_t* qp = nullptr;
          if (kern.attend_bf16 != nullptr) {
            const Index units = bf16_queries_units(kern, nq_, dh_);
            qp = queries_.data() + h * units;
            if (queries_ready_[static_cast<size_t>(h)] == 0) {
              AttentionWorkers<float>::Worker* w = worker_of(al, worker);
              if (w != nullptr) {
                bf16_pack_queries(kern, Qh, at_least(w->q2, nq_ * ((dh_ + 1) / 2)), qp);
                queries_ready_[static_cast<size_t>(h)] = 1;
              } else {
                qp = nullptr;
              }
            }
          }
          attend_head_bf16(kern, Qh, Kh, Vh, worker_of(al, worker), qp, mx, sum,
                           scores + worker * nk, acc_h);
          return;
        }
        if (panel_kernels(worker_of(al, worker), nk) != nullptr) {
          attend_head_panels(Qh, Kh, Vh, *worker_of(al, worker), mx, sum, acc_h, true);
          return;
        }
      }
      S* p = scores + worker * nq_ * nk;
      head_scores(Qh, Kh, p, worker_of(al, worker));
      RowsMap<S> P(p, nq_, nk, Eigen::OuterStride<>(nk));
      P *= scale;
      for (Index r = 0; r < nq_; ++r) {
        S* row = p + r * nk;
        const S old_max = mx[r];
        const S new_max = std::max(old_max, max_of(row, nk));
        const S rescale = std::exp(old_max - new_max);  // 0 on the first chunk (old = -inf)
        sum[r] = sum[r] * rescale + exp_sum(row, nk, new_max);
        mx[r] = new_max;
        acc_.row(r).segment(h * dh_, dh_) *= rescale;
      }
      head_values(rows_view<const S>(p, nq_, nk), Vh, acc_h, true, worker_of(al, worker));
    });
  }

  /// Folds in `o`, an accumulator over the same queries and shape that has seen other keys: this
  /// then holds the softmax state over the keys of both. Per query row and head, with m = max(m0,
  /// m1): l = l0 e^(m0 - m) + l1 e^(m1 - m), acc = acc0 e^(m0 - m) + acc1 e^(m1 - m).
  void merge(const OnlineAttention& o) {
    for (Index h = 0; h < heads_; ++h) {
      for (Index r = 0; r < nq_; ++r) {
        const size_t i = static_cast<size_t>(h * stride_ + r);
        const S m1 = o.max_[i];
        if (m1 == -std::numeric_limits<S>::infinity()) continue;  // o saw no key
        const S m0 = max_[i], m = std::max(m0, m1);
        // a = 0 when this saw none. In bf16 the maxima are powers of two's exponents (integers):
        // the factors are exact.
        const S a = !bf16_ ? std::exp(m0 - m)
                    : m0 == -std::numeric_limits<S>::infinity()
                        ? S(0)
                        : std::ldexp(S(1), static_cast<int>(m0 - m));
        const S b = bf16_ ? std::ldexp(S(1), static_cast<int>(m1 - m)) : std::exp(m1 - m);
        sum_[i] = sum_[i] * a + o.sum_[i] * b;
        max_[i] = m;
        acc_.row(r).segment(h * dh_, dh_) =
            acc_.row(r).segment(h * dh_, dh_) * a + o.acc_.row(r).segment(h * dh_, dh_) * b;
      }
    }
  }

  /// Bytes held by the accumulators.
  size_t bytes() const {
    return sizeof(S) * static_cast<size_t>(acc_.size() + max_.size() + sum_.size()) +
           sizeof(uint32_t) * queries_.capacity() + queries_ready_.capacity();
  }

  /// out[nq, d] = the normalised attention output.
  void finish(S* out, Index ld_out) const {
    for (Index r = 0; r < nq_; ++r) {
      for (Index h = 0; h < heads_; ++h) {
        RowVecMap<S>(out + r * ld_out + h * dh_, dh_) =
            acc_.row(r).segment(h * dh_, dh_) / sum_[static_cast<size_t>(h * stride_ + r)];
      }
    }
  }

 private:
  // A head's statistics start on a cache line and cover whole vectors of query rows.
  static constexpr Index kStatAlign = 16;
  const S* Q_ = nullptr;
  bool bf16_ = false;  // the bf16 attention: max_ holds each row's power-of-two exponent k
  Index ld_q_ = 0, nq_ = 0, heads_ = 0, dh_ = 0, stride_ = 0;
  MatrixRM<S> acc_;    // [nq, d] un-normalised weighted values
  LineVector<S> max_;  // [heads, stride] running max of the scaled scores per query row
  LineVector<S> sum_;  // [heads, stride] running sum of exp(score - max)
  // bf16: each head's queries rounded and packed (bf16_pack_queries) at its first chunk.
  LineVector<uint32_t> queries_;
  std::vector<uint8_t> queries_ready_;  // per head: 1 once its queries are packed
};

/// a[i] = silu(a[i]) * g[i] = a[i] / (1 + e^-a[i]) * g[i] for i < n: the SwiGLU gate, portably
/// (the vector kernel's form).
template <typename S>
void silu_gate_portable(S* a, const S* g, Index n) noexcept {
  Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>> x(a, n);
  x = x / (S(1) + (-x).exp()) * Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(g, n);
}

/// a[i] = silu(a[i]) * g[i] for i < n, with the vector kernel where there is one.
template <typename S>
void silu_gate(S* a, const S* g, Index n) noexcept {
  if constexpr (std::is_same_v<S, float>) {
    if (const SiluGateFn fn = active_kernels().silu_gate) {
      fn(a, g, n);
      return;
    }
  }
  silu_gate_portable(a, g, n);
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
