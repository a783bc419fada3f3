// tconst::precompiled: the engine in float.
#define TCONST_SCALAR float
#include "instantiate.hpp"
