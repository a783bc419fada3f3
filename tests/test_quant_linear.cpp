// Products over BF16 and Q8 weights (quant_linear.hpp) against a double-precision product of the
// dequantized matrix (dequantize_row), on every path: each vector instruction set this CPU runs,
// asked for explicitly, and the portable one (Isa::none). Shapes that exercise every tail: input
// rows around the few-row limit and not multiples of a register tile or panel, output widths not
// multiples of a tile, k not a multiple of the vector width nor of the Q8 block, every block size
// from 16 to 256; padded strides (the input's padding is NaN, so reading it shows; the output's
// must stay untouched); with and without bias; overwriting and accumulating; with and without a
// workspace. Then the same bits on 1 and 2 threads, no allocation once the workspace has grown,
// and the f32 format's forwarding.
//
// Tolerance: recursive summation of k products with fused multiply-adds, then the bias and the
// accumulated value, rounds at most k + 2 times, so |got - exact| <= (k + 2) u (sum_c |in[c]|
// |W[o, c]| + |bias[o]| + |out0|) to first order, u = 2^-24 (float's unit roundoff); the test
// allows 1.01 times that (plus 1e-30 for all-zero rows).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "support/counting_new.hpp"
#include "support/kernel_data.hpp"
#include "tconst/detail/quant_linear.hpp"
#include "tconst/synthetic.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using Eigen::Index;
using tconst::detail::GemmWorkspace;
using tconst::detail::Isa;
using tconst::detail::WeightFormat;
using tconst::detail::WeightMatrix;

using tconst_test::kPad;
using tconst_test::random_floats;
using RowsD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A random matrix in `format` with the storage it points into.
struct Matrix {
  std::vector<uint16_t> bf16;
  std::vector<int8_t> q8;
  std::vector<float> f32, scales;
  WeightMatrix W;
};

Matrix random_matrix(WeightFormat format, Index rows, Index cols, Index block, uint64_t seed) {
  Matrix m;
  m.W.format = format;
  m.W.rows = rows;
  m.W.cols = cols;
  const std::vector<float> v = random_floats(static_cast<size_t>(rows * cols), seed);
  if (format == WeightFormat::f32) {
    m.f32 = v;
    m.W.data = m.f32.data();
  } else if (format == WeightFormat::bf16) {
    m.bf16.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &v[i], sizeof bits);
      m.bf16[i] = static_cast<uint16_t>(bits >> 16);
    }
    m.W.data = m.bf16.data();
  } else {
    m.W.block = block;
    m.q8.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) m.q8[i] = static_cast<int8_t>(std::lround(v[i] * 127));
    // Scales of both signs and different magnitudes per block.
    m.scales = random_floats(static_cast<size_t>(rows * m.W.blocks()), seed + 7, -0.02, 0.03);
    m.W.data = m.q8.data();
    m.W.scales = m.scales.data();
  }
  return m;
}

/// Every path: the vector instruction sets this CPU runs, then the portable one.
std::vector<Isa> paths() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (tconst::detail::kernels(isa).isa == isa) isas.push_back(isa);
  }
  isas.push_back(Isa::none);
  return isas;
}

struct Shape {
  Index n, k, o, block;
};

