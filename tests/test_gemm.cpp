// The packed matrix product of detail/gemm.hpp against a plain double-precision product, on every
// path: each instruction set this CPU runs, asked for explicitly, and Isa::none (Eigen). Shapes
// that exercise every tail: input rows not a multiple of a panel (1 .. 257), k not a multiple of
// the vector width and larger than one pass, output columns not a multiple of a tile; padded
// strides (padding must stay untouched); with and without bias; overwriting and accumulating.
// Then: the same bits on 1, 2 and 3 threads, and a workspace that stops growing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "support/kernel_data.hpp"
#include "tconst/detail/gemm.hpp"
#include "tconst/synthetic.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using Eigen::Index;
using tconst::detail::GemmWorkspace;
using tconst::detail::Isa;

using tconst_test::kPad;
using tconst_test::random_floats;

/// Every path: the vector instruction sets this CPU runs, then Eigen's.
std::vector<Isa> paths() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (tconst::detail::kernels(isa).compute != nullptr) isas.push_back(isa);
  }
  isas.push_back(Isa::none);
  return isas;
}

struct Shape {
  Index n, k, o;
};

/// One shape: the double product (Eigen's, and the sums of |terms|) once, then every path, with and
/// without accumulation, against it.
void check_shape(const Shape& s, bool bias, uint64_t seed, GemmWorkspace& ws) {
  const Index ld_in = s.k + 3, ld_out = s.o + 5;
  const std::vector<float> W = random_floats(static_cast<size_t>(s.o * s.k), seed);
  const std::vector<float> in = random_floats(static_cast<size_t>(s.n * ld_in), seed + 1);
  const std::vector<float> b = random_floats(static_cast<size_t>(s.o), seed + 2);
  const std::vector<float> start = random_floats(static_cast<size_t>(s.n * ld_out), seed + 3);
  // want = in W^T (+ bias) and mag = |in| |W|^T (+ |bias|), in double.
  using Rows = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Rows X =
      Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0,
                 Eigen::OuterStride<>>(in.data(), s.n, s.k, Eigen::OuterStride<>(ld_in))
          .cast<double>();
  const Rows Wd =
      Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          W.data(), s.o, s.k)
          .cast<double>();
  Rows want = X * Wd.transpose();
  Rows mag = X.cwiseAbs() * Wd.cwiseAbs().transpose();
  if (bias) {
    for (Index o = 0; o < s.o; ++o) {
      want.col(o).array() += b[static_cast<size_t>(o)];
      mag.col(o).array() += std::abs(b[static_cast<size_t>(o)]);
    }
  }
  for (Isa isa : paths()) {
    for (bool acc : {false, true}) {
      SCOPED_TRACE(std::string(tconst::detail::isa_name(isa)) + " n " + std::to_string(s.n) +
                   " k " + std::to_string(s.k) + " o " + std::to_string(s.o) + " bias " +
                   std::to_string(bias) + " accumulate " + std::to_string(acc));
      std::vector<float> out(static_cast<size_t>(s.n * ld_out), kPad);
      if (acc) {
        for (Index g = 0; g < s.n; ++g) {
          std::memcpy(out.data() + g * ld_out, start.data() + g * ld_out,
                      sizeof(float) * static_cast<size_t>(s.o));
        }
      }
      tconst::detail::gemm(isa, tconst::detail::rows_view(W.data(), s.o, s.k),
                           tconst::detail::rows_view(in.data(), s.n, s.k, ld_in),
                           bias ? b.data() : nullptr,
                           tconst::detail::rows_view(out.data(), s.n, s.o, ld_out), acc, ws);
      for (Index g = 0; g < s.n; ++g) {
        for (Index o = 0; o < ld_out; ++o) {
          const size_t at = static_cast<size_t>(g * ld_out + o);
          if (o >= s.o) {
            ASSERT_EQ(out[at], kPad) << "wrote into the padding at row " << g << ", column " << o;
            continue;
          }
          const double base = acc ? start[at] : 0.0;
          ASSERT_NEAR(out[at], base + want(g, o), 1e-6 * (mag(g, o) + std::abs(base)) + 1e-6)
              << "row " << g << ", column " << o;
        }
      }
    }
  }
}

