#pragma once
// tconst: header-only streaming inference for TConstFormer, TLinFormer and a baseline Transformer.
// This umbrella header is the only one a program needs. It brings the public API: models
// (model.hpp), sessions and make_session(), several streams stepped together (batch.hpp),
// generation and sampling, snapshots, tokenizers, synthetic models for benchmarks. What lives in
// detail/ and in tconst::detail is the library's machinery, not for programs to call.

#include "tconst/batch.hpp"
#include "tconst/config.hpp"
#include "tconst/cpu.hpp"
#include "tconst/error.hpp"
#include "tconst/generate.hpp"
#include "tconst/ids.hpp"
#include "tconst/make_session.hpp"
#include "tconst/model.hpp"
#include "tconst/model/quantize.hpp"
#include "tconst/sampling.hpp"
#include "tconst/session.hpp"
#include "tconst/snapshot.hpp"
#include "tconst/synthetic.hpp"
#include "tconst/tconstformer/session.hpp"
#include "tconst/tokenizer/tokenizer.hpp"
#include "tconst/transformer/session.hpp"
#include "tconst/version.hpp"