/// One shape and format: the double product of the dequantized matrix once, then every path, with
/// and without accumulation (and without a workspace where that is allowed), against it.
void check_shape(WeightFormat format, const Shape& s, bool bias, uint64_t seed, GemmWorkspace& ws) {
  const Index ld_in = s.k + 3, ld_out = s.o + 5;
  const Matrix m = random_matrix(format, s.o, s.k, s.block, seed);
  std::vector<float> in = random_floats(static_cast<size_t>(s.n * ld_in), seed + 1);
  for (Index g = 0; g < s.n; ++g) {
    for (Index c = s.k; c < ld_in; ++c) {
      in[static_cast<size_t>(g * ld_in + c)] = std::numeric_limits<float>::quiet_NaN();
    }
  }
  const std::vector<float> b = random_floats(static_cast<size_t>(s.o), seed + 2);
  const std::vector<float> start = random_floats(static_cast<size_t>(s.n * ld_out), seed + 3);
  RowsD Wd(s.o, s.k);
  std::vector<float> row(static_cast<size_t>(s.k));
  for (Index r = 0; r < s.o; ++r) {
    tconst::detail::dequantize_row(m.W, r, row.data());
    for (Index c = 0; c < s.k; ++c) Wd(r, c) = row[static_cast<size_t>(c)];
  }
  RowsD X(s.n, s.k);
  for (Index g = 0; g < s.n; ++g) {
    for (Index c = 0; c < s.k; ++c) X(g, c) = in[static_cast<size_t>(g * ld_in + c)];
  }
  const RowsD want = X * Wd.transpose();
  const RowsD mag = X.cwiseAbs() * Wd.cwiseAbs().transpose();
  const double u = std::ldexp(1.0, -24);
  for (Isa isa : paths()) {
    for (int mode = 0; mode < (s.n <= 16 ? 3 : 2); ++mode) {
      const bool acc = mode == 1;
      GemmWorkspace* w = mode == 2 ? nullptr : &ws;
      SCOPED_TRACE(std::string(tconst::to_string(format)) + " " + tconst::detail::isa_name(isa) +
                   " n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " o " +
                   std::to_string(s.o) + " block " + std::to_string(s.block) + " bias " +
                   std::to_string(bias) + " accumulate " + std::to_string(acc) + " workspace " +
                   std::to_string(w != nullptr));
      std::vector<float> out(static_cast<size_t>(s.n * ld_out), kPad);
      if (acc) {
        for (Index g = 0; g < s.n; ++g) {
          std::memcpy(out.data() + g * ld_out, start.data() + g * ld_out,
                      sizeof(float) * static_cast<size_t>(s.o));
        }
      }
      tconst::detail::quant_linear(
          isa, tconst::detail::rows_view<const float>(in.data(), s.n, s.k, ld_in), m.W,
          bias ? b.data() : nullptr, tconst::detail::rows_view(out.data(), s.n, s.o, ld_out), w,
          acc);
      for (Index g = 0; g < s.n; ++g) {
        for (Index o = 0; o < ld_out; ++o) {
          const size_t at = static_cast<size_t>(g * ld_out + o);
          if (o >= s.o) {
            ASSERT_EQ(out[at], kPad) << "wrote into the padding at row " << g << ", column " << o;
            continue;
          }
          const double base = acc ? start[at] : 0.0;
          const double bo = bias ? b[static_cast<size_t>(o)] : 0.0;
          const double tol = 1.01 * static_cast<double>(s.k + 2) * u *
                                 (mag(g, o) + std::abs(bo) + std::abs(base)) +
                             1e-30;
          ASSERT_NEAR(out[at], base + want(g, o) + bo, tol) << "row " << g << ", column " << o;
        }
      }
    }
  }
}

const Index kNs[] = {1, 2, 3, 5, 8, 13, 16, 17, 31, 64, 100};
const Index kKs[] = {1, 15, 17, 47, 432, 1000, 1729};
const Index kOs[] = {1, 7, 29, 45, 131};
const Index kBlocks[] = {16, 32, 64, 128, 256};

void check_format(WeightFormat format) {
  GemmWorkspace ws;
  uint64_t seed = format == WeightFormat::q8 ? 1000 : 1;
  size_t i = 0;
  for (Index n : kNs) {
    for (Index k : kKs) {
      const Index o = kOs[i % 5], block = kBlocks[(i / 2 + i) % 5];
      ++i;
      check_shape(format, {n, k, o, block}, i % 3 != 0, seed, ws);
      seed += 10;
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

TEST(QuantLinear, Bf16EveryPathMatchesADoubleProductOfTheDequantizedMatrix) {
  check_format(WeightFormat::bf16);
}

TEST(QuantLinear, Q8EveryPathMatchesADoubleProductOfTheDequantizedMatrix) {
  check_format(WeightFormat::q8);
}

/// Every block size against every k, on one row (the GEMV, scales applied once per block), few
/// and many rows: a scale applied to the wrong columns shows wherever a block ends inside a vector,
/// a strip or a row.
TEST(QuantLinear, Q8EveryBlockSizeAgainstEveryK) {
  GemmWorkspace ws;
  uint64_t seed = 5000;
  for (Index block : kBlocks) {
    for (Index k : kKs) {
      for (Index n : {Index{1}, Index{3}, Index{8}, Index{37}}) {
        check_shape(WeightFormat::q8, {n, k, 13, block}, (k + n) % 2 == 0, seed, ws);
        seed += 10;
        if (HasFatalFailure()) return;
      }
    }
  }
}

/// Once the workspace has grown, a product of the same shape allocates nothing, on every path
/// (few rows without a workspace, many with one).
TEST(QuantLinear, NoAllocationOnceTheWorkspaceHasGrown) {
  const Index k = 432, o = 301, n = 100;
  const std::vector<float> in = random_floats(static_cast<size_t>(n * k), 61);
  std::vector<float> out(static_cast<size_t>(n * o));
  for (WeightFormat format : {WeightFormat::bf16, WeightFormat::q8}) {
    const Matrix m = random_matrix(format, o, k, 32, 62);
    for (Isa isa : paths()) {
      GemmWorkspace ws;
      for (int round = 0; round < 2; ++round) {
        const long before = tconst_test::heap_allocations();
        for (Index rows : {Index{1}, Index{8}}) {
          tconst::detail::quant_linear(
              isa, tconst::detail::rows_view<const float>(in.data(), rows, k), m.W, nullptr,
              tconst::detail::rows_view(out.data(), rows, o), nullptr, false);
        }
        tconst::detail::quant_linear(isa, tconst::detail::rows_view<const float>(in.data(), n, k),
                                     m.W, nullptr, tconst::detail::rows_view(out.data(), n, o), &ws,
                                     true);
        if (round == 1) {
          EXPECT_EQ(tconst_test::heap_allocations(), before)
              << tconst::to_string(format) << " " << tconst::detail::isa_name(isa);
        }
      }
    }
  }
}

/// The f32 format goes to the float linear(): the same bits as calling it directly.
TEST(QuantLinear, F32FormatIsTheFloatProduct) {
  const Index k = 47, o = 29, n = 20;
  const Matrix m = random_matrix(WeightFormat::f32, o, k, 0, 77);
  const std::vector<float> in = random_floats(static_cast<size_t>(n * k), 78);
  const std::vector<float> b = random_floats(static_cast<size_t>(o), 79);
  GemmWorkspace ws;
  for (Index rows : {Index{1}, Index{5}, n}) {
    std::vector<float> got(static_cast<size_t>(n * o)), want(got.size());
    tconst::detail::linear(tconst::detail::rows_view<const float>(in.data(), rows, k), m.W,
                           b.data(), tconst::detail::rows_view(got.data(), rows, o), &ws);
    const tconst::ConstMatrixMap<float> Wm(m.f32.data(), o, k);
    tconst::detail::linear<float>(tconst::detail::rows_view<const float>(in.data(), rows, k), Wm,
                                  b.data(), tconst::detail::rows_view(want.data(), rows, o), &ws);
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), sizeof(float) * got.size()));
  }
}