TEST(Gemm, EveryPathMatchesADoubleProduct) {
  // k: below, at and past the vector widths; 431/433 around the model's d; 1500 takes 2 passes.
  const Index ns[] = {1, 2, 5, 7, 13, 255, 256, 257};
  const Index ks[] = {1, 3, 17, 431, 433, 1500};
  const Index os[] = {1, 5, 33, 1296};
  GemmWorkspace ws;
  uint64_t seed = 1;
  for (Index n : ns) {
    for (Index k : ks) {
      for (Index o : os) {
        // The largest shapes once (with bias), the rest both ways.
        const bool large = n > 200 && k > 400 && o > 1000;
        for (bool bias : {true, false}) {
          check_shape({n, k, o}, bias, seed, ws);
          seed += 4;
          if (HasFatalFailure()) return;
          if (large) break;
        }
      }
    }
  }
}

/// Output columns that are not a multiple of any tile, with many rows (several blocks of input
/// rows) and the model's shapes.
TEST(Gemm, ModelShapesAndManyRows) {
  GemmWorkspace ws;
  uint64_t seed = 1000;
  for (const Shape& s :
       {Shape{256, 432, 432}, Shape{64, 1280, 432}, Shape{1024, 432, 37}, Shape{700, 97, 250}}) {
    check_shape(s, true, seed, ws);
    seed += 4;
    if (HasFatalFailure()) return;
  }
}

TEST(Gemm, DoubleUsesEigen) {
  const Index n = 9, k = 21, o = 13, ld_in = 25, ld_out = 15;
  std::vector<double> W(static_cast<size_t>(o * k)), in(static_cast<size_t>(n * ld_in)),
      b(static_cast<size_t>(o)), out(static_cast<size_t>(n * ld_out), kPad);
  tconst::Rng rng(5);
  tconst::fill_uniform(rng, W.data(), static_cast<int64_t>(W.size()), -1.0, 1.0);
  tconst::fill_uniform(rng, in.data(), static_cast<int64_t>(in.size()), -1.0, 1.0);
  tconst::fill_uniform(rng, b.data(), static_cast<int64_t>(b.size()), -1.0, 1.0);
  GemmWorkspace ws;
  tconst::detail::gemm(tconst::detail::rows_view(W.data(), o, k),
                       tconst::detail::rows_view(in.data(), n, k, ld_in), b.data(),
                       tconst::detail::rows_view(out.data(), n, o, ld_out), false, ws);
  for (Index g = 0; g < n; ++g) {
    for (Index c = 0; c < ld_out; ++c) {
      const double got = out[static_cast<size_t>(g * ld_out + c)];
      if (c >= o) {
        EXPECT_EQ(got, kPad);
        continue;
      }
      double want = b[static_cast<size_t>(c)];
      for (Index j = 0; j < k; ++j) {
        want += W[static_cast<size_t>(c * k + j)] * in[static_cast<size_t>(g * ld_in + j)];
      }
      EXPECT_NEAR(got, want, 1e-12);
    }
  }
}

/// Repeated products of the same shapes reuse the workspace's buffer.
TEST(Gemm, WorkspaceStopsGrowing) {
  const Index n = 300, k = 700, o = 50;
  const std::vector<float> W = random_floats(static_cast<size_t>(o * k), 7);
  const std::vector<float> in = random_floats(static_cast<size_t>(n * k), 8);
  std::vector<float> out(static_cast<size_t>(n * o));
  GemmWorkspace ws;
  tconst::detail::gemm(tconst::detail::rows_view(W.data(), o, k),
                       tconst::detail::rows_view(in.data(), n, k, k), nullptr,
                       tconst::detail::rows_view(out.data(), n, o, o), false, ws);
  const float* data = ws.packed.data();
  const size_t size = ws.packed.size();
  for (Index rows : {n, Index{1}, Index{77}, n}) {
    tconst::detail::gemm(tconst::detail::rows_view(W.data(), o, k),
                         tconst::detail::rows_view(in.data(), rows, k, k), nullptr,
                         tconst::detail::rows_view(out.data(), rows, o, o), false, ws);
    EXPECT_EQ(ws.packed.data(), data);
    EXPECT_EQ(ws.packed.size(), size);
  }
}

