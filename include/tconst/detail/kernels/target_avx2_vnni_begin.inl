// Opens a region whose functions are compiled for AVX2, FMA and AVX-VNNI; target_end.inl closes it.
// Read once per region: no include guard.
#if defined(__clang__)
// Clang counts a region that spans files as unused, though it applies it.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wpragma-clang-attribute"
#pragma clang attribute push(__attribute__((target("avx2,fma,avxvnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,avxvnni")
// GCC 12 warns about the deliberately undefined vectors inside its own vector intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