/// linear() takes active_isa()'s path.
TEST(QuantLinear, LinearUsesTheActivePath) {
  const Index k = 432, o = 45, n = 40;
  const Matrix m = random_matrix(WeightFormat::q8, o, k, 32, 81);
  const std::vector<float> in = random_floats(static_cast<size_t>(n * k), 82);
  GemmWorkspace ws;
  for (Index rows : {Index{1}, Index{8}, n}) {
    std::vector<float> got(static_cast<size_t>(n * o)), want(got.size());
    tconst::detail::linear(tconst::detail::rows_view<const float>(in.data(), rows, k), m.W, nullptr,
                           tconst::detail::rows_view(got.data(), rows, o), &ws);
    tconst::detail::quant_linear(
        tconst::detail::active_isa(), tconst::detail::rows_view<const float>(in.data(), rows, k),
        m.W, nullptr, tconst::detail::rows_view(want.data(), rows, o), &ws, false);
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), sizeof(float) * got.size()));
  }
}

#ifdef _OPENMP
/// The same bits on 1 and 2 threads, every path, both formats; shapes large enough to be split.
TEST(QuantLinear, SameBitsOnOneAndTwoThreads) {
  const int before = omp_get_max_threads();
  GemmWorkspace ws;
  uint64_t seed = 9000;
  for (WeightFormat format : {WeightFormat::bf16, WeightFormat::q8}) {
    for (Index n : {Index{1}, Index{8}, Index{16}, Index{17}, Index{100}, Index{257}}) {
      for (Index k : {Index{432}, Index{1729}}) {
        const Index o = 301;
        const Matrix m = random_matrix(format, o, k, 64, seed);
        const std::vector<float> in = random_floats(static_cast<size_t>(n * k), seed + 1);
        const std::vector<float> b = random_floats(static_cast<size_t>(o), seed + 2);
        seed += 10;
        for (Isa isa : paths()) {
          SCOPED_TRACE(std::string(tconst::to_string(format)) + " " +
                       tconst::detail::isa_name(isa) + " n " + std::to_string(n) + " k " +
                       std::to_string(k));
          std::vector<float> one(static_cast<size_t>(n * o)), two(one.size());
          omp_set_num_threads(1);
          tconst::detail::quant_linear(isa, tconst::detail::rows_view<const float>(in.data(), n, k),
                                       m.W, b.data(), tconst::detail::rows_view(one.data(), n, o),
                                       &ws, false);
          omp_set_num_threads(2);
          tconst::detail::quant_linear(isa, tconst::detail::rows_view<const float>(in.data(), n, k),
                                       m.W, b.data(), tconst::detail::rows_view(two.data(), n, o),
                                       &ws, false);
          EXPECT_EQ(0, std::memcmp(one.data(), two.data(), sizeof(float) * one.size()));
        }
      }
    }
  }
  omp_set_num_threads(before);
}
#endif

}  // namespace