/// One attention head through isa's attend_panels (gemm.inl: a panel of query rows at a time, its
/// scores in panel layout, the softmax down the lanes, the values' product reading the
/// probabilities as its packed input) against
/// softmax(q . k / sqrt(dh)) V in double: normalised over all nk keys, overwriting and accumulating
/// into the output; and online, the keys in chunks of `chunk`. Padding beside every output row must
/// stay untouched.
void check_panel_attention(Isa isa, Index nq, Index nk, Index dh, Index chunk, uint64_t seed) {
  SCOPED_TRACE(std::string(tconst::detail::isa_name(isa)) + " nq " + std::to_string(nq) + " nk " +
               std::to_string(nk) + " dh " + std::to_string(dh) + " chunk " +
               std::to_string(chunk));
  auto at = [](Index i) { return static_cast<size_t>(i); };
  const tconst::detail::KernelTable& kern = tconst::detail::kernels(isa);
  ASSERT_NE(kern.attend, nullptr);
  const Index ld_q = dh + 3, ld_kv = dh + 5, ld_out = dh + 2;
  // Queries 4x larger than the keys: scores of a few units, so that the softmax's shift matters.
  const std::vector<float> Q = random_floats(static_cast<size_t>(nq * ld_q), seed, -4.0, 4.0);
  const std::vector<float> K = random_floats(static_cast<size_t>(nk * ld_kv), seed + 1);
  const std::vector<float> V = random_floats(static_cast<size_t>(nk * ld_kv), seed + 2);
  const std::vector<float> start = random_floats(static_cast<size_t>(nq * ld_out), seed + 3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  // want[r, e] and mag[r, e] = sum_c p_c |V[c, e]|, in double.
  std::vector<double> want(static_cast<size_t>(nq * dh)), mag(want.size());
  for (Index r = 0; r < nq; ++r) {
    std::vector<double> p(static_cast<size_t>(nk));
    double top = -1e300, total = 0;
    for (Index c = 0; c < nk; ++c) {
      double dot = 0;
      for (Index e = 0; e < dh; ++e)
        dot += static_cast<double>(Q[at(r * ld_q + e)]) * K[at(c * ld_kv + e)];
      p[at(c)] = dot * scale;
      top = std::max(top, p[at(c)]);
    }
    for (double& x : p) total += (x = std::exp(x - top));
    for (Index e = 0; e < dh; ++e) {
      double w = 0, m = 0;
      for (Index c = 0; c < nk; ++c) {
        w += p[at(c)] / total * V[at(c * ld_kv + e)];
        m += p[at(c)] / total * std::abs(V[at(c * ld_kv + e)]);
      }
      want[at(r * dh + e)] = w;
      mag[at(r * dh + e)] = m;
    }
  }
  const Index padded = (nq + kern.lanes - 1) / kern.lanes * kern.lanes;
  tconst::detail::LineVector<float> qp(static_cast<size_t>(padded * dh)),
      pp(static_cast<size_t>(kern.nr * nk)), mx(static_cast<size_t>(padded)),
      sum(static_cast<size_t>(padded));
  for (Index j0 = 0; j0 < nq; j0 += kern.nr) {
    kern.pack(Q.data() + j0 * ld_q, ld_q, std::min(kern.nr, nq - j0), 0, dh, qp.data() + j0 * dh);
  }
  auto expect_output = [&](const std::vector<float>& out, bool accumulated, const char* what) {
    for (Index r = 0; r < nq; ++r) {
      for (Index e = 0; e < ld_out; ++e) {
        const size_t i = at(r * ld_out + e);
        if (e >= dh) {
          ASSERT_EQ(out[i], kPad) << what << ": wrote into the padding at row " << r;
          continue;
        }
        const double base = accumulated ? start[i] : 0.0;
        ASSERT_NEAR(out[i], base + want[at(r * dh + e)],
                    2e-6 * (mag[at(r * dh + e)] + std::abs(base)) + 1e-7)
            << what << ": row " << r << ", column " << e;
      }
    }
  };
  const float fscale = static_cast<float>(scale);
  for (bool acc : {false, true}) {
    std::vector<float> out(static_cast<size_t>(nq * ld_out), kPad);
    for (Index r = 0; acc && r < nq; ++r) {
      std::memcpy(out.data() + r * ld_out, start.data() + r * ld_out, sizeof(float) * at(dh));
    }
    kern.attend(K.data(), V.data(), ld_kv, nk, qp.data(), nq, dh, fscale, pp.data(), nullptr,
                nullptr, out.data(), ld_out, acc);
    expect_output(out, acc, acc ? "normalised, accumulated" : "normalised");
    if (testing::Test::HasFatalFailure()) return;
  }
  // Online: the running maximum and sum per query row, the keys in chunks; out is divided by the
  // sum at the end (OnlineAttention::finish).
  std::fill(mx.begin(), mx.end(), -std::numeric_limits<float>::infinity());
  std::fill(sum.begin(), sum.end(), 0.0f);
  std::vector<float> out(static_cast<size_t>(nq * ld_out), kPad);
  for (Index r = 0; r < nq; ++r) std::fill_n(out.data() + r * ld_out, dh, 0.0f);
  for (Index c0 = 0; c0 < nk; c0 += chunk) {
    kern.attend(K.data() + c0 * ld_kv, V.data() + c0 * ld_kv, ld_kv, std::min(chunk, nk - c0),
                qp.data(), nq, dh, fscale, pp.data(), mx.data(), sum.data(), out.data(), ld_out,
                true);
  }
  for (Index r = 0; r < nq; ++r) {
    for (Index e = 0; e < dh; ++e) out[at(r * ld_out + e)] /= sum[at(r)];
  }
  expect_output(out, false, "online");
}

TEST(Gemm, AttentionPanelsMatchADoubleSoftmax) {
  // Query rows around a vector and a panel; keys around a tile (12 on AVX-512, 6 on AVX2) and the
  // resync's chunk; head widths below, at and past a tile of value columns.
  const Index nqs[] = {2, 7, 16, 17, 33, 70};
  const Index nks[] = {1, 5, 12, 13, 40, 256};
  const Index dhs[] = {5, 36, 64};
  uint64_t seed = 500;
  for (Isa isa : paths()) {
    if (isa == Isa::none) continue;  // no panel kernels: the attention uses the products above
    for (Index nq : nqs) {
      for (Index nk : nks) {
        for (Index dh : dhs) {
          check_panel_attention(isa, nq, nk, dh, std::max<Index>(1, nk / 3), seed);
          seed += 4;
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

#ifdef _OPENMP
/// Threads split panels of input rows and output columns (on a grid, 2 x 2 for the 64-row shape on
/// 4 threads), never k: 1 to 4 threads give the same bits on every path.
TEST(Gemm, SameBitsOnAnyThreadCount) {
  const int saved = omp_get_max_threads();
  for (const Shape& s : {Shape{256, 432, 1296}, Shape{257, 1280, 432}, Shape{1024, 433, 37},
                         Shape{40, 1500, 1000}, Shape{64, 700, 600}}) {
    const std::vector<float> W = random_floats(static_cast<size_t>(s.o * s.k), 11);
    const std::vector<float> in = random_floats(static_cast<size_t>(s.n * s.k), 12);
    const std::vector<float> b = random_floats(static_cast<size_t>(s.o), 13);
    for (Isa isa : paths()) {
      SCOPED_TRACE(std::string(tconst::detail::isa_name(isa)) + " n " + std::to_string(s.n) +
                   " k " + std::to_string(s.k) + " o " + std::to_string(s.o));
      std::vector<float> first;
      for (int t : {1, 2, 3, 4}) {
        omp_set_num_threads(t);
        GemmWorkspace ws;
        std::vector<float> out(static_cast<size_t>(s.n * s.o));
        tconst::detail::gemm(isa, tconst::detail::rows_view(W.data(), s.o, s.k),
                             tconst::detail::rows_view(in.data(), s.n, s.k, s.k), b.data(),
                             tconst::detail::rows_view(out.data(), s.n, s.o, s.o), false, ws);
        if (first.empty()) {
          first = out;
        } else {
          EXPECT_EQ(std::memcmp(out.data(), first.data(), sizeof(float) * out.size()), 0)
              << t << " threads";
        }
      }
    }
  }
  omp_set_num_threads(saved);
}
#endif

}  // namespace
