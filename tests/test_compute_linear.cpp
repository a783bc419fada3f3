// The compute modes' products (compute_linear.hpp) on every path: each instruction-set level this
// CPU runs, asked for explicitly, and the portable one (Isa::none).
//
// bf16 mode: against a double-precision sum of the same products (activations rounded by the
// reference rounding, tconst::float_to_bf16, times the BF16 weights: each product is exact in
// float and in double). A float32 sum of k products, then the bias and the accumulated value,
// rounds at most k + 2 times, so |got - exact| <= (k + 2) u (sum |terms| + |bias| + |out0|) to
// first order, u = 2^-24; the test allows 1.01 times that (plus 1e-30 for all-zero rows). A term
// left out or counted twice moves the sum by about sum |terms| / k, far above that bound for the
// k tested. The rounding itself is checked bit for bit through an identity matrix.
//
// int8 mode: the input quantized by the reference quantizer (tconst::quantize_q8 on the row), the
// block dots summed in 64-bit integers, the blocks' terms float(D_b) (s_x s_w) summed in double;
// the float result rounds at most 2 nb + 2 times (each term's product and each addition), so the
// bound is (2 nb + 2) u (sum_b |term_b| + |bias| + |out0|). With power-of-two scales and values
// chosen so that every float step is exact, the result must equal the integer reference's bits.
//
// Shapes: k not a multiple of 2, 4, 32 or 64, a partial last block, every block size 16 .. 256, k
// over one pass (kGemmKcMax), rows not a multiple of a panel, one row, n just above
// kRowsGemmMaxRows; padded strides (the input's padding is NaN, the output's must stay untouched);
// with and without bias, overwriting and accumulating, with and without a workspace. Then: the
// same bits on 1 to 4 threads, no allocation once the buffers have grown, zero rows, NaN and
// infinite activations, weights in the wrong format.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "support/counting_new.hpp"
#include "tconst/detail/compute_linear.hpp"
#include "tconst/model/quantize.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using Eigen::Index;
using tconst::detail::GemmWorkspace;
using tconst::detail::Isa;
using tconst::detail::WeightFormat;
using tconst::detail::WeightMatrix;
namespace td = tconst::detail;

constexpr double kU = 1.0 / 16777216.0;  // 2^-24
const float kNaN = std::numeric_limits<float>::quiet_NaN();

/// Every path: the levels this CPU runs, then the portable one.
std::vector<Isa> paths() {
  std::vector<Isa> isas;
  for (int i = 1; i < td::kIsaCount; ++i) {
    const Isa isa = static_cast<Isa>(i);
    if (td::kernels(isa).isa == isa) isas.push_back(isa);
  }
  isas.push_back(Isa::none);
  return isas;
}

