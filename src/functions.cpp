// tconst::precompiled: the non-template functions that a precompiled unit sees declared only
// (TCONST_FUNCTION, detail/abi.hpp).
#define TCONST_FUNCTION_UNIT 1
#include <tconst/tconst.hpp>

#if !TCONST_USE_PRECOMPILED
#error "tconst::precompiled is compiled with a configuration other than the one it declares"
#endif
