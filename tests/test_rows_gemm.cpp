// The few-row float kernels of rows_gemm.hpp against a double-precision dot product: every
// instruction set this CPU runs, over row counts, column counts and input counts that exercise each
// register block and every tail (columns not a multiple of the vector width, rows not a multiple
// of the row block, input rows not a multiple of the group), with and without bias, with padded
// strides (padding must stay untouched) and sub-ranges of output rows. Then linear() and gemv(),
// which pick the kernel, against Eigen. Then the one-query attention kernels against a double
// softmax attention, and the SwiGLU gate against its double value.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tconst/detail/dispatch.hpp"
#include "tconst/detail/ops.hpp"

namespace {

using Eigen::Index;
using tconst::detail::Isa;

constexpr float kPad = -7777.0f;

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(gen);
  return v;
}

struct Case {
  Index rows, k, n;
};

/// Runs `fn` on out rows [o0, o1) of a rows x k matrix against n padded input rows, and checks
/// every output against a double dot product and every other entry against the padding.
void check_kernel(tconst::detail::RowsGemmFn fn, const Case& c, Index o0, Index o1, bool bias,
                  uint32_t seed) {
  SCOPED_TRACE("rows " + std::to_string(c.rows) + " k " + std::to_string(c.k) + " n " +
               std::to_string(c.n) + " o [" + std::to_string(o0) + ", " + std::to_string(o1) +
               ") bias " + std::to_string(bias));
  const Index ld_in = c.k + 3, ld_out = c.rows + 5;
  const std::vector<float> W = random_floats(static_cast<size_t>(c.rows * c.k), seed);
  const std::vector<float> in = random_floats(static_cast<size_t>(c.n * ld_in), seed + 1);
  const std::vector<float> b = random_floats(static_cast<size_t>(c.rows), seed + 2);
  std::vector<float> out(static_cast<size_t>(c.n * ld_out), kPad);
  fn(W.data(), c.k, o0, o1, in.data(), ld_in, c.n, bias ? b.data() : nullptr, out.data(), ld_out);
  for (Index g = 0; g < c.n; ++g) {
    for (Index o = 0; o < ld_out; ++o) {
      const float got = out[static_cast<size_t>(g * ld_out + o)];
      if (o < o0 || o >= o1) {
        ASSERT_EQ(got, kPad) << "wrote outside its range at input row " << g << ", column " << o;
        continue;
      }
      double want = bias ? b[static_cast<size_t>(o)] : 0.0;
      double mag = std::abs(want);
      for (Index j = 0; j < c.k; ++j) {
        const double t = static_cast<double>(W[static_cast<size_t>(o * c.k + j)]) *
                         in[static_cast<size_t>(g * ld_in + j)];
        want += t;
        mag += std::abs(t);
      }
      ASSERT_NEAR(got, want, 1e-6 * mag + 1e-6) << "input row " << g << ", output " << o;
    }
  }
}

std::vector<Isa> runnable_isas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (tconst::detail::kernels(isa).rows_gemm != nullptr) isas.push_back(isa);
  }
  return isas;
}

