// Test-only reference forward pass: SPEC.md §2-4 transcribed literally, in double precision, with
// no caching (every call recomputes the whole sequence). Independent of include/tconst/; it is
// the ground truth the engine is compared against, so it favours obviousness over speed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "ref_model.hpp"

namespace tconst_test {
namespace naive {

// Row-major matrix of doubles: `rows` sequence rows of width `cols`.
struct Mat {
  int rows = 0, cols = 0;
  std::vector<double> a;
  Mat() = default;
  Mat(int r, int c) : rows(r), cols(c), a(static_cast<size_t>(r) * c, 0.0) {}
  double& at(int i, int j) { return a[static_cast<size_t>(i) * cols + j]; }
  double at(int i, int j) const { return a[static_cast<size_t>(i) * cols + j]; }
};

inline Mat slice_rows(const Mat& x, int begin, int end) {
  Mat y(end - begin, x.cols);
  for (int i = begin; i < end; ++i)
    for (int j = 0; j < x.cols; ++j) y.at(i - begin, j) = x.at(i, j);
  return y;
}

inline Mat add(const Mat& x, const Mat& y) {
  if (x.rows != y.rows || x.cols != y.cols) throw std::logic_error("naive::add: shape mismatch");
  Mat z(x.rows, x.cols);
  for (size_t k = 0; k < z.a.size(); ++k) z.a[k] = x.a[k] + y.a[k];
  return z;
}

// Columns [c0, c1) of x.
inline Mat slice_cols(const Mat& x, int c0, int c1) {
  Mat y(x.rows, c1 - c0);
  for (int i = 0; i < x.rows; ++i)
    for (int j = c0; j < c1; ++j) y.at(i, j - c0) = x.at(i, j);
  return y;
}

// Rows of the embedding table for the given tokens.
inline Mat embed(const RefModel& m, const std::vector<int>& tokens, int begin, int end) {
  Mat x(end - begin, m.d);
  for (int i = begin; i < end; ++i)
    for (int j = 0; j < m.d; ++j)
      x.at(i - begin, j) = m.embedding[static_cast<size_t>(tokens[i]) * m.d + j];
  return x;
}

// LN(x): per row, (x - mean) / sqrt(biased var + eps) * w + b.
inline Mat layer_norm(const Mat& x, const std::vector<double>& w, const std::vector<double>& b,
                      double eps) {
  Mat y(x.rows, x.cols);
  for (int i = 0; i < x.rows; ++i) {
    double mean = 0.0;
    for (int j = 0; j < x.cols; ++j) mean += x.at(i, j);
    mean /= x.cols;
    double var = 0.0;
    for (int j = 0; j < x.cols; ++j) var += (x.at(i, j) - mean) * (x.at(i, j) - mean);
    var /= x.cols;
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int j = 0; j < x.cols; ++j) y.at(i, j) = (x.at(i, j) - mean) * inv * w[j] + b[j];
  }
  return y;
}

// SPEC §6.3: what the weight products (Lin and the head) multiply. `exact` is SPEC §4's x; the
// float32 computes round it first: bf16 to the nearest bfloat16 (ties to even), int8 to s * q per
// row and block of `block` columns, s = max|x| / 127 and q = round(x / s) in float32. The model's
// matrices are converted by the caller (RefModel holds the values the compute multiplies by).
struct ProductInputs {
  enum Mode { exact, bf16, int8 } mode = exact;
  int block = 32;
};
inline ProductInputs& product_inputs() {
  static ProductInputs p;
  return p;
}

inline float round_to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t lsb = (u >> 16) & 1u;
  u = (u + 0x7FFFu + lsb) & 0xFFFF0000u;  // finite inputs only: activations here are finite
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

inline Mat product_input(const Mat& x) {
  const ProductInputs& p = product_inputs();
  if (p.mode == ProductInputs::exact) return x;
  Mat y = x;
  for (int i = 0; i < x.rows; ++i) {
    if (p.mode == ProductInputs::bf16) {
      for (int j = 0; j < x.cols; ++j) y.at(i, j) = round_to_bf16(static_cast<float>(x.at(i, j)));
      continue;
    }
    for (int j0 = 0; j0 < x.cols; j0 += p.block) {
      const int j1 = std::min(x.cols, j0 + p.block);
      float amax = 0;
      for (int j = j0; j < j1; ++j)
        amax = std::max(amax, std::fabs(static_cast<float>(x.at(i, j))));
      const float s = amax / 127.0f;
      for (int j = j0; j < j1; ++j) {
        const float q = s > 0 ? std::nearbyint(static_cast<float>(x.at(i, j)) / s) : 0.0f;
        y.at(i, j) = static_cast<double>(s) * std::min(127.0f, std::max(-127.0f, q));
      }
    }
  }
  return y;
}

// Lin(x) = x W^T + b, W stored [out, in]; an empty b means no bias.
inline Mat linear(const Mat& x_in, const std::vector<double>& W, const std::vector<double>& b,
                  int out) {
  const Mat x = product_input(x_in);
  const int in = x.cols;
  Mat y(x.rows, out);
  for (int i = 0; i < x.rows; ++i) {
    for (int o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[o];
      for (int k = 0; k < in; ++k) s += x.at(i, k) * W[static_cast<size_t>(o) * in + k];
      y.at(i, o) = s;
    }
  }
  return y;
}

// FFN(x) = w2( silu(w1 x) * (w3 x) ), no biases.
inline Mat ffn(const Mat& x, const RefLayer& L, int f) {
  const Mat g = linear(x, L.w1, {}, f);
  const Mat u = linear(x, L.w3, {}, f);
  Mat hmid(x.rows, f);
  for (size_t k = 0; k < hmid.a.size(); ++k) {
    const double z = g.a[k];
    hmid.a[k] = z / (1.0 + std::exp(-z)) * u.a[k];  // silu(z) = z * sigmoid(z)
  }
  return linear(hmid, L.w2, {}, x.cols);
}

struct QKV {
  Mat q, k, v;
};

// qkv(x): the 3d outputs are [q | k | v].
inline QKV qkv(const Mat& x, const RefLayer& L) {
  const int d = x.cols;
  const Mat all = linear(x, L.qkv_w, L.qkv_b, 3 * d);
  return QKV{slice_cols(all, 0, d), slice_cols(all, d, 2 * d), slice_cols(all, 2 * d, 3 * d)};
}

// RoPE on every head of every row; row i is at absolute position first_pos + i.
// Adjacent pairs (2m, 2m+1), theta_m = base^(-2m/dh), angle and sin/cos in double.
inline Mat rope(const Mat& x, int first_pos, int h, double base) {
  const int dh = x.cols / h;
  Mat y = x;
  for (int i = 0; i < x.rows; ++i) {
    const double p = static_cast<double>(first_pos + i);
    for (int hd = 0; hd < h; ++hd) {
      for (int m = 0; m < dh / 2; ++m) {
        const double theta = std::pow(base, -2.0 * m / dh);
        const double ang = p * theta;
        const double c = std::cos(ang), s = std::sin(ang);
        const int j0 = hd * dh + 2 * m, j1 = j0 + 1;
        y.at(i, j0) = x.at(i, j0) * c - x.at(i, j1) * s;
        y.at(i, j1) = x.at(i, j0) * s + x.at(i, j1) * c;
      }
    }
  }
  return y;
}

// Attn(Q, K, V, causal): per head softmax(Q K^T / sqrt(dh)) V, heads concatenated in order.
// With causal, Q and K have the same length and query row i sees keys 0..i.
inline Mat attn(const Mat& Q, const Mat& K, const Mat& Vv, int h, bool causal) {
  if (K.rows != Vv.rows || K.rows == 0) throw std::logic_error("naive::attn: bad K/V");
  if (causal && Q.rows != K.rows) throw std::logic_error("naive::attn: causal needs |Q| == |K|");
  const int d = Q.cols, dh = d / h;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  Mat out(Q.rows, d);
  std::vector<double> score(static_cast<size_t>(K.rows));
  for (int hd = 0; hd < h; ++hd) {
    const int c0 = hd * dh;
    for (int i = 0; i < Q.rows; ++i) {
      const int nk = causal ? i + 1 : K.rows;
      double mx = -INFINITY;
      for (int t = 0; t < nk; ++t) {
        double s = 0.0;
        for (int j = 0; j < dh; ++j) s += Q.at(i, c0 + j) * K.at(t, c0 + j);
        score[t] = s * scale;
        mx = std::max(mx, score[t]);
      }
      double sum = 0.0;
      for (int t = 0; t < nk; ++t) {
        score[t] = std::exp(score[t] - mx);
        sum += score[t];
      }
      for (int t = 0; t < nk; ++t)
        for (int j = 0; j < dh; ++j) out.at(i, c0 + j) += score[t] / sum * Vv.at(t, c0 + j);
    }
  }
  return out;
}

// SPEC §6.3: the resync's attention (the context stream's three attentions of §4) in bf16 and
// int8: Q, K and V rounded to bf16; each weight e^s (s the scaled score) rounded to bf16 as a
// float with unbounded exponent, that is 2^k bf16(e^(s - k ln 2)) for any integer k (here k =
// ceil(max_t s_t / ln 2), as a single pass would take it); out = sum_t w_t bf16(v_t) / sum_t e^s_t
// with the sums of unrounded weights. Exact (f32): attn.
inline Mat attn_resync(const Mat& Q, const Mat& K, const Mat& Vv, int h) {
  if (product_inputs().mode == ProductInputs::exact) return attn(Q, K, Vv, h, false);
  auto rounded = [](const Mat& x) {
    Mat y = x;
    for (double& v : y.a) v = round_to_bf16(static_cast<float>(v));
    return y;
  };
  const Mat q = rounded(Q), k = rounded(K), v = rounded(Vv);
  const int d = Q.cols, dh = d / h;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  const double ln2 = std::log(2.0);
  Mat out(Q.rows, d);
  std::vector<double> score(static_cast<size_t>(K.rows));
  for (int hd = 0; hd < h; ++hd) {
    const int c0 = hd * dh;
    for (int i = 0; i < Q.rows; ++i) {
      double mx = -INFINITY;
      for (int t = 0; t < K.rows; ++t) {
        double s = 0.0;
        for (int j = 0; j < dh; ++j) s += q.at(i, c0 + j) * k.at(t, c0 + j);
        score[t] = s * scale;
        mx = std::max(mx, score[t]);
      }
      const double shift = std::ceil(mx / ln2) * ln2;
      double sum = 0.0;
      for (int t = 0; t < K.rows; ++t) {
        const double e = std::exp(score[t] - shift);
        sum += e;
        score[t] = round_to_bf16(static_cast<float>(e));
      }
      for (int t = 0; t < K.rows; ++t)
        for (int j = 0; j < dh; ++j) out.at(i, c0 + j) += score[t] * v.at(t, c0 + j);
      for (int j = 0; j < dh; ++j) out.at(i, c0 + j) /= sum;
    }
  }
  return out;
}

// Residual tail shared by every layer: x + out(a), then + FFN(LN2(.)).
inline Mat finish_layer(const Mat& x, const Mat& a, const RefLayer& L, const RefModel& m) {
  Mat y = add(x, linear(a, L.out_w, L.out_b, m.d));
  return add(y, ffn(layer_norm(y, L.norm2_w, L.norm2_b, m.eps), L, m.f));
}

// Logits of one row: LN_f(x) head^T, head = lm_head if present else the embedding.
inline std::vector<double> head_logits(const RefModel& m, const Mat& x, int row) {
  const Mat y = product_input(layer_norm(slice_rows(x, row, row + 1), m.norm_w, m.norm_b, m.eps));
  const std::vector<double>& H = m.lm_head.empty() ? m.embedding : m.lm_head;
  std::vector<double> logits(static_cast<size_t>(m.V));
  for (int v = 0; v < m.V; ++v) {
    double s = 0.0;
    for (int k = 0; k < m.d; ++k) s += y.at(0, k) * H[static_cast<size_t>(v) * m.d + k];
    logits[v] = s;
  }
  return logits;
}

// SPEC §4 baseline: B causal layers at positions 0..L-1.
inline std::vector<double> baseline_last_logits(const RefModel& m, const std::vector<int>& t) {
  const int L = static_cast<int>(t.size());
  Mat X = embed(m, t, 0, L);
  for (const auto& block : m.blocks) {
    const RefLayer& P = block.at(0);
    const QKV x = qkv(layer_norm(X, P.norm1_w, P.norm1_b, m.eps), P);
    const Mat A = attn(rope(x.q, 0, m.h, m.base), rope(x.k, 0, m.h, m.base), x.v, m.h, true);
    X = finish_layer(X, A, P, m);
  }
  return head_logits(m, X, L - 1);
}

// SPEC §3-4 TConstFormer / TLinFormer.
inline std::vector<double> tconst_last_logits(const RefModel& m, const std::vector<int>& t) {
  const int L = static_cast<int>(t.size());
  const bool tlin = m.arch == "tlinformer";
  const int h = m.h, D = m.D;
  const double base = m.base;

  // §3: window = last r tokens, r = L mod W (W when 0); context = first Lc tokens.
  int r = L % m.W;
  if (r == 0) r = m.W;
  const int Lc = L - r;
  const int hs = std::max(0, Lc - m.Hh);
  const bool ctx = Lc > 0;  // Lc = 0: no context stream, no cross-attention anywhere

  Mat C = ctx ? embed(m, t, 0, Lc) : Mat();
  Mat X = embed(m, t, Lc, L);

  for (const auto& block : m.blocks) {
    if (static_cast<int>(block.size()) != D) throw std::logic_error("block size != D");

    // ---- Compress layer (j = 0).
    const RefLayer& P0 = block[0];
    Mat Qc;          // compress query over all Lc context rows, unrotated (kept for restore)
    Mat Kc_rot, Vc;  // context keys rotated at 0.., values
    Mat Z;           // compressed stream (Lc - hs rows)
    if (ctx) {
      const QKV c = qkv(layer_norm(C, P0.norm1_w, P0.norm1_b, m.eps), P0);
      Qc = c.q;
      Kc_rot = rope(c.k, 0, h, base);
      Vc = c.v;
      const Mat Qh = rope(slice_rows(c.q, hs, Lc), hs, h, base);
      const Mat A = attn_resync(Qh, Kc_rot, Vc, h);
      Z = finish_layer(slice_rows(C, hs, Lc), A, P0, m);
    }
    {
      const QKV x = qkv(layer_norm(X, P0.norm1_w, P0.norm1_b, m.eps), P0);
      const Mat Qx = rope(x.q, Lc, h, base);
      Mat Ax = attn(Qx, rope(x.k, Lc, h, base), x.v, h, true);
      if (tlin && ctx) Ax = add(Ax, attn(Qx, Kc_rot, Vc, h, false));  // TLinFormer only
      X = finish_layer(X, Ax, P0, m);
    }

    // ---- Hidden layers (j = 1 .. D-2).
    for (int j = 1; j <= D - 2; ++j) {
      const RefLayer& P = block[j];
      Mat Kz_rot, Vz, Znew;
      if (ctx) {
        const QKV z = qkv(layer_norm(Z, P.norm1_w, P.norm1_b, m.eps), P);  // of Zin
        Kz_rot = rope(z.k, hs, h, base);
        Vz = z.v;
        const Mat A = attn_resync(rope(z.q, hs, h, base), Kz_rot, Vz, h);
        Znew = finish_layer(Z, A, P, m);
      }
      const QKV x = qkv(layer_norm(X, P.norm1_w, P.norm1_b, m.eps), P);
      const Mat Qx = rope(x.q, Lc, h, base);
      Mat Ax = attn(Qx, rope(x.k, Lc, h, base), x.v, h, true);
      if (ctx) Ax = add(Ax, attn(Qx, Kz_rot, Vz, h, false));  // Kz, Vz of the layer's input
      X = finish_layer(X, Ax, P, m);
      if (ctx) Z = Znew;
    }

    // ---- Restore layer (j = D-1).
    const RefLayer& PR = block[D - 1];
    Mat Kz_rot, Vz;
    if (ctx) {
      const QKV z = qkv(layer_norm(Z, PR.norm1_w, PR.norm1_b, m.eps), PR);  // query unused
      Kz_rot = rope(z.k, hs, h, base);
      Vz = z.v;
      // The compress layer's query of this block, over all Lc rows, rotated at 0...
      const Mat A = attn_resync(rope(Qc, 0, h, base), Kz_rot, Vz, h);
      C = finish_layer(C, A, PR, m);  // C': the context entering the next block
    }
    const QKV x = qkv(layer_norm(X, PR.norm1_w, PR.norm1_b, m.eps), PR);
    const Mat Qx = rope(x.q, Lc, h, base);
    Mat Ax = attn(Qx, rope(x.k, Lc, h, base), x.v, h, true);
    if (ctx) Ax = add(Ax, attn(Qx, Kz_rot, Vz, h, false));
    X = finish_layer(X, Ax, PR, m);
  }
  return head_logits(m, X, r - 1);
}

}  // namespace naive

