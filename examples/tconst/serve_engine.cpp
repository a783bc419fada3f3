// Engine: the serving loop.
//
// One worker thread owns every generating session between its steps. Each turn it samples the
// next token of every ready generation (tconst::Sampler, exactly as tconst::generate() does: the
// same seed gives the same tokens as `tconst generate`), hands it to the client, then feeds all of
// those tokens in one StreamBatch step, which reads the weights once for all of them.
//
// Work whose cost grows with the stream never runs on the worker: a prompt's prefill and a step
// that is due a resync (position p > 0 with p mod W = 0, an O(p) pass over the history) go to a
// side thread with its own OpenMP threads, and the generation rejoins the joint steps when it is
// done. So a resync delays only its own stream; the others keep stepping. A baseline Transformer
// session (no StreamBatch; every step grows with the stream) is fed on its own by the worker.
//
// Every token handed to a client is fed to its session before the generation ends, whatever ends
// it (the budget, a stop, a cancelled client, a shutdown), so a session always holds exactly what
// its clients were sent and a later request continues from there (as tconst::generate() does).

#include <algorithm>
#include <chrono>
#include <cmath>

#include "commands.hpp"
#include "serve.hpp"
#include "tconst/batch.hpp"

namespace tconst_cli {
namespace serve {
namespace {

tconst::TConstSession<float>* as_tconst(Session* s) {
  return dynamic_cast<tconst::TConstSession<float>*>(s);
}

// Whether feeding the next token runs a resync (SPEC §5).
bool resync_due(const Session& s) {
  const int64_t p = s.position();
  const int64_t W = s.model().config().generate_window;
  return !s.model().config().is_baseline() && p > 0 && W > 0 && p % W == 0;
}

}  // namespace

TokenLogprob token_logprob(const tconst::Vector<float>& logits, int32_t id, int top_n) {
  // In double: the sum of exponentials over a large vocabulary keeps its digits.
  const Eigen::Index V = logits.size();
  const double mx = static_cast<double>(logits.maxCoeff());
  double sum = 0.0;
  for (Eigen::Index v = 0; v < V; ++v) sum += std::exp(static_cast<double>(logits[v]) - mx);
  const double lse = mx + std::log(sum);
  TokenLogprob out;
  out.known = true;
  out.logprob = static_cast<double>(logits[id]) - lse;
  const int n = static_cast<int>(std::min<Eigen::Index>(top_n, V));
  if (n > 0) {
    std::vector<int32_t> order(static_cast<size_t>(V));
    for (Eigen::Index v = 0; v < V; ++v) order[static_cast<size_t>(v)] = static_cast<int32_t>(v);
    std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int i = 0; i < n; ++i) {
      const int32_t t = order[static_cast<size_t>(i)];
      out.top.emplace_back(t, static_cast<double>(logits[t]) - lse);
    }
  }
  return out;
}

// ---- Job ----------------------------------------------------------------------------------------

void Job::emit(int32_t id, TokenLogprob lp) {
  Piece piece;
  piece.ids.push_back(id);
  if (logprobs >= 0) piece.logprobs.push_back(std::move(lp));
  if (decoder_) piece.text = decoder_->push(id);
  std::lock_guard<std::mutex> lock(mu_);
  out_.push_back(std::move(piece));
  cv_.notify_all();
}

void Job::finish(const std::string& reason, const std::string& err) {
  Piece rest;
  if (decoder_) rest.text = decoder_->flush();
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  if (!rest.text.empty()) out_.push_back(std::move(rest));
  finish_reason = reason;
  error = err;
  finished_ = true;
  phase_ = Phase::kDone;
  cv_.notify_all();
}

// Consumes the prompt into `s` and, with echo, hands its tokens to the client first: with logprobs,
// each from the logits before it (score() gives every position's; the first token of an empty
// session has none).
void Job::emit_prompt(Session& s) {
  if (!echo) {
    s.prefill(prompt);
    return;
  }
  Piece piece;
  piece.echo = true;
  piece.ids = prompt;
  if (tokenizer) {
    tconst::StreamDecoder d(*tokenizer);
    for (int32_t id : prompt) piece.text += d.push(id);
    piece.text += d.flush();
  }
  if (logprobs >= 0) {
    piece.logprobs.resize(prompt.size());
    if (s.position() > 0) piece.logprobs[0] = token_logprob(s.logits(), prompt[0], logprobs);
    s.score(prompt.data(), prompt.size(), [&](size_t i, const tconst::Vector<float>& logits) {
      if (i + 1 < prompt.size())
        piece.logprobs[i + 1] = token_logprob(logits, prompt[i + 1], logprobs);
    });
  } else {
    s.prefill(prompt);
  }
  std::lock_guard<std::mutex> lock(mu_);
  out_.push_back(std::move(piece));
  cv_.notify_all();
}

bool Job::take(std::vector<Piece>& out, int wait_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(wait_ms),
               [&] { return !out_.empty() || finished_; });
  for (Piece& p : out_) out.push_back(std::move(p));
  out_.clear();
  return finished_;
}