TEST(RowsGemm, EveryRunnableKernelMatchesADoubleDotProduct) {
  const std::vector<Isa> isas = runnable_isas();
  if (isas.empty()) GTEST_SKIP() << "no few-row kernel runs on this CPU or compiler";
  const Index ks[] = {1, 5, 8, 15, 16, 17, 31, 33, 36, 432};
  const Index rows[] = {1, 3, 4, 7, 8, 9, 13, 17, 35};
  uint32_t seed = 1;
  for (Isa isa : isas) {
    SCOPED_TRACE(tconst::detail::isa_name(isa));
    const tconst::detail::RowsGemmFn fn = tconst::detail::kernels(isa).rows_gemm;
    for (Index k : ks) {
      for (Index r : rows) {
        for (Index n = 1; n <= 17; ++n) {
          check_kernel(fn, {r, k, n}, 0, r, (n + r) % 2 == 0, seed++);
          if (r > 2) check_kernel(fn, {r, k, n}, 1, r - 1, n % 2 == 0, seed++);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

/// Many input rows are done in tiles of input rows (fewer the longer a row); tiles that do and do
/// not divide the count.
TEST(RowsGemm, ManyInputRowsInTiles) {
  const std::vector<Isa> isas = runnable_isas();
  if (isas.empty()) GTEST_SKIP() << "no few-row kernel runs on this CPU or compiler";
  uint32_t seed = 500;
  for (Isa isa : isas) {
    SCOPED_TRACE(tconst::detail::isa_name(isa));
    for (Index k : {Index{432}, Index{1280}, Index{3001}}) {
      for (Index n : {Index{49}, Index{150}, Index{300}}) {
        check_kernel(tconst::detail::kernels(isa).rows_gemm, {9, k, n}, 0, 9, n % 2 == 1, seed++);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(RowsGemm, IsaNamesAndAvailability) {
  EXPECT_STREQ(tconst::detail::isa_name(Isa::avx512), "avx512");
  EXPECT_STREQ(tconst::detail::isa_name(Isa::avx2), "avx2");
  EXPECT_STREQ(tconst::detail::isa_name(Isa::none), "none");
  EXPECT_EQ(tconst::detail::kernels(Isa::none).rows_gemm, nullptr);
  // The active choice is one the CPU runs, and its kernels are the ones active_kernels() returns.
  const Isa active = tconst::detail::active_isa();
  EXPECT_EQ(&tconst::detail::active_kernels(), &tconst::detail::kernels(active));
  EXPECT_EQ(tconst::detail::active_kernels().isa, active);
  if (active != Isa::none) {
    EXPECT_NE(tconst::detail::active_kernels().rows_gemm, nullptr);
    EXPECT_NE(tconst::detail::active_kernels().quant_compute, nullptr);
  }
}

/// linear() and gemv() (whichever path they take for float: kernel or Eigen) against Eigen's own
/// product, for input counts on both sides of kRowsGemmMaxRows in builds that have a limit.
TEST(RowsGemm, LinearAndGemvAgreeWithEigen) {
  const Index rows = 67, k = 45, ld_in = 50, ld_out = 70;
  const std::vector<float> W = random_floats(static_cast<size_t>(rows * k), 91);
  const std::vector<float> b = random_floats(static_cast<size_t>(rows), 92);
  const tconst::ConstMatrixMap<float> Wm(W.data(), rows, k);
  for (Index n : {Index{1}, Index{2}, Index{8}, Index{16}, Index{17}, Index{40}, Index{300}}) {
    SCOPED_TRACE("n " + std::to_string(n));
    const std::vector<float> in = random_floats(static_cast<size_t>(n * ld_in), 93 + n);
    std::vector<float> out(static_cast<size_t>(n * ld_out), kPad);
    tconst::detail::linear<float>(tconst::detail::rows_view(in.data(), n, k, ld_in), Wm, b.data(),
                                  tconst::detail::rows_view(out.data(), n, rows, ld_out));
    const Eigen::Map<const tconst::MatrixRM<float>, 0, Eigen::OuterStride<>> X(
        in.data(), n, k, Eigen::OuterStride<>(ld_in));
    const tconst::MatrixRM<float> want =
        (X * Wm.transpose()).rowwise() + Eigen::Map<const Eigen::RowVectorXf>(b.data(), rows);
    for (Index g = 0; g < n; ++g) {
      for (Index o = 0; o < ld_out; ++o) {
        const float got = out[static_cast<size_t>(g * ld_out + o)];
        if (o >= rows) {
          ASSERT_EQ(got, kPad);
        } else {
          ASSERT_NEAR(got, want(g, o), 2e-5f) << "row " << g << ", output " << o;
        }
      }
    }
    if (n == 1) {
      std::vector<float> y(static_cast<size_t>(rows));
      tconst::detail::gemv<float>(Wm, in.data(), nullptr, y.data());
      for (Index o = 0; o < rows; ++o) {
        ASSERT_NEAR(y[static_cast<size_t>(o)], want(0, o) - b[static_cast<size_t>(o)], 2e-5f);
      }
    }
  }
}

/// Double-precision attention of one query (SPEC §2) for out[h*dh, (h+1)*dh).
std::vector<double> attention_in_double(const std::vector<float>& q, const std::vector<float>& K,
                                        const std::vector<float>& V, Index ld, Index nk,
                                        Index heads, Index dh) {
  std::vector<double> out(static_cast<size_t>(heads * dh), 0.0);
  for (Index h = 0; h < heads; ++h) {
    std::vector<double> s(static_cast<size_t>(nk));
    double mx = -INFINITY;
    for (Index j = 0; j < nk; ++j) {
      double dot = 0;
      for (Index e = 0; e < dh; ++e) {
        dot += static_cast<double>(q[static_cast<size_t>(h * dh + e)]) *
               K[static_cast<size_t>(j * ld + h * dh + e)];
      }
      s[static_cast<size_t>(j)] = dot / std::sqrt(static_cast<double>(dh));
      mx = std::max(mx, s[static_cast<size_t>(j)]);
    }
    double sum = 0;
    for (double& x : s) sum += (x = std::exp(x - mx));
    for (Index j = 0; j < nk; ++j) {
      for (Index e = 0; e < dh; ++e) {
        out[static_cast<size_t>(h * dh + e)] +=
            s[static_cast<size_t>(j)] / sum * V[static_cast<size_t>(j * ld + h * dh + e)];
      }
    }
  }
  return out;
}

/// Every runnable attention kernel against the double attention: head widths below, at and across
/// the vector width, key counts around the key block (and a long one), query scales from flat to
/// sharply peaked softmaxes (scores spanning e^-80), accumulating or not, keys with a padded
/// stride whose padding must not matter.
TEST(AttendOne, EveryRunnableKernelMatchesADoubleAttention) {
  const std::vector<Isa> isas = runnable_isas();
  if (isas.empty()) GTEST_SKIP() << "no vector kernel runs on this CPU or compiler";
  struct Shape {
    Index heads, dh;
  };
  const Shape shapes[] = {{1, 2}, {3, 6}, {2, 8}, {4, 12}, {1, 16}, {2, 18}, {12, 36}, {2, 64}};
  const Index nks[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 48, 300};
  uint32_t seed = 700;
  for (Isa isa : isas) {
    SCOPED_TRACE(tconst::detail::isa_name(isa));
    const tconst::detail::AttendOneFn fn = tconst::detail::kernels(isa).attend_one;
    ASSERT_NE(fn, nullptr);
    for (const Shape& sh : shapes) {
      const Index d = sh.heads * sh.dh, ld = d + 3;
      for (Index nk : nks) {
        for (float qscale : {0.1f, 1.0f, 8.0f}) {
          for (bool acc : {false, true}) {
            SCOPED_TRACE("heads " + std::to_string(sh.heads) + " dh " + std::to_string(sh.dh) +
                         " nk " + std::to_string(nk) + " q scale " + std::to_string(qscale) +
                         " accumulate " + std::to_string(acc));
            std::vector<float> q = random_floats(static_cast<size_t>(d), seed++);
            for (float& x : q) x *= qscale;
            const std::vector<float> K = random_floats(static_cast<size_t>(nk * ld), seed++);
            const std::vector<float> V = random_floats(static_cast<size_t>(nk * ld), seed++);
            const std::vector<float> start = random_floats(static_cast<size_t>(d + 4), seed++);
            std::vector<float> out = start;
            std::vector<float> scores(static_cast<size_t>(sh.heads * nk), kPad);
            fn(q.data(), K.data(), V.data(), ld, nk, sh.heads, sh.dh, scores.data(), out.data(),
               acc);
            const std::vector<double> want = attention_in_double(q, K, V, ld, nk, sh.heads, sh.dh);
            for (Index i = 0; i < d; ++i) {
              const double base = acc ? start[static_cast<size_t>(i)] : 0.0;
              ASSERT_NEAR(out[static_cast<size_t>(i)], base + want[static_cast<size_t>(i)], 2e-6)
                  << "column " << i;
            }
            for (Index i = d; i < d + 4; ++i) {
              ASSERT_EQ(out[static_cast<size_t>(i)], start[static_cast<size_t>(i)])
                  << "wrote past the output";
            }
          }
        }
      }
    }
  }
}

/// The same kernel through ops.hpp's attend_one (kernel or Eigen, whichever float takes) and the
/// double-precision Eigen path agree, so switching paths cannot change a model's outputs beyond
/// rounding.
TEST(AttendOne, FloatPathAgreesWithDoublePath) {
  const Index heads = 12, dh = 36, d = heads * dh, nk = 257;
  const std::vector<float> q = random_floats(static_cast<size_t>(d), 801);
  const std::vector<float> K = random_floats(static_cast<size_t>(nk * d), 802);
  const std::vector<float> V = random_floats(static_cast<size_t>(nk * d), 803);
  std::vector<float> out(static_cast<size_t>(d)), scores(static_cast<size_t>(heads * nk));
  tconst::detail::attend_one<float>(q.data(), tconst::detail::rows_view(K.data(), nk, d),
                                    tconst::detail::rows_view(V.data(), nk, d),
                                    tconst::detail::Heads{heads, dh}, scores.data(), out.data(),
                                    false);
  const std::vector<double> qd(q.begin(), q.end()), Kd(K.begin(), K.end()), Vd(V.begin(), V.end());
  std::vector<double> outd(static_cast<size_t>(d)), scoresd(static_cast<size_t>(heads * nk));
  tconst::detail::attend_one<double>(qd.data(), tconst::detail::rows_view(Kd.data(), nk, d),
                                     tconst::detail::rows_view(Vd.data(), nk, d),
                                     tconst::detail::Heads{heads, dh}, scoresd.data(), outd.data(),
                                     false);
  for (Index i = 0; i < d; ++i) {
    ASSERT_NEAR(out[static_cast<size_t>(i)], outd[static_cast<size_t>(i)], 2e-6) << i;
  }
}

/// Every runnable SwiGLU gate kernel against silu(a) * g in double: lengths around the vector
/// width, values from -100 to 100 (e^100 would overflow a naive float sigmoid), and each element's
/// result the same wherever a row is split (the threads split rows of hidden units).
TEST(SiluGate, EveryRunnableKernelMatchesDoubleAndIgnoresSplits) {
  const std::vector<Isa> isas = runnable_isas();
  if (isas.empty()) GTEST_SKIP() << "no vector kernel runs on this CPU or compiler";
  for (Isa isa : isas) {
    SCOPED_TRACE(tconst::detail::isa_name(isa));
    const tconst::detail::SiluGateFn fn = tconst::detail::kernels(isa).silu_gate;
    ASSERT_NE(fn, nullptr);
    for (Index n : {Index{1}, Index{7}, Index{8}, Index{9}, Index{16}, Index{17}, Index{40}}) {
      for (float spread : {1.0f, 10.0f, 100.0f}) {
        SCOPED_TRACE("n " + std::to_string(n) + " spread " + std::to_string(spread));
        std::vector<float> a = random_floats(static_cast<size_t>(n + 4), 900 + n);
        for (float& v : a) v *= spread;
        const std::vector<float> g = random_floats(static_cast<size_t>(n), 950 + n);
        std::vector<float> whole = a, split = a;
        fn(whole.data(), g.data(), n);
        const Index cut = n / 2;
        fn(split.data(), g.data(), cut);
        fn(split.data() + cut, g.data() + cut, n - cut);
        for (Index i = 0; i < n; ++i) {
          const double x = a[static_cast<size_t>(i)];
          const double want = x / (1.0 + std::exp(-x)) * g[static_cast<size_t>(i)];
          ASSERT_NEAR(whole[static_cast<size_t>(i)], want, 3e-7 * std::abs(want) + 1e-30) << i;
          ASSERT_EQ(whole[static_cast<size_t>(i)], split[static_cast<size_t>(i)]) << i;
        }
        for (Index i = n; i < n + 4; ++i) {
          ASSERT_EQ(whole[static_cast<size_t>(i)], a[static_cast<size_t>(i)]) << "wrote past n";
        }
      }
    }
  }
}

}  // namespace
