#pragma once
// make_session(): the session for a model's architecture, so that a program swaps architectures
// by swapping model files.

#include <memory>

#include "tconst/error.hpp"
#include "tconst/session.hpp"
#include "tconst/tconstformer/session.hpp"
#include "tconst/transformer/session.hpp"

namespace tconst {

/// TConstSession for TConstFormer and TLinFormer models, TransformerSession for the baseline.
template <typename Scalar>
std::unique_ptr<Session<Scalar>> make_session(std::shared_ptr<const Model<Scalar>> model,
                                              SessionOptions options = {}) {
  if (!model) throw Error("make_session needs a model");
  if (model->config().is_baseline()) {
    return std::make_unique<TransformerSession<Scalar>>(std::move(model), options);
  }
  return std::make_unique<TConstSession<Scalar>>(std::move(model), options);
}

}  // namespace tconst
