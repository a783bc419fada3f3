// The packed matrix product of kernels/gemm.hpp against a plain double-precision product, on every
// path: each instruction set this CPU runs, asked for explicitly, and Isa::none (Eigen). Shapes
// that exercise every tail: input rows not a multiple of a panel (1 .. 257), k not a multiple of
// the vector width and larger than one pass, output columns not a multiple of a tile; padded
// strides (padding must stay untouched); with and without bias; overwriting and accumulating.
// Then: the same bits on 1, 2 and 3 threads, and a workspace that stops growing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "support/kernel_data.hpp"
#include "tconst/detail/kernels/gemm.hpp"
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
    if (tconst::detail::gemm_kernels_for(isa).compute != nullptr) isas.push_back(isa);
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
      tconst::detail::gemm(isa, W.data(), s.k, s.o, in.data(), ld_in, s.n,
                           bias ? b.data() : nullptr, out.data(), ld_out, acc, ws);
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
  tconst::detail::gemm(W.data(), k, o, in.data(), ld_in, n, b.data(), out.data(), ld_out, false,
                       ws);
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
  tconst::detail::gemm(W.data(), k, o, in.data(), k, n, nullptr, out.data(), o, false, ws);
  const float* data = ws.packed.data();
  const size_t size = ws.packed.size();
  for (Index rows : {n, Index{1}, Index{77}, n}) {
    tconst::detail::gemm(W.data(), k, o, in.data(), k, rows, nullptr, out.data(), o, false, ws);
    EXPECT_EQ(ws.packed.data(), data);
    EXPECT_EQ(ws.packed.size(), size);
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
        tconst::detail::gemm(isa, W.data(), s.k, s.o, in.data(), s.k, s.n, b.data(), out.data(),
                             s.o, false, ws);
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
