// tconst::precompiled: the engine in double.
#define TCONST_SCALAR double
#include "instantiate.hpp"