void Job::wait_for_output(int wait_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(wait_ms),
               [&] { return !out_.empty() || finished_; });
}

void Job::wait_finished() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return finished_; });
}

// ---- Engine -------------------------------------------------------------------------------------

Engine::Engine(const ServeOptions& opt, Metrics& metrics) : opt_(opt), metrics_(metrics) {
  worker_ = std::thread([this] { worker(); });
  side_ = std::thread([this] { side_worker(); });
}

Engine::~Engine() {
  shutdown();
}

void Engine::submit(const std::vector<std::shared_ptr<Job>>& jobs) {
  for (const auto& job : jobs) {
    job->sampler_ = std::make_unique<tconst::Sampler<float>>(job->opt.sampler);
    if (job->tokenizer) job->decoder_ = std::make_unique<tconst::StreamDecoder>(*job->tokenizer);
    for (const std::string& s : job->opt.stop_strings)
      job->longest_stop_ = std::max(job->longest_stop_, s.size());
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) throw HttpError{503, "the server is shutting down", "server_error"};
  if (active_.size() + queue_.size() + jobs.size() >
      static_cast<size_t>(opt_.max_active) + static_cast<size_t>(opt_.max_queue)) {
    ++metrics_.rejected;
    throw HttpError{503,
                    "the server is busy: " + std::to_string(opt_.max_active) +
                        " generations running and " + std::to_string(opt_.max_queue) + " waiting",
                    "server_error"};
  }
  for (const auto& job : jobs) queue_.push_back(job);
  metrics_.queued = static_cast<int64_t>(queue_.size());
  cv_.notify_all();
}

void Engine::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  side_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  side_cv_.notify_all();  // the worker has ended every job: the side thread may end too
  if (side_.joinable()) side_.join();
}

// The job's next token: sampled, handed to the client, left in pending_ to be fed. False when the
// job ended instead (nothing pending).
bool Engine::sample_next(Job& job) {
  Session& s = *job.session;
  if (job.cancelled) {
    ++metrics_.cancelled;
    job.finish("cancelled");
    return false;
  }
  if (job.generated >= job.opt.max_new_tokens || s.position() >= s.options().max_context) {
    job.finish("length");
    return false;
  }
  int32_t id;
  try {
    id = job.sampler_->sample(s.logits(), s.tokens());
    if (job.longest_stop_ > 0) {
      job.tail_ += job.tokenizer->token_bytes(id);
      for (const std::string& stop : job.opt.stop_strings) {
        if (job.tail_.find(stop) != std::string::npos) job.stop_reason_ = "stop";
      }
      if (job.tail_.size() >= job.longest_stop_)
        job.tail_.erase(0, job.tail_.size() - (job.longest_stop_ - 1));
    }
  } catch (const std::exception& e) {
    job.finish("error", e.what());
    return false;
  }
  if (std::find(job.opt.stop_ids.begin(), job.opt.stop_ids.end(), id) != job.opt.stop_ids.end())
    job.stop_reason_ = "stop";
  ++job.generated;
  job.emit(id, job.logprobs >= 0 ? token_logprob(s.logits(), id, job.logprobs) : TokenLogprob{});
  job.pending_ = id;
  return true;
}

// After the pending token was fed: the job ends (stop or budget) or is ready for the next token.
void Engine::after_feed(Job& job) {
  job.pending_ = -1;
  ++metrics_.tokens_generated;
  if (!job.stop_reason_.empty()) {
    job.finish(job.stop_reason_);
  } else if (job.generated >= job.opt.max_new_tokens) {
    job.finish("length");
  }
}

