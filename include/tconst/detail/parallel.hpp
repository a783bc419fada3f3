#pragma once
// The library's threads ("workers"; a "lane" is only ever a SIMD lane): how many a parallel region
// may use, and the few shapes of region the engine runs. OpenMP where the unit is compiled with it
// (the thread count of a session or batch is OpenMP's count of the calling thread, which
// WorkerLimit sets); one worker otherwise. A region inside another runs on the calling thread.
//
// Every split is over outputs (rows, columns, heads, runs of chunks), never over a sum, so the
// results have the same bits on any number of workers.

#include <Eigen/Core>
#include <algorithm>
#include <exception>

#include "tconst/detail/abi.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

using Eigen::Index;

/// Workers a parallel region started now would use (1 without OpenMP).
inline Index max_workers() noexcept {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Whether this thread runs inside a parallel region (whose kernels then stay on it).
inline bool in_parallel() noexcept {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

/// Calls f(worker, count) once on each of up to `workers` workers (count: how many run), or
/// f(0, 1) on this thread.
template <typename F>
void for_each_worker(Index workers, const F& f) {
#ifdef _OPENMP
  if (workers > 1) {
#pragma omp parallel num_threads(static_cast <int>(workers))
    f(static_cast<Index>(omp_get_thread_num()), static_cast<Index>(omp_get_num_threads()));
    return;
  }
#endif
  (void)workers;
  f(0, 1);
}

/// Calls f(i, worker) for i in [0, n), split statically over `workers` workers (worker: which one
/// runs it), or all on this thread (worker 0).
template <typename F>
void parallel_for(Index n, Index workers, const F& f) {
#ifdef _OPENMP
  if (workers > 1) {
#pragma omp parallel for num_threads(static_cast <int>(workers)) schedule(static)
    for (Index i = 0; i < n; ++i) f(i, static_cast<Index>(omp_get_thread_num()));
    return;
  }
#endif
  (void)workers;
  for (Index i = 0; i < n; ++i) f(i, 0);
}

/// parallel_for with each i handed to the next worker that comes free. An exception thrown by f
/// stops nothing else; the first one is rethrown here once every worker has finished.
template <typename F>
void parallel_for_dynamic(Index n, Index workers, const F& f) {
#ifdef _OPENMP
  if (workers > 1) {
    std::exception_ptr failed;
#pragma omp parallel for num_threads(static_cast <int>(workers)) schedule(dynamic, 1)
    for (Index i = 0; i < n; ++i) {
      try {
        f(i, static_cast<Index>(omp_get_thread_num()));
      } catch (...) {
#pragma omp critical(tconst_worker_failure)
        if (!failed) failed = std::current_exception();
      }
    }
    if (failed) std::rethrow_exception(failed);
    return;
  }
#endif
  (void)workers;
  for (Index i = 0; i < n; ++i) f(i, 0);
}

/// Rows below this many work items per worker run on one: a fork costs a few microseconds, more
/// than a small GEMV.
constexpr Index kMinRowsPerWorker = 64;

/// Calls f(r0, r1) over [0, rows) split into contiguous ranges, one per worker when there are
/// enough rows to pay for the fork; otherwise f(0, rows) once. Ranges start on a multiple of 8
/// rows, so that register blocks do not straddle them.
template <typename F>
void for_row_ranges(Index rows, const F& f) {
  const Index workers = in_parallel() ? 1 : std::min(max_workers(), rows / kMinRowsPerWorker);
  if (workers < 2) {
    f(0, rows);
    return;
  }
  parallel_for(workers, workers, [&](Index c, Index) {
    const Index r0 = rows * c / workers / 8 * 8;
    const Index r1 = c + 1 == workers ? rows : rows * (c + 1) / workers / 8 * 8;
    f(r0, r1);
  });
}

/// Multiply-adds below which a split over workers costs more (the fork) than it saves.
constexpr Index kMinSplitWork = Index{1} << 17;

/// Workers for `parts` independent parts of `work` multiply-adds each, each worker taking
/// `per_worker` scalars of a scratch buffer of `scratch_len`: 1 inside a parallel region, without
/// OpenMP, or when the work would not pay for the fork.
inline Index workers_for(Index parts, Index work, Index per_worker, Index scratch_len) noexcept {
  if (in_parallel() || parts * work < kMinSplitWork || per_worker <= 0) return 1;
  return std::max<Index>(1, std::min({max_workers(), parts, scratch_len / per_worker}));
}

/// Sets how many workers this thread's parallel regions use while it lives (0: leave OpenMP's
/// count as it is), and restores the count after. A session or batch holds one for each call, so
/// engines on different threads can each have their own count.
class WorkerLimit {
 public:
  explicit WorkerLimit(int workers) noexcept {
#ifdef _OPENMP
    if (workers > 0 && !omp_in_parallel()) {
      saved_ = omp_get_max_threads();
      omp_set_num_threads(workers);
    }
#else
    (void)workers;
#endif
  }
  ~WorkerLimit() {
#ifdef _OPENMP
    if (saved_ > 0) omp_set_num_threads(saved_);
#endif
  }
  WorkerLimit(const WorkerLimit&) = delete;
  WorkerLimit& operator=(const WorkerLimit&) = delete;

 private:
  int saved_ = 0;
};

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
