// Micro-benchmarks of the kernels in tconst/ops.hpp at the paper's 41M shape, in float, on random
// data, plus three machine figures that bound them: memory read bandwidth, GEMM rate and the FMA
// units' peak per instruction set (BM_FmaPeak).
//
//   d = 432, h = 12, dh = 36, f = 1280, V = 50257, W = Hh = 256
//
// Cache-hit step: the GEMVs (qkv, out, w1/w3, w2, head) report bytes processed (GB/s), to compare
// with BM_MemoryReadBandwidth; attention of one query over 256 window or compressed keys.
// Resync: the GEMMs of a 256-row chunk, the online (chunked) attention and the Z x Z attention
// report GFLOP/s, to compare with BM_GemmRate. BM_Gemm: the packed product of detail/gemm.hpp at
// the resync's shapes on 256 and 1024 rows, beside Eigen's product and (where the build found it)
// OpenBLAS's sgemm, to quote as a share of BM_FmaPeak. LayerNorm and RoPE on 1 and 256 rows.
//
// Arguments: `threads` sets OpenMP's and Eigen's thread count (1 and up to omp_get_max_threads(),
// which follows OMP_NUM_THREADS); `cold` = 1 cycles through copies of the matrix spread over a
// 1 GiB pool so every call streams its weights from DRAM, as in a real step, whose ~164 MB of
// weights do not stay in any cache; `cold` = 0 reuses one copy, which then sits in cache.
// Every benchmark uses wall-clock time (UseRealTime): threads must not hide in CPU time.

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "tconst/detail/big_buffer.hpp"
#include "tconst/detail/compute_linear.hpp"
#include "tconst/detail/gemm.hpp"
#include "tconst/detail/layers.hpp"
#include "tconst/detail/ops.hpp"
#include "tconst/detail/quant_linear.hpp"
#include "tconst/model.hpp"
#include "tconst/model/quantize.hpp"
#include "tconst/synthetic.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif
#if TCONST_X86_DISPATCH
#include <immintrin.h>
#endif

#if TCONST_BENCH_OPENBLAS
// OpenBLAS's Fortran interface (no header needed): column-major C = alpha op(A) op(B) + beta C.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void openblas_set_num_threads(int threads);
}
#endif

