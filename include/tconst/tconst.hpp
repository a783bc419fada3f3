#pragma once
// tconst: header-only streaming inference for TConstFormer, TLinFormer and a baseline Transformer.
// This umbrella header is the only one a program needs.

#include "tconst/baseline.hpp"
#include "tconst/config.hpp"
#include "tconst/context_path.hpp"
#include "tconst/error.hpp"
#include "tconst/generate.hpp"
#include "tconst/generation_path.hpp"
#include "tconst/ids.hpp"
#include "tconst/kv_cache.hpp"
#include "tconst/ops.hpp"
#include "tconst/safetensors.hpp"
#include "tconst/sampling.hpp"
#include "tconst/scheduler.hpp"
#include "tconst/session.hpp"
#include "tconst/snapshot.hpp"
#include "tconst/tokenizer/tokenizer.hpp"
#include "tconst/version.hpp"
#include "tconst/weights.hpp"
