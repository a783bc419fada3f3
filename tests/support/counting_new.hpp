#pragma once
// Replaces the global operator new/delete with versions that count allocations, so a test can
// assert that a code path allocates nothing. Include in exactly one source file of a test program.

#include <atomic>
#include <cstdlib>
#include <new>

namespace tconst_test {
inline std::atomic<long> g_heap_allocations{0};
/// Heap allocations made through operator new since the program started.
inline long heap_allocations() {
  return g_heap_allocations.load(std::memory_order_relaxed);
}
}  // namespace tconst_test

// None of these is inlined: GCC would otherwise see free() applied to the result of a
// new-expression (or operator delete to that of malloc) and warn, -Wmismatched-new-delete.
[[gnu::noinline]] void* operator new(std::size_t size) {
  tconst_test::g_heap_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t size) {
  return ::operator new(size);
}
[[gnu::noinline]] void operator delete(void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
// The over-aligned forms (the library's cache-line buffers use them) count too.
[[gnu::noinline]] void* operator new(std::size_t size, std::align_val_t al) {
  tconst_test::g_heap_allocations.fetch_add(1, std::memory_order_relaxed);
  const std::size_t a = static_cast<std::size_t>(al);
  const std::size_t rounded = ((size == 0 ? 1 : size) + a - 1) / a * a;
  if (void* p = std::aligned_alloc(a, rounded)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t size, std::align_val_t al) {
  return ::operator new(size, al);
}
[[gnu::noinline]] void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
