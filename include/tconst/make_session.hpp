#pragma once
// make_session(): the session for a model's architecture, so that a program swaps architectures
// by swapping model files.

#include <memory>

#include "tconst/detail/abi.hpp"
#include "tconst/error.hpp"
#include "tconst/session.hpp"
#if TCONST_DEFINITIONS
#include "tconst/tconstformer/session.hpp"
#include "tconst/transformer/session.hpp"
#endif

namespace tconst {
inline namespace TCONST_ABI {

/// TConstSession for TConstFormer and TLinFormer models, TransformerSession for the baseline.
template <typename Scalar>
std::unique_ptr<Session<Scalar>> make_session(std::shared_ptr<const Model<Scalar>> model,
                                              SessionOptions options = {});

#if TCONST_DEFINITIONS
template <typename Scalar>
std::unique_ptr<Session<Scalar>> make_session(std::shared_ptr<const Model<Scalar>> model,
                                              SessionOptions options) {
  if (!model) throw Error("make_session needs a model");
  if (model->config().is_baseline()) {
    return std::make_unique<TransformerSession<Scalar>>(std::move(model), options);
  }
  return std::make_unique<TConstSession<Scalar>>(std::move(model), options);
}
#endif

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template std::unique_ptr<Session<float>> make_session(std::shared_ptr<const Model<float>>,
                                                             SessionOptions);
extern template std::unique_ptr<Session<double>> make_session(std::shared_ptr<const Model<double>>,
                                                              SessionOptions);
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
