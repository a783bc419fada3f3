#pragma once
// StreamBatch<Scalar>: several TConstFormer (or TLinFormer) sessions of one model stepped together.
//
// A cache-hit step reads every weight once; S streams stepped one by one read them S times.
// StreamBatch::feed gives each session one token and runs the S cache-hit steps as one pass of
// matrix-matrix products, so the weights are read once for all of them; each stream still attends
// only to its own cache. The result equals feeding each session on its own (logits identical up
// to rounding). A StreamBatch keeps the buffers of the joint pass between calls (they grow to the
// largest batch); use one per thread.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tconst/detail/abi.hpp"
#include "tconst/detail/parallel.hpp"
#include "tconst/error.hpp"
#include "tconst/tconstformer/session.hpp"

namespace tconst {
inline namespace TCONST_ABI {

template <typename Scalar>
class StreamBatch {
 public:
  /// `threads`: the workers each feed uses, as SessionOptions::threads (0: OpenMP's count of the
  /// calling thread); the sessions' own settings do not apply to a joint step.
  explicit StreamBatch(int threads = 0) : threads_(threads) {}

  /// Feeds tokens[i] to sessions[i] for every i: equivalent to sessions[i]->feed(tokens[i]).
  /// Sessions due a resync run it first, each on its own. Every session and id is checked before
  /// any session changes; on an exception the sessions report the tokens they had before (their
  /// caches are rebuilt from their logs on next use).
  void feed(const std::vector<TConstSession<Scalar>*>& sessions,
            const std::vector<int32_t>& tokens) {
    if (sessions.size() != tokens.size()) {
      throw Error("StreamBatch::feed: " + std::to_string(sessions.size()) + " sessions but " +
                  std::to_string(tokens.size()) + " tokens");
    }
    if (sessions.empty()) return;
    const detail::WorkerLimit workers(threads_);
    const Model<Scalar>& m = sessions[0]->model();
    for (size_t i = 0; i < sessions.size(); ++i) {
      TConstSession<Scalar>& s = *sessions[i];
      if (&s.model() != &m) throw Error("StreamBatch::feed: the sessions use different models");
      for (size_t k = 0; k < i; ++k) {
        if (sessions[k] == sessions[i]) throw Error("StreamBatch::feed: a session appears twice");
      }
      s.ensure_fresh();
      s.check(&tokens[i], 1);
    }
    step_.clear();
    for (size_t i = 0; i < sessions.size(); ++i) {
      TConstSession<Scalar>& s = *sessions[i];
      const int64_t p = s.position();
      if (s.scheduler_.resync_due(p)) s.reserve_log(p + s.scheduler_.period());
      step_.schedulers.push_back(&s.scheduler_);
      step_.logs.push_back(s.log_.data());
      step_.positions.push_back(p);
      step_.tokens.push_back(tokens[i]);
    }
    Scheduler<Scalar>::joint_step(step_);
    // logits[S, V] = LN_f(x) E^T: the head, too, is read once for all streams.
    const ModelConfig& c = m.config();
    const Eigen::Index S = static_cast<Eigen::Index>(sessions.size()), V = c.vocab_size;
    if (static_cast<Eigen::Index>(logits_.size()) < S * V)
      logits_.resize(static_cast<size_t>(S * V));
    detail::linear(detail::rows_view<const Scalar>(step_.scratch.xn.data(), S, c.n_embd),
                   m.lm_head(), nullptr, detail::rows_view(logits_.data(), S, V));
    for (Eigen::Index r = 0; r < S; ++r) {
      TConstSession<Scalar>& s = *sessions[static_cast<size_t>(r)];
      s.log_.push_back(tokens[static_cast<size_t>(r)]);
      std::memcpy(s.logits_.data(), logits_.data() + r * V, sizeof(Scalar) * V);
    }
  }

 private:
  int threads_ = 0;
  detail::JointStep<Scalar> step_;     // the streams of a call and the joint pass's buffers
  detail::LineVector<Scalar> logits_;  // [S, V]
};

// The instantiations tconst::precompiled holds (detail/abi.hpp).
#if TCONST_EXTERN_TEMPLATES
extern template class StreamBatch<float>;
extern template class StreamBatch<double>;
#endif

}  // namespace TCONST_ABI
}  // namespace tconst
