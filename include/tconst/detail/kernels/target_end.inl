// Closes the region that target_avx512_begin.inl or target_avx2_begin.inl opened.
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang diagnostic pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