// Feeds the pending tokens of `fed` (cache-hit steps of TConstFormer sessions) in one joint step.
void Engine::step(std::vector<std::shared_ptr<Job>>& fed) {
  if (fed.empty()) return;
  std::vector<tconst::TConstSession<float>*> sessions;
  std::vector<int32_t> tokens;
  for (const auto& j : fed) {
    sessions.push_back(as_tconst(j->session));
    tokens.push_back(j->pending_);
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    batch_.feed(sessions, tokens);
  } catch (const std::exception& e) {
    // Cannot happen for checked ids within max_context; if it does, no session has changed.
    for (const auto& j : fed) j->finish("error", e.what());
    return;
  }
  metrics_.observe_step(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  for (const auto& j : fed) after_feed(*j);
}

void Engine::worker() {
  set_thread_count(opt_.threads);
  std::vector<std::shared_ptr<Job>> ready, fed, heavy;
  for (;;) {
    ready.clear();
    {
      std::unique_lock<std::mutex> lock(mu_);
      for (;;) {
        active_.erase(std::remove_if(active_.begin(), active_.end(),
                                     [](const auto& j) { return j->phase_ == Job::Phase::kDone; }),
                      active_.end());
        while (stopping_ && !queue_.empty()) {
          queue_.front()->finish("shutdown");
          queue_.pop_front();
        }
        while (static_cast<int>(active_.size()) < opt_.max_active && !queue_.empty()) {
          std::shared_ptr<Job> job = queue_.front();
          queue_.pop_front();
          job->phase_ = Job::Phase::kHeavy;  // its prefill runs beside the joint steps
          job->pending_ = -1;
          heavy_.push_back(job);
          active_.push_back(job);
          side_cv_.notify_all();
        }
        metrics_.queued = static_cast<int64_t>(queue_.size());
        metrics_.active = static_cast<int64_t>(active_.size());
        for (const auto& j : active_) {
          if (j->phase_ != Job::Phase::kReady) continue;
          if (stopping_) {
            j->finish("shutdown");
          } else {
            ready.push_back(j);
          }
        }
        if (!ready.empty()) break;
        active_.erase(std::remove_if(active_.begin(), active_.end(),
                                     [](const auto& j) { return j->phase_ == Job::Phase::kDone; }),
                      active_.end());
        if (stopping_ && active_.empty()) return;
        cv_.wait(lock);
      }
    }
    fed.clear();
    heavy.clear();
    // Each job has its own sampler, decoder and output, so their tokens are drawn in parallel: at
    // the paper's vocabulary a draw is a few hundred microseconds, which adds up over many streams.
    sampled_.assign(ready.size(), 0);
    const int n_ready = static_cast<int>(ready.size());
#pragma omp parallel for schedule(dynamic) if (n_ready > 1)
    for (int i = 0; i < n_ready; ++i) {
      try {
        sampled_[static_cast<size_t>(i)] = sample_next(*ready[static_cast<size_t>(i)]) ? 1 : 0;
      } catch (const std::exception& e) {  // only an allocation can throw past sample_next
        ready[static_cast<size_t>(i)]->finish("error", e.what());
      }
    }
    for (size_t i = 0; i < ready.size(); ++i) {
      const auto& j = ready[i];
      if (!sampled_[i]) continue;
      if (as_tconst(j->session) == nullptr) {
        try {
          j->session->feed(j->pending_);
          after_feed(*j);
        } catch (const std::exception& e) {
          j->finish("error", e.what());
        }
      } else if (resync_due(*j->session)) {
        heavy.push_back(j);
      } else {
        fed.push_back(j);
      }
    }
    if (!heavy.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& j : heavy) {
        j->phase_ = Job::Phase::kHeavy;
        resyncs_.push_back(j);
      }
      side_cv_.notify_all();
    }
    step(fed);
  }
}

// Prefills and resync steps, one at a time, beside the worker's joint steps.
void Engine::side_worker() {
  set_thread_count(opt_.side_threads);
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      side_cv_.wait(lock, [&] {
        return !resyncs_.empty() || !heavy_.empty() || (stopping_ && active_.empty());
      });
      // A resync stalls a stream that is already talking to its client; a prefill only delays a
      // new request's first token. So resyncs go first.
      std::deque<std::shared_ptr<Job>>& from = !resyncs_.empty() ? resyncs_ : heavy_;
      if (from.empty()) return;
      job = from.front();
      from.pop_front();
    }
    Session& s = *job->session;
    const int64_t resyncs = s.resync_count();
    try {
      if (job->pending_ >= 0) {
        s.feed(job->pending_);  // a token already sent: fed even when stopping
        after_feed(*job);
      } else if (!job->prompt.empty()) {
        if (job->cancelled || stopping_) {
          job->finish(job->cancelled ? "cancelled" : "shutdown");
        } else {
          job->emit_prompt(s);
          metrics_.prompt_tokens += static_cast<int64_t>(job->prompt.size());
        }
      }
    } catch (const std::exception& e) {
      job->finish("error", e.what());
    }
    metrics_.resyncs += s.resync_count() - resyncs;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (job->phase_ != Job::Phase::kDone) job->phase_ = Job::Phase::kReady;
    }
    cv_.notify_all();
  }
}

}  // namespace serve
}  // namespace tconst_cli
