// Closes the region that a kernels/target_<set>_begin.inl opened.
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang diagnostic pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
