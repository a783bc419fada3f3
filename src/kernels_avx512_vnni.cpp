// The avx512_vnni row of the kernel table, compiled once for tconst::precompiled.
#define TCONST_KERNEL_UNIT 1
#include "tconst/detail/kernels/avx512_vnni.hpp"

#if !TCONST_USE_PRECOMPILED
#error "tconst::precompiled is compiled with a configuration other than the one it declares"
#endif