std::vector<float> uniform(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

/// A weight matrix with its storage.
struct Weights {
  std::vector<uint16_t> bf16;
  std::vector<int8_t> q8;
  std::vector<float> scales;
  std::vector<int32_t> sums;
  WeightMatrix W;
};

Weights bf16_weights(Index o, Index k, uint32_t seed) {
  Weights m;
  const std::vector<float> w = uniform(static_cast<size_t>(o * k), seed);
  m.bf16.resize(w.size());
  for (size_t i = 0; i < w.size(); ++i) m.bf16[i] = tconst::float_to_bf16(w[i]);
  m.W.format = WeightFormat::bf16;
  m.W.data = m.bf16.data();
  m.W.rows = o;
  m.W.cols = k;
  return m;
}

Weights q8_weights(Index o, Index k, Index block, uint32_t seed, bool with_sums) {
  Weights m;
  const std::vector<float> w = uniform(static_cast<size_t>(o * k), seed);
  m.W.format = WeightFormat::q8;
  m.W.rows = o;
  m.W.cols = k;
  m.W.block = block;
  m.q8.resize(w.size());
  m.scales.resize(static_cast<size_t>(o * m.W.blocks()));
  tconst::quantize_q8(w.data(), o, k, block, m.q8.data(), m.scales.data());
  m.W.data = m.q8.data();
  m.W.scales = m.scales.data();
  if (with_sums) {
    m.sums.resize(m.scales.size());
    td::int8_block_sums(m.W, m.sums.data());
    m.W.block_sums = m.sums.data();
  }
  return m;
}

/// The exact result and the error bound of one output (see the file's comment).
struct Want {
  double value, bound;
};

Want bf16_reference(const float* x, const WeightMatrix& W, Index o, double bias, double out0) {
  const uint16_t* w = static_cast<const uint16_t*>(W.data) + o * W.cols;
  double sum = bias + out0, mag = std::abs(bias) + std::abs(out0);
  for (Index c = 0; c < W.cols; ++c) {
    const double t = static_cast<double>(td::bf16_bits_to_float(tconst::float_to_bf16(x[c]))) *
                     td::bf16_bits_to_float(w[c]);
    sum += t;
    mag += std::abs(t);
  }
  return {sum, 1.01 * static_cast<double>(W.cols + 2) * kU * mag + 1e-30};
}

Want int8_reference(const float* x, const WeightMatrix& W, Index o, double bias, double out0) {
  const Index k = W.cols, nb = W.blocks();
  std::vector<int8_t> q(static_cast<size_t>(k));
  std::vector<float> s(static_cast<size_t>(nb));
  tconst::quantize_q8(x, 1, k, W.block, q.data(), s.data());
  const int8_t* w = static_cast<const int8_t*>(W.data) + o * k;
  double sum = bias + out0, mag = std::abs(bias) + std::abs(out0);
  for (Index b = 0; b < nb; ++b) {
    int64_t d = 0;
    for (Index c = b * W.block; c < std::min(k, (b + 1) * W.block); ++c) d += int64_t{q[c]} * w[c];
    const double t = static_cast<double>(d) * static_cast<double>(s[b] * W.scales[o * nb + b]);
    sum += t;
    mag += std::abs(t);
  }
  return {sum, 1.01 * static_cast<double>(2 * nb + 2) * kU * mag + 1e-30};
}

struct Shape {
  Index n, k, o, block;
};

/// One product on one path against the reference, with padded strides.
void check(Isa isa, bool int8, const Shape& s, bool bias_on, bool accumulate, bool with_ws,
           uint32_t seed) {
  const Index ld_in = s.k + 3, ld_out = s.o + 5;
  std::vector<float> in(static_cast<size_t>(s.n * ld_in), kNaN);
  const std::vector<float> vals = uniform(static_cast<size_t>(s.n * s.k), seed + 1, -2.0f, 2.0f);
  for (Index g = 0; g < s.n; ++g) {
    for (Index c = 0; c < s.k; ++c) in[g * ld_in + c] = vals[g * s.k + c];
  }
  const Weights m = int8 ? q8_weights(s.o, s.k, s.block, seed + 2, seed % 2 == 0)
                         : bf16_weights(s.o, s.k, seed + 2);
  const std::vector<float> bias = uniform(static_cast<size_t>(s.o), seed + 3);
  std::vector<float> out = uniform(static_cast<size_t>(s.n * ld_out), seed + 4);
  const std::vector<float> out0 = out;
  GemmWorkspace ws;
  auto inv = td::rows_view<const float>(in.data(), s.n, s.k, ld_in);
  auto outv = td::rows_view<float>(out.data(), s.n, s.o, ld_out);
  const float* b = bias_on ? bias.data() : nullptr;
  if (int8) {
    td::linear_int8(isa, inv, m.W, b, outv, with_ws ? &ws : nullptr, accumulate);
  } else {
    td::linear_bf16(isa, inv, m.W, b, outv, with_ws ? &ws : nullptr, accumulate);
  }
  for (Index g = 0; g < s.n; ++g) {
    for (Index j = 0; j < ld_out; ++j) {
      const size_t at = static_cast<size_t>(g * ld_out + j);
      if (j >= s.o) {
        ASSERT_EQ(out[at], out0[at]) << "padding written, row " << g << " column " << j;
        continue;
      }
      const double b0 = bias_on ? bias[static_cast<size_t>(j)] : 0.0;
      const double a0 = accumulate ? out0[at] : 0.0;
      const Want want = int8 ? int8_reference(&vals[static_cast<size_t>(g * s.k)], m.W, j, b0, a0)
                             : bf16_reference(&vals[static_cast<size_t>(g * s.k)], m.W, j, b0, a0);
      ASSERT_NEAR(out[at], want.value, want.bound) << "row " << g << " output " << j;
    }
  }
}

std::string trace(Isa isa, bool int8, const Shape& s) {
  return std::string(int8 ? "int8 " : "bf16 ") + td::isa_name(isa) + " n " + std::to_string(s.n) +
         " k " + std::to_string(s.k) + " o " + std::to_string(s.o) + " B " +
         std::to_string(s.block);
}

TEST(ComputeLinear, Bf16MatchesTheReferenceOnEveryPath) {
  const Shape shapes[] = {{1, 16, 5, 0},   {1, 33, 40, 0},   {3, 31, 13, 0},   {8, 64, 24, 0},
                          {16, 67, 17, 0}, {17, 65, 29, 0},  {33, 200, 7, 0},  {40, 432, 50, 0},
                          {100, 5, 12, 0}, {70, 1290, 9, 0}, {1, 1291, 11, 0}, {2, 1, 3, 0}};
  uint32_t seed = 10;
  for (Isa isa : paths()) {
    for (const Shape& s : shapes) {
      SCOPED_TRACE(trace(isa, false, s));
      for (int variant = 0; variant < 4; ++variant) {
        check(isa, false, s, variant % 2 == 0, variant >= 2, variant != 3, seed += 7);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(ComputeLinear, Int8MatchesTheReferenceOnEveryPath) {
  const Shape shapes[] = {{1, 16, 5, 16},     {1, 33, 40, 32},    {3, 31, 13, 16},
                          {8, 64, 24, 64},    {16, 67, 17, 32},   {17, 65, 29, 64},
                          {33, 200, 7, 128},  {40, 432, 50, 32},  {100, 5, 12, 16},
                          {70, 1290, 9, 64},  {1, 1291, 11, 256}, {2, 1, 3, 16},
                          {20, 300, 10, 256}, {18, 257, 19, 128}};
  uint32_t seed = 1000;
  for (Isa isa : paths()) {
    for (const Shape& s : shapes) {
      SCOPED_TRACE(trace(isa, true, s));
      for (int variant = 0; variant < 4; ++variant) {
        check(isa, true, s, variant % 2 == 0, variant >= 2, variant != 3, seed += 7);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(ComputeLinear, Int8EveryBlockSize) {
  uint32_t seed = 3000;
  for (Isa isa : paths()) {
    for (Index block = 16; block <= 256; block *= 2) {
      for (const Shape& s : {Shape{1, 3 * block + 5, 9, block}, Shape{5, block - 3, 14, block},
                             Shape{21, 2 * block + 1, 27, block}}) {
        SCOPED_TRACE(trace(isa, true, s));
        seed += 3;
        check(isa, true, s, true, seed % 2 == 0, true, seed);
        if (HasFatalFailure()) return;
      }
    }
  }
}

/// The rounding of activations, bit for bit, through an identity matrix: out[g, c] = bf16(x[g, c])
/// (every product by 1 and 0, every sum with zeros: exact). Ties to even both ways, values that
/// round up to the next binade, the largest finite BF16.
TEST(ComputeLinear, Bf16RoundsActivationsToNearestEven) {
  // Finite values only: a NaN or an infinity would make the whole row NaN (times the zeros).
  const uint32_t patterns[] = {0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u,
                               0xbf808000u, 0xbf818000u, 0x3fffffffu, 0x7f7effffu,
                               0x00000000u, 0x80000000u, 0x41200000u, 0xc0490fdbu,
                               0x3c23d70au, 0x0080ffffu, 0x4b800001u, 0x7f7e8000u};
  const Index k = static_cast<Index>(std::size(patterns));
  for (Index n : {Index{1}, Index{3}, Index{20}}) {
    std::vector<float> x(static_cast<size_t>(n * k));
    for (size_t i = 0; i < x.size(); ++i) std::memcpy(&x[i], &patterns[(i * 7) % k], 4);
    std::vector<uint16_t> eye(static_cast<size_t>(k * k), 0);
    for (Index c = 0; c < k; ++c) eye[static_cast<size_t>(c * k + c)] = 0x3f80;  // 1.0
    WeightMatrix W;
    W.format = WeightFormat::bf16;
    W.data = eye.data();
    W.rows = W.cols = k;
    for (Isa isa : paths()) {
      SCOPED_TRACE(std::string(td::isa_name(isa)) + " n " + std::to_string(n));
      std::vector<float> out(static_cast<size_t>(n * k), 0.0f);
      GemmWorkspace ws;
      td::linear_bf16(isa, td::rows_view<const float>(x.data(), n, k), W, nullptr,
                      td::rows_view<float>(out.data(), n, k), &ws, false);
      for (size_t i = 0; i < out.size(); ++i) {
        const float want = td::bf16_bits_to_float(tconst::float_to_bf16(x[i]));
        EXPECT_EQ(out[i], want) << "entry " << i << ", x " << x[i];
      }
    }
  }
}

/// Data for which every float step of the int8 mode is exact: each input block's largest
/// magnitude is 127 s with s a power of two (so s_x = s and q = x / s exactly), weight scales
/// powers of two, and sums small enough in units of the smallest scale product. The result must
/// then be the integer reference's, bit for bit.
TEST(ComputeLinear, Int8BlockDotsAreExact) {
  std::mt19937 rng(77);
  std::uniform_int_distribution<int> qd(-127, 127), ed(0, 1);
  for (Isa isa : paths()) {
    for (const Shape& s :
         {Shape{1, 1000, 37, 16}, Shape{1, 333, 21, 32}, Shape{9, 333, 21, 32},
          Shape{50, 1001, 30, 64}, Shape{19, 700, 13, 256}, Shape{64, 255, 40, 128}}) {
      SCOPED_TRACE(trace(isa, true, s));
      const Index nb = (s.k + s.block - 1) / s.block;
      std::vector<float> x(static_cast<size_t>(s.n * s.k));
      std::vector<int8_t> qx(x.size());
      std::vector<float> sx(static_cast<size_t>(s.n * nb));
      for (Index g = 0; g < s.n; ++g) {
        for (Index b = 0; b < nb; ++b) {
          const float scale = ed(rng) != 0 ? 0.25f : 0.125f;
          sx[static_cast<size_t>(g * nb + b)] = scale;
          const Index c0 = b * s.block, c1 = std::min(s.k, c0 + s.block);
          for (Index c = c0; c < c1; ++c) {
            const int q = c == c0 ? (ed(rng) != 0 ? 127 : -127) : qd(rng);
            qx[static_cast<size_t>(g * s.k + c)] = static_cast<int8_t>(q);
            x[static_cast<size_t>(g * s.k + c)] = static_cast<float>(q) * scale;
          }
        }
      }
      Weights m;
      m.W.format = WeightFormat::q8;
      m.W.rows = s.o;
      m.W.cols = s.k;
      m.W.block = s.block;
      m.q8.resize(static_cast<size_t>(s.o * s.k));
      for (int8_t& q : m.q8) q = static_cast<int8_t>(qd(rng));
      m.scales.resize(static_cast<size_t>(s.o * nb));
      for (float& v : m.scales) v = ed(rng) != 0 ? 1.0f / 64 : 1.0f / 128;
      m.W.data = m.q8.data();
      m.W.scales = m.scales.data();
      std::vector<float> bias(static_cast<size_t>(s.o));
      for (float& v : bias) v = static_cast<float>(qd(rng)) / 16;
      std::vector<float> out(static_cast<size_t>(s.n * s.o), 0.0f);
      GemmWorkspace ws;
      td::linear_int8(isa, td::rows_view<const float>(x.data(), s.n, s.k), m.W, bias.data(),
                      td::rows_view<float>(out.data(), s.n, s.o), &ws, false);
      for (Index g = 0; g < s.n; ++g) {
        for (Index o = 0; o < s.o; ++o) {
          double want = bias[static_cast<size_t>(o)];
          for (Index b = 0; b < nb; ++b) {
            int64_t d = 0;
            for (Index c = b * s.block; c < std::min(s.k, (b + 1) * s.block); ++c) {
              d += int64_t{qx[static_cast<size_t>(g * s.k + c)]} *
                   m.q8[static_cast<size_t>(o * s.k + c)];
            }
            want += static_cast<double>(d) * sx[static_cast<size_t>(g * nb + b)] *
                    m.scales[static_cast<size_t>(o * nb + b)];
          }
          ASSERT_EQ(static_cast<double>(static_cast<float>(want)), want) << "not exact: bad data";
          ASSERT_EQ(out[static_cast<size_t>(g * s.o + o)], static_cast<float>(want))
              << "row " << g << " output " << o;
        }
      }
    }
  }
}

/// Every vector level computes D_b exactly and then the same float operations, so their int8
/// results agree bit for bit.
TEST(ComputeLinear, Int8VectorLevelsAgreeBitForBit) {
  std::vector<Isa> isas = paths();
  isas.pop_back();  // the portable path rounds differently (a product, then an addition)
  if (isas.size() < 2) GTEST_SKIP() << "fewer than two vector levels run here";
  for (const Shape& s : {Shape{1, 433, 37, 32}, Shape{12, 432, 50, 16}, Shape{100, 1290, 45, 64}}) {
    SCOPED_TRACE(trace(Isa::none, true, s));
    const std::vector<float> x = uniform(static_cast<size_t>(s.n * s.k), 5);
    const Weights m = q8_weights(s.o, s.k, s.block, 6, false);
    std::vector<std::vector<float>> outs;
    for (Isa isa : isas) {
      std::vector<float> out(static_cast<size_t>(s.n * s.o));
      GemmWorkspace ws;
      td::linear_int8(isa, td::rows_view<const float>(x.data(), s.n, s.k), m.W, nullptr,
                      td::rows_view<float>(out.data(), s.n, s.o), &ws, false);
      outs.push_back(out);
    }
    for (size_t i = 1; i < outs.size(); ++i) {
      EXPECT_EQ(std::memcmp(outs[i].data(), outs[0].data(), outs[0].size() * sizeof(float)), 0)
          << td::isa_name(isas[i]) << " against " << td::isa_name(isas[0]);
    }
  }
}

/// The emulation of vdpbf16ps adds each pair's products in its order, so the vector levels' bf16
/// results agree bit for bit (for few rows, those of the same vector width; none of these values is
/// subnormal, which vdpbf16ps would flush).
TEST(ComputeLinear, Bf16VectorLevelsAgreeBitForBit) {
  std::vector<Isa> isas = paths();
  isas.pop_back();  // the portable path sums in another order
  if (isas.size() < 2) GTEST_SKIP() << "fewer than two vector levels run here";
  for (const Shape& s : {Shape{1, 433, 37, 0}, Shape{12, 432, 50, 0}, Shape{100, 1290, 45, 0}}) {
    SCOPED_TRACE(trace(Isa::none, false, s));
    const std::vector<float> x = uniform(static_cast<size_t>(s.n * s.k), 15);
    const Weights m = bf16_weights(s.o, s.k, 16);
    std::vector<std::vector<float>> outs;
    for (Isa isa : isas) {
      std::vector<float> out(static_cast<size_t>(s.n * s.o));
      GemmWorkspace ws;
      td::linear_bf16(isa, td::rows_view<const float>(x.data(), s.n, s.k), m.W, nullptr,
                      td::rows_view<float>(out.data(), s.n, s.o), &ws, false);
      outs.push_back(out);
    }
    for (size_t i = 1; i < outs.size(); ++i) {
      // Few rows take products whose lanes split k: the same bits for the same vector width only.
      size_t j = 0;
      if (s.n <= td::kRowsGemmMaxRows) {
        while (td::compute_kernels(isas[j], false).clanes !=
               td::compute_kernels(isas[i], false).clanes) {
          ++j;
        }
      }
      EXPECT_EQ(std::memcmp(outs[i].data(), outs[j].data(), outs[0].size() * sizeof(float)), 0)
          << td::isa_name(isas[i]) << " against " << td::isa_name(isas[j]);
    }
  }
}

#ifdef _OPENMP
/// Threads split output rows (few rows) or the grid of rows and columns (many), never k: 1 to 4
/// threads give the same bits on every path.
TEST(ComputeLinear, SameBitsOnOneToFourThreads) {
  const int saved = omp_get_max_threads();
  for (Isa isa : paths()) {
    for (bool int8 : {false, true}) {
      for (const Shape& s : {Shape{1, 433, 1296, 32}, Shape{8, 432, 1296, 32},
                             Shape{17, 433, 300, 64}, Shape{200, 1290, 203, 128}}) {
        if (isa == Isa::none && s.n > 20) continue;  // scalar: slow, and split like the few rows
        SCOPED_TRACE(trace(isa, int8, s));
        const std::vector<float> x = uniform(static_cast<size_t>(s.n * s.k), 8);
        const Weights m = int8 ? q8_weights(s.o, s.k, s.block, 9, true) : bf16_weights(s.o, s.k, 9);
        std::vector<float> first;
        for (int t = 1; t <= 4; ++t) {
          omp_set_num_threads(t);
          std::vector<float> out(static_cast<size_t>(s.n * s.o));
          GemmWorkspace ws;
          auto inv = td::rows_view<const float>(x.data(), s.n, s.k);
          auto outv = td::rows_view<float>(out.data(), s.n, s.o);
          if (int8) {
            td::linear_int8(isa, inv, m.W, nullptr, outv, &ws, false);
          } else {
            td::linear_bf16(isa, inv, m.W, nullptr, outv, &ws, false);
          }
          if (t == 1) {
            first = out;
          } else {
            EXPECT_EQ(std::memcmp(out.data(), first.data(), out.size() * sizeof(float)), 0)
                << t << " threads";
          }
        }
      }
    }
  }
  omp_set_num_threads(saved);
}
#endif

/// Once the buffers have grown, repeated products allocate nothing, with a workspace and (few
/// rows) without one.
TEST(ComputeLinear, NoAllocationOnceGrown) {
#ifdef _OPENMP
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  for (Isa isa : paths()) {
    for (bool int8 : {false, true}) {
      for (bool with_ws : {false, true}) {
        for (Index n : {Index{1}, Index{16}, Index{40}}) {
          if (!with_ws && n > 16) continue;
          SCOPED_TRACE(std::string(td::isa_name(isa)) + (int8 ? " int8" : " bf16") + " n " +
                       std::to_string(n) + (with_ws ? " ws" : ""));
          const Index k = 96, o = 70;
          const std::vector<float> x = uniform(static_cast<size_t>(n * k), 11);
          const Weights m = int8 ? q8_weights(o, k, 32, 12, false) : bf16_weights(o, k, 12);
          std::vector<float> out(static_cast<size_t>(n * o));
          GemmWorkspace ws;
          auto run = [&] {
            auto inv = td::rows_view<const float>(x.data(), n, k);
            auto outv = td::rows_view<float>(out.data(), n, o);
            if (int8) {
              td::linear_int8(isa, inv, m.W, nullptr, outv, with_ws ? &ws : nullptr, false);
            } else {
              td::linear_bf16(isa, inv, m.W, nullptr, outv, with_ws ? &ws : nullptr, false);
            }
          };
          run();
          const long before = tconst_test::heap_allocations();
          run();
          run();
          EXPECT_EQ(tconst_test::heap_allocations(), before);
        }
      }
    }
  }
#ifdef _OPENMP
  omp_set_num_threads(saved);
#endif
}

/// A NaN or an infinite activation makes that row's outputs NaN (int8: the block's scale is NaN;
/// bf16: NaN times the weights, infinity times a weight row with both signs or a zero); the other
/// rows are untouched by it.
TEST(ComputeLinear, NonFiniteActivationsGiveNaN) {
  for (Isa isa : paths()) {
    for (bool int8 : {false, true}) {
      for (Index n : {Index{3}, Index{40}}) {
        for (float bad : {kNaN, std::numeric_limits<float>::infinity()}) {
          SCOPED_TRACE(std::string(td::isa_name(isa)) + (int8 ? " int8" : " bf16") + " n " +
                       std::to_string(n) + " " + std::to_string(bad));
          const Index k = 100, o = 33;
          std::vector<float> x = uniform(static_cast<size_t>(n * k), 13);
          x[static_cast<size_t>(1 * k + 70)] = bad;
          const Weights m = int8 ? q8_weights(o, k, 32, 14, false) : bf16_weights(o, k, 14);
          std::vector<float> out(static_cast<size_t>(n * o));
          GemmWorkspace ws;
          auto inv = td::rows_view<const float>(x.data(), n, k);
          auto outv = td::rows_view<float>(out.data(), n, o);
          if (int8) {
            td::linear_int8(isa, inv, m.W, nullptr, outv, &ws, false);
          } else {
            td::linear_bf16(isa, inv, m.W, nullptr, outv, &ws, false);
          }
          for (Index g = 0; g < n; ++g) {
            for (Index j = 0; j < o; ++j) {
              const float y = out[static_cast<size_t>(g * o + j)];
              if (g == 1 && (int8 || std::isnan(bad))) {
                EXPECT_TRUE(std::isnan(y)) << "row " << g << " output " << j;
              } else if (g != 1) {
                EXPECT_TRUE(std::isfinite(y)) << "row " << g << " output " << j;
              }
            }
          }
        }
      }
    }
  }
}

TEST(ComputeLinear, EmptyShapesAndWrongFormats) {
  const Weights b = bf16_weights(5, 8, 1);
  const Weights q = q8_weights(5, 8, 16, 2, false);
  std::vector<float> x(16, 1.0f), out(10, 42.0f);
  for (Isa isa : paths()) {
    // No rows: nothing is written.
    td::linear_bf16(isa, td::rows_view<const float>(x.data(), 0, 8), b.W, nullptr,
                    td::rows_view<float>(out.data(), 0, 5), nullptr, false);
    td::linear_int8(isa, td::rows_view<const float>(x.data(), 0, 8), q.W, nullptr,
                    td::rows_view<float>(out.data(), 0, 5), nullptr, false);
    for (float y : out) EXPECT_EQ(y, 42.0f);
    // No columns: the bias alone.
    WeightMatrix empty_b = b.W, empty_q = q.W;
    empty_b.cols = empty_q.cols = 0;
    const std::vector<float> bias = {1, 2, 3, 4, 5};
    for (const WeightMatrix* W : {&empty_b, &empty_q}) {
      std::vector<float> y(10, 42.0f);
      auto inv = td::rows_view<const float>(x.data(), 2, 0);
      auto outv = td::rows_view<float>(y.data(), 2, 5);
      if (W->format == WeightFormat::q8) {
        td::linear_int8(isa, inv, *W, bias.data(), outv, nullptr, false);
      } else {
        td::linear_bf16(isa, inv, *W, bias.data(), outv, nullptr, false);
      }
      for (size_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], bias[i % 5]) << td::isa_name(isa);
    }
    EXPECT_THROW(td::linear_bf16(isa, td::rows_view<const float>(x.data(), 1, 8), q.W, nullptr,
                                 td::rows_view<float>(out.data(), 1, 5), nullptr, false),
                 tconst::Error);
    EXPECT_THROW(td::linear_int8(isa, td::rows_view<const float>(x.data(), 1, 8), b.W, nullptr,
                                 td::rows_view<float>(out.data(), 1, 5), nullptr, false),
                 tconst::Error);
  }
}

// ---- the resync's attention in bf16 (ops.hpp's attend_head_bf16) ----------------------------
//
// SPEC §6.3 in double: q, k, v rounded to BF16; s_t = q . k_t / sqrt(dh); each weight e^s_t
// rounded to BF16 with the exponent unbounded (2^m bf16(e^(s_t - m ln 2)), any integer m, here
// m = ceil(max_t s_t / ln 2)); out = sum_t w_t v_t / sum_t e^s_t. The float result differs by its
// sums' roundings, whose root mean square over the outputs is about sqrt(nk + dh) u max|v|, and by
// the rare weight that lies within float rounding of a BF16 boundary. A weight rounded against
// another shift (one that is not a multiple of ln 2) moves each output by about 2^-9 / sqrt(nk)
// max|v|, a key left out or paired with the wrong value by about max|v| / nk: both far above the
// bound of 8 sqrt(nk + dh) u max|v| that the tests put on the root mean square.

/// One head's inputs: Q [nq, dh], K and V [nk, dh], rows dh apart.
struct Head {
  Index nq, nk, dh;
  std::vector<float> q, k, v;
};

Head head(Index nq, Index nk, Index dh, uint32_t seed) {
  // Queries scaled up so that some rows' softmax is peaked, others flat.
  Head h{nq,
         nk,
         dh,
         uniform(static_cast<size_t>(nq * dh), seed, -3.0f, 3.0f),
         uniform(static_cast<size_t>(nk * dh), seed + 1),
         uniform(static_cast<size_t>(nk * dh), seed + 2)};
  return h;
}

/// SPEC §6.3's attention of one head in double; with real_shift, the weights rounded against the
/// row's largest score instead (a wrong reading, which the checks must tell apart).
std::vector<double> bf16_attention_reference(const Head& h, bool real_shift = false) {
  auto r = [](float x) { return static_cast<double>(td::round_to_bf16(x)); };
  const double scale = 1.0 / std::sqrt(static_cast<double>(h.dh)), ln2 = std::log(2.0);
  std::vector<double> out(static_cast<size_t>(h.nq * h.dh)), s(static_cast<size_t>(h.nk));
  for (Index i = 0; i < h.nq; ++i) {
    double top = -INFINITY;
    for (Index t = 0; t < h.nk; ++t) {
      double dot = 0;
      for (Index c = 0; c < h.dh; ++c) dot += r(h.q[i * h.dh + c]) * r(h.k[t * h.dh + c]);
      s[t] = dot * scale;
      top = std::max(top, s[t]);
    }
    const double shift = real_shift ? top : std::ceil(top / ln2) * ln2;
    double total = 0;
    std::vector<double> w(static_cast<size_t>(h.nk));
    for (Index t = 0; t < h.nk; ++t) {
      const double e = std::exp(s[t] - shift);
      total += e;
      w[t] = r(static_cast<float>(e));
    }
    for (Index c = 0; c < h.dh; ++c) {
      double acc = 0;
      for (Index t = 0; t < h.nk; ++t) acc += w[t] * r(h.v[t * h.dh + c]);
      out[i * h.dh + c] = acc / total;
    }
  }
  return out;
}

/// The root mean square of got - want.
double rms_error(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < want.size(); ++i) e += std::pow(got[i] - want[i], 2);
  return std::sqrt(e / static_cast<double>(want.size()));
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

/// One head through attend_head_bf16 on the path of `isa`: in one call (normalised), or online in
/// the chunks of keys that `cuts` ends, then divided by the running sums.
std::vector<float> bf16_attention(Isa isa, const Head& h, const std::vector<Index>& cuts = {}) {
  const td::KernelTable& kern =
      isa == Isa::none ? td::kernels(Isa::none) : td::compute_kernels(isa, false);
  td::AttentionWorkers<float>::Worker worker;
  std::vector<float> p(static_cast<size_t>(h.nk));
  std::vector<float> out(static_cast<size_t>(h.nq * h.dh), kNaN);
  auto view = [&](const std::vector<float>& m, Index r0, Index rows) {
    return td::rows_view<const float>(m.data() + r0 * h.dh, rows, h.dh);
  };
  const auto outv = td::rows_view<float>(out.data(), h.nq, h.dh);
  if (cuts.empty()) {
    td::attend_head_bf16(kern, view(h.q, 0, h.nq), view(h.k, 0, h.nk), view(h.v, 0, h.nk), &worker,
                         nullptr, nullptr, nullptr, p.data(), outv);
    return out;
  }
  std::fill(out.begin(), out.end(), 0.0f);
  const size_t stats = static_cast<size_t>((h.nq + 15) / 16 * 16);
  std::vector<float> mx(stats, -std::numeric_limits<float>::infinity()), sum(stats, 0.0f);
  Index t0 = 0;
  for (Index t1 : cuts) {
    td::attend_head_bf16(kern, view(h.q, 0, h.nq), view(h.k, t0, t1 - t0), view(h.v, t0, t1 - t0),
                         &worker, nullptr, mx.data(), sum.data(), p.data(), outv);
    t0 = t1;
  }
  for (Index i = 0; i < h.nq; ++i) {
    for (Index c = 0; c < h.dh; ++c)
      out[static_cast<size_t>(i * h.dh + c)] /= sum[static_cast<size_t>(i)];
  }
  return out;
}

/// Shapes: one query and one key; odd head sizes and key counts (a half-filled last pair); query
/// counts that are not whole panels; the paper's head (36) and the 1b preset's (128).
const std::vector<std::array<Index, 3>> kHeadShapes = {
    {1, 1, 2}, {5, 3, 7}, {17, 50, 5}, {40, 300, 36}, {33, 257, 128}, {100, 64, 36}};

TEST(ComputeAttention, Bf16MatchesTheSpecOnEveryPath) {
  for (Isa isa : paths()) {
    for (const auto& [nq, nk, dh] : kHeadShapes) {
      SCOPED_TRACE(std::string(td::isa_name(isa)) + " nq " + std::to_string(nq) + " nk " +
                   std::to_string(nk) + " dh " + std::to_string(dh));
      const Head h = head(nq, nk, dh, static_cast<uint32_t>(nq + nk + dh));
      const std::vector<double> want = bf16_attention_reference(h);
      const double bound = 8.0 * std::sqrt(static_cast<double>(nk + dh)) * kU * max_abs(h.v);
      EXPECT_LE(rms_error(bf16_attention(isa, h), want), bound) << "in one call";
      // Online, in chunks of odd and even sizes (each chunk's own shift): the same result.
      std::vector<Index> cuts;
      for (Index t : {Index{7}, Index{8}, Index{71}, Index{72}}) {
        if (t < nk) cuts.push_back(t);
      }
      cuts.push_back(nk);
      EXPECT_LE(rms_error(bf16_attention(isa, h, cuts), want), bound) << "online";
    }
  }
}

/// The check above tells the SPEC's rounding of the weights from a rounding against another shift.
TEST(ComputeAttention, Bf16CheckSeesTheShiftOfTheWeights) {
  const Head h = head(40, 300, 36, 3);
  const double bound = 8.0 * std::sqrt(336.0) * kU * max_abs(h.v);
  const std::vector<float> got = bf16_attention(paths().front(), h);
  EXPECT_LE(rms_error(got, bf16_attention_reference(h)), bound);
  EXPECT_GT(rms_error(got, bf16_attention_reference(h, true)), 4 * bound);
}

/// Every vector level gives the same bits (the same order of sums in each lane; none of these
/// values is subnormal).
TEST(ComputeAttention, Bf16VectorLevelsAgreeBitForBit) {
  std::vector<Isa> isas = paths();
  isas.pop_back();
  if (isas.size() < 2) GTEST_SKIP() << "fewer than two vector levels run here";
  for (const auto& [nq, nk, dh] : kHeadShapes) {
    const Head h = head(nq, nk, dh, 11);
    const std::vector<float> first = bf16_attention(isas[0], h, {nk / 2 + 1, nk});
    for (size_t i = 1; i < isas.size(); ++i) {
      const std::vector<float> got = bf16_attention(isas[i], h, {nk / 2 + 1, nk});
      EXPECT_EQ(std::memcmp(got.data(), first.data(), got.size() * sizeof(float)), 0)
          << td::isa_name(isas[i]) << " against " << td::isa_name(isas[0]) << ", nq " << nq
          << " nk " << nk << " dh " << dh;
    }
  }
}

/// The levels' names, as TCONST_ISA spells them, and their float kernels: those of their base.
TEST(ComputeLinear, LevelsNamesAndFloatKernels) {
  EXPECT_STREQ(td::isa_name(Isa::avx2_vnni), "avx2_vnni");
  EXPECT_STREQ(td::isa_name(Isa::avx512_vnni), "avx512_vnni");
  EXPECT_STREQ(td::isa_name(Isa::avx512_bf16), "avx512_bf16");
  EXPECT_EQ(td::float_isa(Isa::avx512_bf16), Isa::avx512);
  EXPECT_EQ(td::float_isa(Isa::avx2_vnni), Isa::avx2);
  for (int i = 1; i < td::kIsaCount; ++i) {
    const Isa isa = static_cast<Isa>(i);
    const td::KernelTable& t = td::kernels(isa);
    if (t.isa != isa) continue;
    const td::KernelTable& base = td::kernels(td::float_isa(isa));
    EXPECT_EQ(t.rows_gemm, base.rows_gemm) << td::isa_name(isa);
    EXPECT_EQ(t.compute, base.compute) << td::isa_name(isa);
    EXPECT_EQ(t.quant_rows, base.quant_rows) << td::isa_name(isa);
    EXPECT_EQ(t.attend, base.attend) << td::isa_name(isa);
    EXPECT_NE(td::compute_kernels(isa, true).int8_compute, nullptr) << td::isa_name(isa);
    EXPECT_NE(td::compute_kernels(isa, false).bf16_compute, nullptr) << td::isa_name(isa);
  }
}

}  // namespace
