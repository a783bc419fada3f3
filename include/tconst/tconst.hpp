#pragma once
// tconst: header-only streaming inference for TConstFormer, TLinFormer and a baseline Transformer.
// This umbrella header is the only one a program needs. It brings the public API: models
// (model.hpp), sessions and make_session(), several streams stepped together (batch.hpp),
// generation and sampling, snapshots, tokenizers. What lives in detail/ and in tconst::detail is
// the library's machinery, not for programs to call; synthetic.hpp (random models of a shape, for
// benchmarks and tests) is included by the programs that use it.

#include "tconst/config.hpp"
#include "tconst/cpu.hpp"
#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/generate.hpp"
#include "tconst/ids.hpp"
#include "tconst/make_session.hpp"
#include "tconst/model.hpp"
#include "tconst/sampling.hpp"
#include "tconst/session.hpp"
#include "tconst/snapshot.hpp"
#include "tconst/tokenizer/tokenizer.hpp"
#include "tconst/version.hpp"

// A unit that links tconst::precompiled gets the API above, whose definitions are in the library,
// and includes these itself where it uses them (they compile in any unit):
#if TCONST_DEFINITIONS
#include "tconst/batch.hpp"                 // StreamBatch
#include "tconst/model/quantize.hpp"        // quantize_model, the reference quantizer
#include "tconst/tconstformer/session.hpp"  // TConstSession (TConstFormer, TLinFormer)
#include "tconst/transformer/session.hpp"   // TransformerSession
#endif