// Logits (length V) of the LAST token of `tokens` (L = tokens.size() >= 1) per SPEC §3-4: split
// into context/window, run every block's compress/hidden/restore layers over the whole context and
// window (no caching, recompute everything), final LayerNorm and (tied or separate) head.
// Throws std::invalid_argument for an empty sequence or a token outside [0, V).
inline std::vector<double> naive_last_logits(const RefModel& m, const std::vector<int>& tokens) {
  if (tokens.empty()) throw std::invalid_argument("naive_last_logits: empty sequence");
  for (int tok : tokens) {
    if (tok < 0 || tok >= m.V) throw std::invalid_argument("naive_last_logits: token out of range");
  }
  if (m.arch == "transformer") return naive::baseline_last_logits(m, tokens);
  if (m.arch == "tconstformer" || m.arch == "tlinformer") {
    return naive::tconst_last_logits(m, tokens);
  }
  throw std::invalid_argument("naive_last_logits: unknown architecture '" + m.arch + "'");
}

// Row p = naive_last_logits(m, tokens[0..p]) for every p (O(L^2) work; used on small L).
inline std::vector<std::vector<double>> naive_stream_logits(const RefModel& m,
                                                            const std::vector<int>& tokens) {
  std::vector<std::vector<double>> rows;
  rows.reserve(tokens.size());
  for (size_t p = 0; p < tokens.size(); ++p) {
    const std::vector<int> prefix(tokens.begin(), tokens.begin() + static_cast<long>(p) + 1);
    rows.push_back(naive_last_logits(m, prefix));
  }
  return rows;
}

}  // namespace tconst_test
