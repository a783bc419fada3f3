#pragma once
// Zero-initialised storage for the large arrays a step streams through: the fixed cache, a model's
// weights held in memory. On Linux a buffer of 2 MiB or more is mapped anonymously and advised to
// use transparent huge pages before anything touches it, so that the kernel backs it with 2 MiB
// pages where it can: a step then walks one page table entry per 2 MiB instead of per 4 KiB, and
// the hardware prefetchers, which stop at page boundaries, run on. Elsewhere, or when the advice
// is refused, it is ordinary memory; the contents are the same either way.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#define TCONST_HAVE_HUGE_PAGES 1
#else
#define TCONST_HAVE_HUGE_PAGES 0
#endif

namespace tconst {
inline namespace TCONST_ABI {
namespace detail {

/// `count` zeroed T (T trivially copyable), allocated once; move-only.
template <typename T>
class BigBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "BigBuffer holds plain data");

 public:
  /// Buffers from this many bytes on are mapped with the huge-page advice.
  static constexpr size_t kHugeFrom = size_t{2} << 20;
  /// Every buffer starts on a cache line (a mapping on a page).
  static constexpr size_t kAlign = 64;

  BigBuffer() = default;
  /// Throws Error naming `what` and the bytes when the memory cannot be had.
  BigBuffer(size_t count, const char* what) : count_(count) {
    if (count == 0) return;
    if (count > SIZE_MAX / sizeof(T)) throw Error(std::string(what) + " is too large to allocate");
    const size_t bytes = count * sizeof(T);
#if TCONST_HAVE_HUGE_PAGES
    if (bytes >= kHugeFrom && bytes <= SIZE_MAX - 2 * kHugeFrom) {
      // Map 2 MiB more than needed, keep the part that starts on a 2 MiB boundary (huge pages
      // only back whole aligned 2 MiB ranges) and give back the rest: the buffer holds its bytes
      // rounded up to a page, not to 2 MiB.
      constexpr size_t kPage = 4096;
      const size_t len = (bytes + kPage - 1) / kPage * kPage;
      const size_t span = len + kHugeFrom;
      void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) fail(what, count);
      const uintptr_t at = reinterpret_cast<uintptr_t>(p);
      const uintptr_t start = (at + kHugeFrom - 1) / kHugeFrom * kHugeFrom;
      if (start > at) ::munmap(p, start - at);
      if (at + span > start + len)
        ::munmap(reinterpret_cast<void*>(start + len), at + span - start - len);
      void* q = reinterpret_cast<void*>(start);
#if defined(MADV_HUGEPAGE)
      (void)::madvise(q, len, MADV_HUGEPAGE);  // advice only: refusal changes nothing
#endif
      data_ = static_cast<T*>(q);
      mapped_bytes_ = len;
      // Touched now, so that no step ever takes the page faults.
      std::memset(q, 0, len);
      return;
    }
#endif
    try {
      data_ = static_cast<T*>(::operator new[](bytes, std::align_val_t(kAlign)));
    } catch (const std::bad_alloc&) {
      fail(what, count);
    }
    std::memset(static_cast<void*>(data_), 0, bytes);
  }
  BigBuffer(const BigBuffer&) = delete;
  BigBuffer& operator=(const BigBuffer&) = delete;
  BigBuffer(BigBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        count_(std::exchange(o.count_, 0)),
        mapped_bytes_(std::exchange(o.mapped_bytes_, 0)) {}
  BigBuffer& operator=(BigBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      count_ = std::exchange(o.count_, 0);
      mapped_bytes_ = std::exchange(o.mapped_bytes_, 0);
    }
    return *this;
  }
  ~BigBuffer() {
    release();
  }

  T* data() noexcept {
    return data_;
  }
  const T* data() const noexcept {
    return data_;
  }
  size_t size() const noexcept {
    return count_;
  }

 private:
  [[noreturn]] static void fail(const char* what, size_t count) {
    throw Error(std::string("cannot allocate ") + what + " of " +
                std::to_string(static_cast<uint64_t>(count) * sizeof(T)) + " bytes");
  }
  void release() noexcept {
#if TCONST_HAVE_HUGE_PAGES
    if (mapped_bytes_ > 0) {
      ::munmap(data_, mapped_bytes_);
      data_ = nullptr;
      mapped_bytes_ = 0;
      return;
    }
#endif
    if (data_ != nullptr) ::operator delete[](static_cast<void*>(data_), std::align_val_t(kAlign));
    data_ = nullptr;
  }

  T* data_ = nullptr;
  size_t count_ = 0;
  size_t mapped_bytes_ = 0;  // > 0: data_ is an anonymous mapping of this many bytes
};

/// std::allocator with every block on a cache line (for scratch rows that vector loads read).
template <typename T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <typename U>
  LineAllocator(const LineAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > SIZE_MAX / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, size_t) noexcept { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const LineAllocator<U>&) const noexcept {
    return true;
  }
  template <typename U>
  bool operator!=(const LineAllocator<U>&) const noexcept {
    return false;
  }
};

/// A std::vector whose data starts on a cache line.
template <typename T>
using LineVector = std::vector<T, LineAllocator<T>>;

/// Grows v to at least n entries (never shrinks); returns its data.
template <typename T>
T* at_least(LineVector<T>& v, std::ptrdiff_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  return v.data();
}

}  // namespace detail
}  // namespace TCONST_ABI
}  // namespace tconst
