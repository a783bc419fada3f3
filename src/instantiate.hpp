#pragma once
// The explicit instantiations of tconst::precompiled for one Scalar (TCONST_SCALAR): what the
// headers declare extern (TCONST_EXTERN_TEMPLATES) for a unit that links the library.

#include <tconst/tconst.hpp>

#if !TCONST_USE_PRECOMPILED
#error "tconst::precompiled is compiled with a configuration other than the one it declares"
#endif

namespace tconst {
template class Model<TCONST_SCALAR>;
template class SessionBase<TCONST_SCALAR>;
template class FixedKVCache<TCONST_SCALAR>;
template class ContextPath<TCONST_SCALAR>;
template class GenerationPath<TCONST_SCALAR>;
template class Scheduler<TCONST_SCALAR>;
template class TConstSession<TCONST_SCALAR>;
template class TransformerSession<TCONST_SCALAR>;
template class StreamBatch<TCONST_SCALAR>;
template class Sampler<TCONST_SCALAR>;
template std::unique_ptr<Session<TCONST_SCALAR>> make_session(
    std::shared_ptr<const Model<TCONST_SCALAR>>, SessionOptions);
template GenerateStats generate(Session<TCONST_SCALAR>&, const std::vector<int32_t>&,
                                const GenerateOptions&, const std::function<bool(int32_t)>&,
                                const Tokenizer*);
template int32_t greedy_token(const Vector<TCONST_SCALAR>&);
template void save_session(const Session<TCONST_SCALAR>&, const std::string&);
template void load_session(Session<TCONST_SCALAR>&, const std::string&);
template std::string snapshot_bytes(const Session<TCONST_SCALAR>&);
template void restore_snapshot(Session<TCONST_SCALAR>&, const uint8_t*, size_t, const std::string&);
}  // namespace tconst