namespace {

using Eigen::Index;
namespace td = tconst::detail;

// The paper's 41M shape (examples/cli_bench.hpp, paper_41m).
constexpr Index kD = 432;
constexpr Index kHeads = 12;
constexpr Index kDh = kD / kHeads;  // 36
constexpr Index kF = 1280;
constexpr Index kVocab = 50257;
constexpr Index kW = 256;        // W = Hh: window rows, compressed rows Z, resync chunk
constexpr int64_t kPos = 16384;  // an absolute position for RoPE
constexpr size_t kPoolBytes = size_t{1} << 30;

// ---- helpers --------------------------------------------------------------------------------

/// n floats uniform in [-scale, scale), drawn from tconst::Rng(seed).
std::vector<float> random_floats(size_t n, uint64_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  tconst::Rng rng(seed);
  tconst::fill_uniform(rng, v.data(), static_cast<int64_t>(n), -scale, scale);
  return v;
}

/// 1 GiB of random floats, made once: read by the bandwidth benchmark and the cold GEMVs.
const std::vector<float>& pool() {
  static const std::vector<float> p = random_floats(kPoolBytes / sizeof(float), 7, 0.05f);
  return p;
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();  // read before any benchmark changes it
#else
  return 1;
#endif
}

/// 1, 2, 4, ... below the maximum, then the maximum.
std::vector<int64_t> thread_counts() {
  static const std::vector<int64_t> counts = [] {
    const int64_t mx = max_threads();
    std::vector<int64_t> c;
    for (int64_t t = 1; t < mx; t *= 2) c.push_back(t);
    c.push_back(mx);
    return c;
  }();
  return counts;
}

void set_threads(int64_t t) {
#ifdef _OPENMP
  omp_set_num_threads(static_cast<int>(t));
#endif
  Eigen::setNbThreads(static_cast<int>(t));
}

// Rates. Google Benchmark prints a rate counter as "NAME=value/s": "GB=19.7/s" is 19.7 * 10^9
// bytes per second, "GFLOP=15.4/s" 15.4 * 10^9 FLOP per second (JSON: the value per second).
// bytes_per_second (from SetBytesProcessed) is the same rate with binary prefixes (G = 2^30).

/// Bytes per iteration: bytes_per_second and GB (10^9 bytes) per second.
void report_bytes(benchmark::State& state, double bytes_per_iter) {
  state.SetBytesProcessed(static_cast<int64_t>(bytes_per_iter) * state.iterations());
  state.counters["GB"] =
      benchmark::Counter(bytes_per_iter * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void report_flops(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOP"] =
      benchmark::Counter(flops_per_iter * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

tconst::WeightView<float> view(const std::vector<float>& v, Index rows, Index cols) {
  return {v.data(), rows, cols};
}

/// An F32 weight matrix over v ([rows, cols]).
tconst::detail::WeightMatrix f32_matrix(const std::vector<float>& v, Index rows, Index cols) {
  tconst::detail::WeightMatrix W;
  W.data = v.data();
  W.rows = rows;
  W.cols = cols;
  return W;
}

const bool kContext = [] {
  benchmark::AddCustomContext("tconst_shape",
                              "paper 41M, float: d=432 h=12 dh=36 f=1280 V=50257 W=Hh=256");
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("rows_gemm_isa",
                              tconst::detail::isa_name(tconst::detail::active_isa()));
  benchmark::AddCustomContext("omp_max_threads", std::to_string(max_threads()));
  return true;
}();

// ---- machine figures ------------------------------------------------------------------------

/// Sum of n floats with 8 independent packet accumulators, so that the adds keep up with memory.
float sum_floats(const float* p, Index n) {
  using Packet = Eigen::internal::packet_traits<float>::type;
  constexpr Index P = Eigen::internal::packet_traits<float>::size;
  Packet a0 = Eigen::internal::pset1<Packet>(0.f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
         a6 = a0, a7 = a0;
  Index i = 0;
  for (; i + 8 * P <= n; i += 8 * P) {
    a0 = Eigen::internal::padd(a0, Eigen::internal::ploadu<Packet>(p + i));
    a1 = Eigen::internal::padd(a1, Eigen::internal::ploadu<Packet>(p + i + P));
    a2 = Eigen::internal::padd(a2, Eigen::internal::ploadu<Packet>(p + i + 2 * P));
    a3 = Eigen::internal::padd(a3, Eigen::internal::ploadu<Packet>(p + i + 3 * P));
    a4 = Eigen::internal::padd(a4, Eigen::internal::ploadu<Packet>(p + i + 4 * P));
    a5 = Eigen::internal::padd(a5, Eigen::internal::ploadu<Packet>(p + i + 5 * P));
    a6 = Eigen::internal::padd(a6, Eigen::internal::ploadu<Packet>(p + i + 6 * P));
    a7 = Eigen::internal::padd(a7, Eigen::internal::ploadu<Packet>(p + i + 7 * P));
  }
  a0 = Eigen::internal::padd(
      Eigen::internal::padd(Eigen::internal::padd(a0, a1), Eigen::internal::padd(a2, a3)),
      Eigen::internal::padd(Eigen::internal::padd(a4, a5), Eigen::internal::padd(a6, a7)));
  float s = Eigen::internal::predux(a0);
  for (; i < n; ++i) s += p[i];
  return s;
}

/// The sum of a[0, n), split over `threads` (OpenMP), each thread reading its contiguous part.
float sum_split(const float* a, Index n, int64_t threads) {
  float total = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(static_cast<int>(threads)) reduction(+ : total) schedule(static)
  for (int64_t c = 0; c < threads; ++c) {
    const Index r0 = n * c / threads, r1 = n * (c + 1) / threads;
    total += sum_floats(a + r0, r1 - r0);
  }
#else
  (void)threads;
  total = sum_floats(a, n);
#endif
  return total;
}

/// Memory read bandwidth: one pass over a 1 GiB float array per iteration, split over `threads`.
/// The "weight-streaming limit" of a cache-hit step is its weight bytes over this rate.
void BM_MemoryReadBandwidth(benchmark::State& state) {
  const int64_t threads = state.range(0);
  set_threads(threads);
  const std::vector<float>& a = pool();
  const Index n = static_cast<Index>(a.size());
  for (auto _ : state) benchmark::DoNotOptimize(sum_split(a.data(), n, threads));
  report_bytes(state, static_cast<double>(kPoolBytes));
}
BENCHMARK(BM_MemoryReadBandwidth)
    ->ArgsProduct({thread_counts()})
    ->ArgNames({"threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

/// Bytes a cache-hit step of the paper-41m TConstFormer (B = 2, D = 4) reads with its weight
/// matrices in `format` (q8: blocks of 32, tconst quantize's default): the 8 layers' qkv, out, w1,
/// w3, w2 and the head, plus the keys and values it attends to, averaged over a window's cycle
/// (every layer its window, 128.5 rows on average; the 6 layers with j >= 1 also the Z = 256
/// compressed rows), all float32. Norms, biases and the embedding row are left out (< 0.1 %).
double step_bytes(td::WeightFormat format) {
  const double weights = 8.0 * (4.0 * kD * kD + 3.0 * kD * kF) + double{kVocab} * kD;
  const double per_weight = format == td::WeightFormat::f32    ? 4.0
                            : format == td::WeightFormat::bf16 ? 2.0
                                                               : 1.0 + 4.0 / 32.0;
  const double kv_rows = 8 * (kW + 1) / 2.0 + 6.0 * kW;
  return weights * per_weight + kv_rows * 2.0 * kD * sizeof(float);
}

/// The streaming limit of a cache-hit step in `format`: each iteration reads step_bytes(format)
/// once, split over `threads`, as the step reads its weights and cache once, from memory laid out
/// as the model's and the cache's are (tconst::detail::BigBuffer: huge pages where the kernel
/// gives them); the same bytes are read again by the next iteration, so they stay in whatever
/// cache level holds them, as a step's do between steps. Time per iteration = that limit.
void BM_StepReadBandwidth(benchmark::State& state, td::WeightFormat format) {
  const int64_t threads = state.range(0);
  set_threads(threads);
  const Index n = static_cast<Index>(step_bytes(format) / sizeof(float));
  static std::map<int, td::BigBuffer<float>> buffers;  // one per format, made once
  td::BigBuffer<float>& buf = buffers[static_cast<int>(format)];
  if (buf.size() != static_cast<size_t>(n)) {
    buf = td::BigBuffer<float>(static_cast<size_t>(n), "the step-sized buffer");
    std::memcpy(buf.data(), pool().data(), sizeof(float) * static_cast<size_t>(n));
  }
  const float* a = buf.data();
  for (auto _ : state) benchmark::DoNotOptimize(sum_split(a, n, threads));
  report_bytes(state, static_cast<double>(n) * sizeof(float));
}
const bool kStepReadBenchmarks = [] {
  for (td::WeightFormat f : {td::WeightFormat::f32, td::WeightFormat::bf16, td::WeightFormat::q8}) {
    const std::string name = std::string("BM_StepReadBandwidth/") + tconst::to_string(f);
    benchmark::RegisterBenchmark(name.c_str(), BM_StepReadBandwidth, f)
        ->ArgsProduct({thread_counts()})
        ->ArgNames({"threads"})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  return true;
}();

/// Single-precision GEMM rate: Eigen's 1024 x 1024 x 1024 product (2 * 1024^3 FLOP).
void BM_GemmRate(benchmark::State& state) {
  set_threads(state.range(0));
  const Index n = 1024;
  Eigen::MatrixXf A = Eigen::Map<const Eigen::MatrixXf>(random_floats(n * n, 1).data(), n, n);
  Eigen::MatrixXf B = Eigen::Map<const Eigen::MatrixXf>(random_floats(n * n, 2).data(), n, n);
  Eigen::MatrixXf C(n, n);
  for (auto _ : state) {
    C.noalias() = A * B;
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * n * n * n);
}
BENCHMARK(BM_GemmRate)
    ->ArgsProduct({thread_counts()})
    ->ArgNames({"threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// FMA peak: per thread, independent chains of vector multiply-adds on registers (no memory
// traffic), so that the GEMM figures can be quoted as a share of what the FMA units do. Compiled
// per instruction set as the kernels are (dispatch.hpp), whatever this file's flags. 16 chains in
// AVX-512's 32 registers; 12 in AVX2's 16 (16 chains and the two constants would spill).
constexpr int kFmaChains512 = 16;
constexpr int kFmaChains256 = 12;
constexpr int64_t kFmaSteps = int64_t{1} << 22;  // multiply-adds per chain per call

#if TCONST_X86_DISPATCH
#include "tconst/detail/kernels/target_avx512_begin.inl"
/// kFmaSteps steps of kFmaChains512 chains a = a * b + c, 16 lanes each; returns their sum.
float fma_chains_avx512() {
  __m512 a[kFmaChains512];
  for (int j = 0; j < kFmaChains512; ++j)
    a[j] = _mm512_set1_ps(1.0f + 0.01f * static_cast<float>(j));
  const __m512 b = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(1e-4f);
  for (int64_t i = 0; i < kFmaSteps; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kFmaChains512; ++j) a[j] = _mm512_fmadd_ps(a[j], b, c);
  }
  __m512 s = a[0];
  for (int j = 1; j < kFmaChains512; ++j) s = _mm512_add_ps(s, a[j]);
  return _mm512_reduce_add_ps(s);
}
#include "tconst/detail/kernels/target_end.inl"
// (the region above closes before the next opens)
#include "tconst/detail/kernels/target_avx2_begin.inl"
/// As fma_chains_avx512 with 8 lanes and kFmaChains256 chains.
float fma_chains_avx2() {
  __m256 a[kFmaChains256];
  for (int j = 0; j < kFmaChains256; ++j)
    a[j] = _mm256_set1_ps(1.0f + 0.01f * static_cast<float>(j));
  const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-4f);
  for (int64_t i = 0; i < kFmaSteps; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kFmaChains256; ++j) a[j] = _mm256_fmadd_ps(a[j], b, c);
  }
  __m256 s = a[0];
  for (int j = 1; j < kFmaChains256; ++j) s = _mm256_add_ps(s, a[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  float t = 0;
  for (float x : lanes) t += x;
  return t;
}
#include "tconst/detail/kernels/target_end.inl"
#endif  // TCONST_X86_DISPATCH

/// The sum of run()'s results, run once on each of `threads` threads at the same time (OpenMP).
float on_each_thread(int64_t threads, float (*run)()) {
  float total = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(static_cast<int>(threads)) reduction(+ : total) schedule(static)
  for (int64_t t = 0; t < threads; ++t) total += run();
#else
  (void)threads;
  total = run();
#endif
  return total;
}

/// The FMA units' rate on `threads` = range(0) threads, each running its own chains.
void BM_FmaPeak(benchmark::State& state, td::Isa isa) {
#if TCONST_X86_DISPATCH
  if (td::kernels(isa).rows_gemm == nullptr) {
    state.SkipWithError("this CPU does not run this instruction set");
    return;
  }
  const int64_t threads = state.range(0);
  const int lanes = isa == td::Isa::avx512 ? 16 : 8;
  const int chains = isa == td::Isa::avx512 ? kFmaChains512 : kFmaChains256;
  float (*run)() = isa == td::Isa::avx512 ? &fma_chains_avx512 : &fma_chains_avx2;
  for (auto _ : state) benchmark::DoNotOptimize(on_each_thread(threads, run));
  report_flops(
      state, 2.0 * lanes * chains * static_cast<double>(kFmaSteps) * static_cast<double>(threads));
#else
  (void)isa;
  state.SkipWithError("no x86 vector kernels in this build");
#endif
}
BENCHMARK_CAPTURE(BM_FmaPeak, avx512, td::Isa::avx512)
    ->ArgsProduct({thread_counts()})
    ->ArgNames({"threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_FmaPeak, avx2, td::Isa::avx2)
    ->ArgsProduct({thread_counts()})
    ->ArgNames({"threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// ---- cache-hit step: GEMVs ------------------------------------------------------------------

/// y = W x (+ b), W [rows, cols]: one token through one weight matrix (detail::gemv).
void BM_Gemv(benchmark::State& state, Index rows, Index cols, bool with_bias) {
  set_threads(state.range(0));
  const bool cold = state.range(1) != 0;
  const size_t mat = static_cast<size_t>(rows * cols);
  std::vector<float> hot;
  const float* base;
  size_t copies = 1;
  if (cold) {
    base = pool().data();
    copies = std::max<size_t>(1, pool().size() / mat);
  } else {
    hot = random_floats(mat, 3, 0.05f);
    base = hot.data();
  }
  const std::vector<float> x = random_floats(static_cast<size_t>(cols), 4);
  const std::vector<float> bias = random_floats(static_cast<size_t>(rows), 5);
  std::vector<float> y(static_cast<size_t>(rows));
  size_t i = 0;
  for (auto _ : state) {
    const tconst::ConstMatrixMap<float> W(base + i * mat, rows, cols);
    td::gemv<float>(W, x.data(), with_bias ? bias.data() : nullptr, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    if (++i == copies) i = 0;
  }
  report_bytes(state, 4.0 * (static_cast<double>(mat) + cols + rows + (with_bias ? rows : 0)));
  report_flops(state, 2.0 * static_cast<double>(mat));
  state.SetItemsProcessed(state.iterations());  // tokens
}
#define TCONST_GEMV(name, rows, cols, bias)          \
  BENCHMARK_CAPTURE(BM_Gemv, name, rows, cols, bias) \
      ->ArgsProduct({thread_counts(), {0, 1}})       \
      ->ArgNames({"threads", "cold"})                \
      ->UseRealTime()                                \
      ->Unit(benchmark::kMicrosecond)
TCONST_GEMV(qkv_1296x432, 3 * kD, kD, true);
TCONST_GEMV(out_432x432, kD, kD, true);
TCONST_GEMV(w1_w3_1280x432, kF, kD, false);
TCONST_GEMV(w2_432x1280, kD, kF, false);
TCONST_GEMV(head_50257x432, kVocab, kD, false);
#undef TCONST_GEMV

// ---- cache-hit step: attention of one query -------------------------------------------------

/// One query row over nk = range(0) keys and values of 12 heads (detail::attend_one), K and V
/// [nk, d] row-major as in the caches. `accumulate`: added to the output, as a cross-attention.
void BM_AttendOne(benchmark::State& state, bool accumulate) {
  set_threads(1);
  const Index nk = state.range(0);
  const std::vector<float> q = random_floats(kD, 11);
  const std::vector<float> K = random_floats(static_cast<size_t>(nk * kD), 12);
  const std::vector<float> V = random_floats(static_cast<size_t>(nk * kD), 13);
  std::vector<float> scores(static_cast<size_t>(kHeads * nk));  // all heads at once
  std::vector<float> out(kD, 0.0f);
  for (auto _ : state) {
    td::attend_one(q.data(), td::rows_view(K.data(), nk, kD), td::rows_view(V.data(), nk, kD),
                   td::Heads{kHeads, kDh}, scores.data(), out.data(), accumulate);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report_bytes(state, 4.0 * 2 * static_cast<double>(nk) * kD);  // K and V
  report_flops(state, 4.0 * static_cast<double>(nk) * kD);      // q K^T and p V
  state.SetItemsProcessed(nk * state.iterations());
  state.SetLabel("items = keys");
}
// The window: self-attention over the rows so far (1 .. W within a span of W tokens).
BENCHMARK_CAPTURE(BM_AttendOne, window, false)
    ->Arg(1)
    ->Arg(64)
    ->Arg(128)
    ->Arg(kW)
    ->ArgNames({"keys"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
// The compressed Kz, Vz of a hidden or restore layer: Z = Hh = 256 rows.
BENCHMARK_CAPTURE(BM_AttendOne, compressed, true)
    ->Arg(kW)
    ->ArgNames({"keys"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
// For comparison, keys that grow with the context: TLinFormer's compress layer (Kc, Vc) and the
// baseline transformer's KV cache, per layer.
BENCHMARK_CAPTURE(BM_AttendOne, context, true)
    ->RangeMultiplier(4)
    ->Range(1024, 65536)
    ->ArgNames({"keys"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// ---- resync: GEMMs and attention of 256-row chunks ------------------------------------------

/// out[n, rows] = in[n, cols] W^T (+ b) (detail::linear), n = range(0) rows.
void BM_Linear(benchmark::State& state, Index rows, Index cols, bool with_bias) {
  const Index n = state.range(0);
  set_threads(state.range(1));
  const std::vector<float> W = random_floats(static_cast<size_t>(rows * cols), 21, 0.05f);
  const std::vector<float> bias = random_floats(static_cast<size_t>(rows), 22);
  const std::vector<float> in = random_floats(static_cast<size_t>(n * cols), 23);
  std::vector<float> out(static_cast<size_t>(n * rows));
  const tconst::ConstMatrixMap<float> Wm(W.data(), rows, cols);
  for (auto _ : state) {
    td::linear<float>(td::rows_view(in.data(), n, cols), Wm, with_bias ? bias.data() : nullptr,
                      td::rows_view(out.data(), n, rows));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * static_cast<double>(n) * rows * cols);
  state.SetItemsProcessed(n * state.iterations());  // tokens
}
#define TCONST_LINEAR(name, rows, cols, bias)          \
  BENCHMARK_CAPTURE(BM_Linear, name, rows, cols, bias) \
      ->ArgsProduct({{8, kW}, thread_counts()})        \
      ->ArgNames({"rows", "threads"})                  \
      ->UseRealTime()                                  \
      ->Unit(benchmark::kMicrosecond)
TCONST_LINEAR(qkv_1296x432, 3 * kD, kD, true);
TCONST_LINEAR(restore_kv_864x432, 2 * kD, kD, true);
TCONST_LINEAR(out_432x432, kD, kD, true);
TCONST_LINEAR(w1_w3_1280x432, kF, kD, false);
TCONST_LINEAR(w2_432x1280, kD, kF, false);
#undef TCONST_LINEAR
// The head for 8 streams stepped together (256 rows would be a 51 MB output).
BENCHMARK_CAPTURE(BM_Linear, head_50257x432, kVocab, kD, false)
    ->ArgsProduct({{8}, thread_counts()})
    ->ArgNames({"rows", "threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// ---- resync: the packed GEMM against Eigen's product and OpenBLAS ---------------------------

/// A resync's product out[n, o] = in[n, k] W^T + bias, n = range(0) rows, on range(1) threads, by
/// `how`: gemm.hpp's packed product (active_isa(): TCONST_ISA picks the path), Eigen's product
/// (as linear() does for many rows), or OpenBLAS's sgemm where the build found it (a yardstick).
enum class GemmBy { packed, eigen, openblas };

void BM_Gemm(benchmark::State& state, GemmBy how, Index k, Index o, bool with_bias) {
  const Index n = state.range(0);
  const int64_t threads = state.range(1);
  set_threads(threads);
  const std::vector<float> W = random_floats(static_cast<size_t>(o * k), 81, 0.05f);
  const std::vector<float> bias = random_floats(static_cast<size_t>(o), 82);
  const std::vector<float> in = random_floats(static_cast<size_t>(n * k), 83);
  std::vector<float> out(static_cast<size_t>(n * o));
  const float* b = with_bias ? bias.data() : nullptr;
  td::GemmWorkspace ws;
  using Rows = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const Rows> X(in.data(), n, k), Wm(W.data(), o, k);
  Eigen::Map<Rows> O(out.data(), n, o);
  switch (how) {
    case GemmBy::packed:
      state.SetLabel(td::isa_name(td::active_isa()));
      for (auto _ : state) {
        td::gemm(td::rows_view(W.data(), o, k), td::rows_view(in.data(), n, k), b,
                 td::rows_view(out.data(), n, o), false, ws);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
      }
      break;
    case GemmBy::eigen:
      state.SetLabel(Eigen::SimdInstructionSetsInUse());
      for (auto _ : state) {
        O.noalias() = X * Wm.transpose();
        if (b != nullptr) O.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(b, o);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
      }
      break;
    case GemmBy::openblas:
#if TCONST_BENCH_OPENBLAS
      openblas_set_num_threads(static_cast<int>(threads));
      for (auto _ : state) {
        // Column-major: out^T [o, n] = W^T^T [o, k] in^T [k, n].
        const int mi = static_cast<int>(o), ni = static_cast<int>(n), ki = static_cast<int>(k);
        const float one = 1.0f, zero = 0.0f;
        sgemm_("T", "N", &mi, &ni, &ki, &one, W.data(), &ki, in.data(), &ki, &zero, out.data(),
               &mi);
        if (b != nullptr) O.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(b, o);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
      }
#else
      state.SkipWithError("built without OpenBLAS");
#endif
      break;
  }
  report_flops(state, 2.0 * static_cast<double>(n) * static_cast<double>(k) * o);
  state.SetItemsProcessed(n * state.iterations());  // tokens
}
#define TCONST_GEMM(how, name, k, o, bias)                          \
  BENCHMARK_CAPTURE(BM_Gemm, how##_##name, GemmBy::how, k, o, bias) \
      ->ArgsProduct({{kW, 4 * kW}, thread_counts()})                \
      ->ArgNames({"rows", "threads"})                               \
      ->UseRealTime()                                               \
      ->Unit(benchmark::kMicrosecond)
#define TCONST_GEMM_SHAPES(how)                     \
  TCONST_GEMM(how, qkv_432x1296, kD, 3 * kD, true); \
  TCONST_GEMM(how, out_432x432, kD, kD, true);      \
  TCONST_GEMM(how, w1_w3_432x1280, kD, kF, false);  \
  TCONST_GEMM(how, w2_1280x432, kF, kD, false);     \
  TCONST_GEMM(how, kv_432x864, kD, 2 * kD, true)
TCONST_GEMM_SHAPES(packed);
TCONST_GEMM_SHAPES(eigen);
#if TCONST_BENCH_OPENBLAS
TCONST_GEMM_SHAPES(openblas);
#endif
#undef TCONST_GEMM_SHAPES
#undef TCONST_GEMM

/// The compress layer's context attention: Z = 256 queries fold in one chunk of range(0) keys
/// (OnlineAttention::add, keys and values read from a [chunk, 3d] qkv buffer as in the resync).
void BM_OnlineAttentionAdd(benchmark::State& state) {
  const Index nk = state.range(0), nq = kW;
  set_threads(state.range(1));
  const std::vector<float> Q = random_floats(static_cast<size_t>(nq * kD), 31);
  const std::vector<float> qkv = random_floats(static_cast<size_t>(nk * 3 * kD), 32);
  // One head's scores per thread, and the per-thread GEMM buffers, as the resync has them.
  std::vector<float> scores(static_cast<size_t>(state.range(1) * nq * nk));
  td::AttentionWorkers<float> workers;
  workers.workers.resize(static_cast<size_t>(state.range(1)));
  td::OnlineAttention<float> online;
  online.reset(Q.data(), kD, nq, kHeads, kDh, state.range(2) != 0);
  for (auto _ : state) {
    online.add(qkv.data() + kD, qkv.data() + 2 * kD, 3 * kD, nk, scores.data(),
               static_cast<Index>(scores.size()), &workers);
    benchmark::DoNotOptimize(scores.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 4.0 * static_cast<double>(nq) * nk * kD);
  state.SetItemsProcessed(nk * state.iterations());
  state.SetLabel("items = keys");
}
BENCHMARK(BM_OnlineAttentionAdd)
    ->ArgsProduct({{kW}, thread_counts(), {0, 1}})
    ->ArgNames({"keys", "threads", "bf16"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

/// Non-causal attention of 256 query rows over 256 keys (detail::attend_rows): a hidden layer's
/// self-attention over Z rows, or the restore layer's chunk of context queries over Kz, Vz.
void BM_AttendRows(benchmark::State& state) {
  const Index nq = state.range(0), nk = kW;
  set_threads(state.range(1));
  const std::vector<float> qkv = random_floats(static_cast<size_t>(std::max(nq, nk) * 3 * kD), 41);
  std::vector<float> scores(static_cast<size_t>(state.range(1) * nq * nk));
  td::AttentionWorkers<float> workers;
  workers.workers.resize(static_cast<size_t>(state.range(1)));
  std::vector<float> out(static_cast<size_t>(nq * kD));
  for (auto _ : state) {
    td::attend_rows(
        td::rows_view(qkv.data(), nq, kD, 3 * kD), td::rows_view(qkv.data() + kD, nk, kD, 3 * kD),
        td::rows_view(qkv.data() + 2 * kD, nk, kD, 3 * kD), td::Heads{kHeads, kDh}, Index{-1},
        td::rows_view(out.data(), nq, kD), false,
        {scores.data(), static_cast<Index>(scores.size()), &workers, state.range(2) != 0});
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 4.0 * static_cast<double>(nq) * nk * kD);
  state.SetItemsProcessed(nq * state.iterations());  // tokens (query rows)
}
BENCHMARK(BM_AttendRows)
    ->ArgsProduct({{kW}, thread_counts(), {0, 1}})
    ->ArgNames({"rows", "threads", "bf16"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// ---- reduced-precision weights: products over BF16 and Q8 matrices --------------------------

/// 1 GiB of BF16 weights (the upper halves of pool()'s floats, twice over: normal numbers, none
/// subnormal), made once: the cold copies of the BF16 products.
const std::vector<uint16_t>& bf16_pool() {
  static const std::vector<uint16_t> p = [] {
    std::vector<uint16_t> v(kPoolBytes / sizeof(uint16_t));
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &pool()[i % pool().size()], sizeof bits);
      v[i] = static_cast<uint16_t>(bits >> 16);
    }
    return v;
  }();
  return p;
}

/// 1 GiB of Q8 weights (pool()'s floats times 127 / 0.05, four times over), made once; their
/// scales are read from pool() itself.
const std::vector<int8_t>& q8_pool() {
  static const std::vector<int8_t> p = [] {
    std::vector<int8_t> v(kPoolBytes);
    const std::vector<float>& f = pool();
    for (size_t i = 0; i < v.size(); ++i) {
      v[i] =
          static_cast<int8_t>(std::lround(std::clamp(f[i % f.size()] * 2540.0f, -127.0f, 127.0f)));
    }
    return v;
  }();
  return p;
}

/// out[n, rows] = in[n, cols] W^T for W [rows, cols] in `format` (Q8: blocks of `block`), through
/// quant_linear.hpp's linear() (f32: the float linear()), n = range(0) rows on range(1) threads;
/// range(2) = cold cycles through copies of W spread over 1 GiB, as a cache-hit
/// step streams its weights. GB: the matrix's bytes (weights and scales) per second, to hold
/// against BM_MemoryReadBandwidth on as many threads; GFLOP: against BM_FmaPeak.
void BM_QuantLinear(benchmark::State& state, td::WeightFormat format, Index block, Index rows,
                    Index cols) {
  const Index n = state.range(0);
  set_threads(state.range(1));
  const bool cold = state.range(2) != 0;
  td::WeightMatrix W;
  W.format = format;
  W.rows = rows;
  W.cols = cols;
  W.block = format == td::WeightFormat::q8 ? block : 0;
  const size_t elem = format == td::WeightFormat::f32    ? 4
                      : format == td::WeightFormat::bf16 ? 2
                                                         : 1;
  const size_t mat = static_cast<size_t>(rows * cols),
               nscales = static_cast<size_t>(rows * W.blocks());
  const char* base = format == td::WeightFormat::f32 ? reinterpret_cast<const char*>(pool().data())
                     : format == td::WeightFormat::bf16
                         ? reinterpret_cast<const char*>(bf16_pool().data())
                         : reinterpret_cast<const char*>(q8_pool().data());
  const size_t copies = cold ? std::max<size_t>(1, kPoolBytes / (mat * elem)) : 1;
  const std::vector<float> in = random_floats(static_cast<size_t>(n * cols), 91);
  std::vector<float> out(static_cast<size_t>(n * rows));
  td::GemmWorkspace ws;
  size_t i = 0;
  for (auto _ : state) {
    W.data = base + i * mat * elem;
    W.scales = nscales > 0 ? pool().data() + i * nscales : nullptr;
    td::linear(td::rows_view(in.data(), n, cols), W, nullptr, td::rows_view(out.data(), n, rows),
               &ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++i == copies) i = 0;
  }
  report_bytes(state, static_cast<double>(W.bytes()));
  report_flops(state, 2.0 * static_cast<double>(n) * static_cast<double>(mat));
  state.SetLabel(td::isa_name(td::active_isa()));
  state.SetItemsProcessed(n * state.iterations());  // tokens
}

/// BM_QuantLinear/<matrix>/<format>: the cache-hit shapes on 1 and 8 rows, cold and hot (a step's
/// weights stay in a large enough L3 between steps); the resync's on 256 and 1024 rows, hot; each
/// in f32, bf16, q8 with blocks of 32 and of 64.
const bool kQuantBenchmarks = [] {
  struct Format {
    const char* name;
    td::WeightFormat format;
    Index block;
  };
  const Format formats[] = {{"f32", td::WeightFormat::f32, 0},
                            {"bf16", td::WeightFormat::bf16, 0},
                            {"q8b32", td::WeightFormat::q8, 32},
                            {"q8b64", td::WeightFormat::q8, 64}};
  struct Matrix {
    const char* name;
    Index rows, cols;
    bool resync;
  };
  const Matrix matrices[] = {{"qkv_1296x432", 3 * kD, kD, true},
                             {"w1_w3_1280x432", kF, kD, true},
                             {"w2_432x1280", kD, kF, true},
                             {"head_50257x432", kVocab, kD, false}};
  for (const Matrix& m : matrices) {
    for (const Format& f : formats) {
      const std::string name = std::string("BM_QuantLinear/") + m.name + "/" + f.name;
      benchmark::RegisterBenchmark(name.c_str(), BM_QuantLinear, f.format, f.block, m.rows, m.cols)
          ->ArgsProduct({{1, 8}, thread_counts(), {0, 1}})
          ->ArgNames({"rows", "threads", "cold"})
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
      if (!m.resync) continue;
      benchmark::RegisterBenchmark(name.c_str(), BM_QuantLinear, f.format, f.block, m.rows, m.cols)
          ->ArgsProduct({{kW, 4 * kW}, thread_counts(), {0}})
          ->ArgNames({"rows", "threads", "cold"})
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  return true;
}();

// ---- compute modes: dot-instruction peaks and the products ---------------------------------
//
// Peaks per thread, as BM_FmaPeak: independent chains of one instruction on registers. Counted in
// the FMA peak's convention (a multiply and an add are 2 operations): vdpbf16ps does 2 multiplies
// and 2 adds per float lane, 64 FLOP per 512-bit instruction (GFLOP); vpdpbusd 4 and 4 per int32
// lane, 128 operations per 512-bit instruction, 64 per 256-bit one (GOP). The products count 2 n o
// k operations whatever the mode, so each rate holds against its instruction's peak.

constexpr int kDotChains = 16;

#if TCONST_X86_DISPATCH
#include "tconst/detail/kernels/target_avx512_bf16_begin.inl"
/// kFmaSteps steps of kDotChains chains a += b . c (vdpbf16ps, 16 lanes); returns their sum.
float dpbf16_chains() {
  __m512 a[kDotChains];
  for (int j = 0; j < kDotChains; ++j) a[j] = _mm512_set1_ps(0.01f * static_cast<float>(j));
  const __m512i b = _mm512_set1_epi32(0x3c003c00), c = _mm512_set1_epi32(0x38003800);  // tiny
  for (int64_t i = 0; i < kFmaSteps; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kDotChains; ++j) a[j] = _mm512_dpbf16_ps(a[j], (__m512bh)b, (__m512bh)c);
  }
  __m512 s = a[0];
  for (int j = 1; j < kDotChains; ++j) s = _mm512_add_ps(s, a[j]);
  return _mm512_reduce_add_ps(s);
}
#include "tconst/detail/kernels/target_end.inl"
// (the region above closes before the next opens)
#include "tconst/detail/kernels/target_avx512_vnni_begin.inl"
/// kFmaSteps steps of kDotChains chains a += b . c (vpdpbusd, 16 lanes); returns their sum.
float dpbusd512_chains() {
  __m512i a[kDotChains];
  for (int j = 0; j < kDotChains; ++j) a[j] = _mm512_set1_epi32(j);
  const __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(-2);
  for (int64_t i = 0; i < kFmaSteps; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kDotChains; ++j) a[j] = _mm512_dpbusd_epi32(a[j], b, c);
  }
  __m512i s = a[0];
  for (int j = 1; j < kDotChains; ++j) s = _mm512_add_epi32(s, a[j]);
  return static_cast<float>(_mm512_reduce_add_epi32(s));
}
#include "tconst/detail/kernels/target_end.inl"
// (the region above closes before the next opens)
#include "tconst/detail/kernels/target_avx2_vnni_begin.inl"
/// As dpbusd512_chains with AVX-VNNI's 8 lanes and kFmaChains256 chains.
float dpbusd256_chains() {
  __m256i a[kFmaChains256];
  for (int j = 0; j < kFmaChains256; ++j) a[j] = _mm256_set1_epi32(j);
  const __m256i b = _mm256_set1_epi8(3), c = _mm256_set1_epi8(-2);
  for (int64_t i = 0; i < kFmaSteps; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kFmaChains256; ++j) a[j] = _mm256_dpbusd_avx_epi32(a[j], b, c);
  }
  __m256i s = a[0];
  for (int j = 1; j < kFmaChains256; ++j) s = _mm256_add_epi32(s, a[j]);
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  int32_t t = 0;
  for (int32_t x : lanes) t += x;
  return static_cast<float>(t);
}
#include "tconst/detail/kernels/target_end.inl"
#endif  // TCONST_X86_DISPATCH

/// The peak of one dot instruction on range(0) threads: `isa` is the level that has it
/// (avx512_bf16: vdpbf16ps; avx512_vnni: vpdpbusd zmm; avx2_vnni: vpdpbusd ymm).
void BM_DotPeak(benchmark::State& state, td::Isa isa) {
#if TCONST_X86_DISPATCH
  if (td::kernels(isa).isa != isa) {
    state.SkipWithError("this CPU does not run this instruction");
    return;
  }
  const int64_t threads = state.range(0);
  float (*run)() = isa == td::Isa::avx512_bf16   ? &dpbf16_chains
                   : isa == td::Isa::avx512_vnni ? &dpbusd512_chains
                                                 : &dpbusd256_chains;
  // Operations per instruction (see above) times instructions per call.
  const double per_instruction = isa == td::Isa::avx512_vnni ? 128.0 : 64.0;
  const int chains = isa == td::Isa::avx2_vnni ? kFmaChains256 : kDotChains;
  for (auto _ : state) benchmark::DoNotOptimize(on_each_thread(threads, run));
  const double ops =
      per_instruction * chains * static_cast<double>(kFmaSteps) * static_cast<double>(threads);
  state.counters[isa == td::Isa::avx512_bf16 ? "GFLOP" : "GOP"] =
      benchmark::Counter(ops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
#else
  (void)isa;
  state.SkipWithError("no x86 vector kernels in this build");
#endif
}
BENCHMARK_CAPTURE(BM_DotPeak, vdpbf16ps_avx512_bf16, td::Isa::avx512_bf16)
    ->ArgsProduct({thread_counts()})
    ->ArgNames({"threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DotPeak, vpdpbusd_avx512_vnni, td::Isa::avx512_vnni)
    ->ArgsProduct({thread_counts()})
    ->ArgNames({"threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DotPeak, vpdpbusd_avx2_vnni, td::Isa::avx2_vnni)
    ->ArgsProduct({thread_counts()})
    ->ArgNames({"threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

enum class Mode { f32, bf16, int8 };

/// out[n, rows] = in[n, cols] W^T on n = range(0) rows and range(1) threads, hot (one copy of W):
/// f32 through linear() (the float kernels), bf16 through linear_bf16() over BF16 W, int8 through
/// linear_int8() over Q8 W with blocks of `block` and its block sums (as a model keeps them), each
/// at active_isa() (TCONST_ISA caps it). GFLOP counts 2 n rows cols (for int8 too: GOP), to hold
/// against BM_FmaPeak (f32) and BM_DotPeak (bf16, int8) on as many threads.
void BM_ComputeLinear(benchmark::State& state, Mode mode, Index rows, Index cols, Index block) {
  const Index n = state.range(0);
  set_threads(state.range(1));
  const size_t mat = static_cast<size_t>(rows * cols);
  const std::vector<float> w = random_floats(mat, 93, 0.05f);
  std::vector<uint16_t> bf16(mat);
  std::vector<int8_t> q8;
  std::vector<float> scales;
  std::vector<int32_t> sums;
  td::WeightMatrix W;
  W.rows = rows;
  W.cols = cols;
  if (mode == Mode::f32) {
    W.data = w.data();
  } else if (mode == Mode::bf16) {
    for (size_t i = 0; i < mat; ++i) bf16[i] = tconst::float_to_bf16(w[i]);
    W.format = td::WeightFormat::bf16;
    W.data = bf16.data();
  } else {
    W.format = td::WeightFormat::q8;
    W.block = block;
    q8.resize(mat);
    scales.resize(static_cast<size_t>(rows * W.blocks()));
    tconst::quantize_q8(w.data(), rows, cols, W.block, q8.data(), scales.data());
    sums.resize(scales.size());
    W.data = q8.data();
    W.scales = scales.data();
    td::int8_block_sums(W, sums.data());
    W.block_sums = sums.data();
  }
  const std::vector<float> in = random_floats(static_cast<size_t>(n * cols), 94);
  std::vector<float> out(static_cast<size_t>(n * rows));
  td::GemmWorkspace ws;
  const auto inv = td::rows_view(in.data(), n, cols);
  const auto outv = td::rows_view(out.data(), n, rows);
  for (auto _ : state) {
    switch (mode) {
      case Mode::f32:
        td::linear(inv, W, nullptr, outv, &ws);
        break;
      case Mode::bf16:
        td::linear_bf16(inv, W, nullptr, outv, &ws);
        break;
      case Mode::int8:
        td::linear_int8(inv, W, nullptr, outv, &ws);
        break;
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double ops = 2.0 * static_cast<double>(n) * static_cast<double>(mat);
  state.counters[mode == Mode::int8 ? "GOP" : "GFLOP"] =
      benchmark::Counter(ops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  const td::Isa isa = mode == Mode::f32    ? td::float_isa(td::active_isa())
                      : mode == Mode::bf16 ? td::compute_kernels(td::active_isa(), false).isa
                                           : td::compute_kernels(td::active_isa(), true).isa;
  state.SetLabel(td::isa_name(isa));
}

/// BM_ComputeLinear/<matrix>/<mode>: the resync's shapes on 512 rows and a step's on 1 and 8;
/// int8 with the default block of 32, and int8_b128 with a Q8 file's block of 128.
const bool kComputeBenchmarks = [] {
  struct Matrix {
    const char* name;
    Index rows, cols;
  };
  const Matrix matrices[] = {
      {"qkv_1296x432", 3 * kD, kD}, {"w1_w3_1280x432", kF, kD}, {"w2_432x1280", kD, kF}};
  struct Variant {
    const char* name;
    Mode mode;
    Index block;
  };
  const Variant modes[] = {{"f32", Mode::f32, 0},
                           {"bf16", Mode::bf16, 0},
                           {"int8", Mode::int8, 32},
                           {"int8_b128", Mode::int8, 128}};
  for (const Matrix& m : matrices) {
    for (const auto& [mode_name, mode, block] : modes) {
      const std::string name = std::string("BM_ComputeLinear/") + m.name + "/" + mode_name;
      benchmark::RegisterBenchmark(name.c_str(), BM_ComputeLinear, mode, m.rows, m.cols, block)
          ->ArgsProduct({{1, 8, 512}, thread_counts()})
          ->ArgNames({"rows", "threads"})
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  return true;
}();

// ---- per-row kernels ------------------------------------------------------------------------

/// The SwiGLU FFN with its LayerNorm and residual (detail::ffn_residual) on range(0) rows:
/// w1, w3 and w2 are three GEMVs on one row (a cache-hit step), three GEMMs on 256.
void BM_FfnResidual(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(state.range(1));
  const std::vector<float> ones(kD, 1.0f), zeros(kD, 0.0f);
  const std::vector<float> w1 = random_floats(static_cast<size_t>(kF * kD), 51, 0.05f);
  const std::vector<float> w3 = random_floats(static_cast<size_t>(kF * kD), 52, 0.05f);
  const std::vector<float> w2 = random_floats(static_cast<size_t>(kD * kF), 53, 0.03f);
  tconst::LayerWeights<float> L;
  L.norm2_w = view(ones, kD, 1);
  L.norm2_b = view(zeros, kD, 1);
  L.w1 = f32_matrix(w1, kF, kD);
  L.w3 = f32_matrix(w3, kF, kD);
  L.w2 = f32_matrix(w2, kD, kF);
  std::vector<float> x = random_floats(static_cast<size_t>(n * kD), 54);
  const std::vector<float> x0 = x;
  std::vector<float> xn(static_cast<size_t>(n * kD)), h1(static_cast<size_t>(n * kF)),
      h3(static_cast<size_t>(n * kF));
  td::GemmWorkspace ws;  // many rows: the packed GEMM, as the resync and a prefill run it
  int64_t k = 0;
  for (auto _ : state) {
    td::ffn_residual(td::rows_view(x.data(), n, kD), L, 1e-5, xn.data(), h1.data(), h3.data(), &ws);
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
    if (++k % 64 == 0) {  // keep the residual stream from growing without bound
      state.PauseTiming();
      x = x0;
      state.ResumeTiming();
    }
  }
  report_flops(state, 2.0 * 3 * static_cast<double>(n) * kF * kD);
  if (n == 1) report_bytes(state, 4.0 * 3 * kF * kD);
  state.SetItemsProcessed(n * state.iterations());  // tokens
}
BENCHMARK(BM_FfnResidual)
    ->ArgsProduct({{1, kW}, thread_counts()})
    ->ArgNames({"rows", "threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

/// LayerNorm of range(0) rows of d (detail::layer_norm).
void BM_LayerNorm(benchmark::State& state) {
  set_threads(1);
  const Index n = state.range(0);
  const std::vector<float> w = random_floats(kD, 61), b = random_floats(kD, 62);
  const std::vector<float> in = random_floats(static_cast<size_t>(n * kD), 63);
  std::vector<float> out(static_cast<size_t>(n * kD));
  for (auto _ : state) {
    td::layer_norm(td::rows_view(in.data(), n, kD), td::rows_view(out.data(), n, kD),
                   view(w, kD, 1), view(b, kD, 1), 1e-5);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report_bytes(state, 4.0 * 2 * static_cast<double>(n) * kD);
  state.SetItemsProcessed(n * state.iterations());  // tokens
}
BENCHMARK(BM_LayerNorm)->Arg(1)->Arg(kW)->ArgNames({"rows"})->UseRealTime();

/// RoPE of q and k (2d columns of a [n, 3d] qkv buffer) for range(0) rows (detail::rope),
/// at positions from 16384.
void BM_Rope(benchmark::State& state) {
  set_threads(1);
  const Index n = state.range(0);
  std::vector<double> theta;
  for (Index m = 0; m < kDh / 2; ++m) {
    theta.push_back(std::pow(10000.0, -2.0 * static_cast<double>(m) / static_cast<double>(kDh)));
  }
  std::vector<float> qkv = random_floats(static_cast<size_t>(n * 3 * kD), 71);
  for (auto _ : state) {
    td::rope(qkv.data(), 3 * kD, n, 2 * kD, kDh, kPos, theta);
    benchmark::DoNotOptimize(qkv.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(n * state.iterations());  // tokens
}
BENCHMARK(BM_Rope)->Arg(1)->Arg(kW)->ArgNames({"rows"})->UseRealTime();

}  // namespace
