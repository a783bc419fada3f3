// The HTTP side of tconst serve: routes, request checking, JSON replies and server-sent events.
//
// The completions API is a compatible subset of the one common clients speak: a request is a JSON
// object with `prompt` (text, token ids, or a list of either: one choice each) and the sampling
// settings, `logprobs` and `echo`; the reply is one JSON object, or with "stream": true a stream of
// `data: {...}` events (one per token, whose text holds whole UTF-8 characters only) ended by
// `data: [DONE]`. Each choice also carries the token ids it holds (`token_ids`), which clients
// that do not know it ignore. Beside it: /v1/models, and the tokenizer endpoints of llama-server
// and vLLM (/tokenize, /detokenize, /tokenizer_info).
//
// Every mistake in a request gets a JSON error body, {"error": {"message", "type", "code"}}, with
// its status: 400 malformed or out-of-range input, 404 unknown session or route, 409 a session
// already generating, 413 a body over the limit, 503 (with Retry-After) when the server is full or
// stopping, 500 a session whose snapshot cannot be restored.

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <limits>

// Before httplib.h: it brings <resolv.h>, whose `_res` macro breaks Eigen's headers.
#include "serve.hpp"
// clang-format off
#include <httplib.h>
// clang-format on

namespace tconst_cli {
namespace serve {
namespace {

using nlohmann::json;

httplib::Server* g_server = nullptr;
std::atomic<int> g_open_streams{0};

json error_body(int status, const std::string& message, const std::string& type) {
  return {{"error", {{"message", message}, {"type", type}, {"code", status}}}};
}

// JSON is UTF-8: text cut short (a message quoting part of a request, a token that is part of a
// character) is written with replacement characters, never an exception.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_error(httplib::Response& res, const HttpError& e) {
  res.status = e.status;
  if (e.status == 503) res.set_header("Retry-After", "1");
  res.set_content(dump(error_body(e.status, e.message, e.type)), "application/json");
}

// ---- Reading a completion request ---------------------------------------------------------------

struct CompletionRequest {
  bool has_prompt = false;
  std::vector<std::vector<int32_t>> prompts;  // one, or a batch: one choice each
  bool batch = false;                         // `prompt` was a list of prompts
  tconst::GenerateOptions opt;
  bool stream = false;
  int logprobs = -1;  // alternatives per position; -1: no logprobs
  bool echo = false;
};

json parse_body(const httplib::Request& req, bool allow_empty) {
  if (req.body.empty() && allow_empty) return json::object();
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) throw HttpError{400, "the request body is not valid JSON"};
  if (!body.is_object()) throw HttpError{400, "the request body must be a JSON object"};
  return body;
}

double number_field(const json& body, const char* name, double fallback, double lo, double hi) {
  if (!body.contains(name) || body[name].is_null()) return fallback;
  const json& v = body[name];
  if (!v.is_number()) throw HttpError{400, std::string("'") + name + "' must be a number"};
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) {
    throw HttpError{400, std::string("'") + name + "' must be in [" + json(lo).dump() + ", " +
                             json(hi).dump() + "], got " + v.dump()};
  }
  return x;
}

int64_t integer_field(const json& body, const char* name, int64_t fallback, int64_t lo,
                      int64_t hi) {
  if (!body.contains(name) || body[name].is_null()) return fallback;
  const json& v = body[name];
  if (!v.is_number_integer()) {
    throw HttpError{400, std::string("'") + name + "' must be an integer, got " + v.dump()};
  }
  // Unsigned values past int64 and negative values both fail the range check.
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    throw HttpError{400, std::string("'") + name + "' must be in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "], got " + v.dump()};
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) {
    throw HttpError{400, std::string("'") + name + "' must be in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "], got " + v.dump()};
  }
  return x;
}

std::vector<int32_t> read_one_prompt(const json& p, const ServerContext& ctx) {
  const int64_t V = ctx.model->config().vocab_size;
  if (p.is_string()) {
    if (!ctx.tokenizer) {
      throw HttpError{400, "this model names no tokenizer: send the prompt as token ids"};
    }
    return ctx.tokenizer->encode(p.get<std::string>());
  }
  if (!p.is_array()) {
    throw HttpError{400, "'prompt' must be a string or an array of token ids"};
  }
  std::vector<int32_t> ids;
  ids.reserve(p.size());
  for (const json& v : p) {
    if (!v.is_number_integer()) {
      throw HttpError{400, "'prompt' must be a string or an array of token ids; found " +
                               v.dump().substr(0, 40)};
    }
    if (v.is_number_unsigned() ? v.get<uint64_t>() >= static_cast<uint64_t>(V)
                               : (v.get<int64_t>() < 0 || v.get<int64_t>() >= V)) {
      throw HttpError{
          400, "token id " + v.dump() + " in 'prompt' is outside [0, " + std::to_string(V) + ")"};
    }
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

// `prompt`: text, token ids, or a list of prompts (each text or token ids). Whether it is a list
// of prompts shows in its first element.
std::vector<std::vector<int32_t>> read_prompts(const json& p, const ServerContext& ctx,
                                               bool* batch) {
  *batch = p.is_array() && !p.empty() && (p[0].is_string() || p[0].is_array());
  if (!*batch) return {read_one_prompt(p, ctx)};
  const size_t most = static_cast<size_t>(ctx.opt.max_active) + ctx.opt.max_queue;
  if (p.size() > most) {
    throw HttpError{400, "'prompt' lists " + std::to_string(p.size()) + " prompts; at most " +
                             std::to_string(most) + " (--max-active + --max-queue) at once"};
  }
  std::vector<std::vector<int32_t>> out;
  for (const json& one : p) {
    if (!one.is_string() && !one.is_array()) {
      throw HttpError{400, "a list of prompts must hold strings or arrays of token ids; found " +
                               one.dump().substr(0, 40)};
    }
    out.push_back(read_one_prompt(one, ctx));
    if (out.back().empty()) {
      throw HttpError{400, "prompt " + std::to_string(out.size() - 1) + " of the list is empty"};
    }
  }
  return out;
}

std::vector<std::string> read_stops(const json& body, const ServerContext& ctx) {
  std::vector<std::string> stops;
  if (!body.contains("stop") || body["stop"].is_null()) return stops;
  const json& s = body["stop"];
  if (s.is_string()) {
    stops.push_back(s.get<std::string>());
  } else if (s.is_array()) {
    for (const json& x : s) {
      if (!x.is_string()) throw HttpError{400, "'stop' must be a string or an array of strings"};
      stops.push_back(x.get<std::string>());
    }
  } else {
    throw HttpError{400, "'stop' must be a string or an array of strings"};
  }
  for (const std::string& x : stops) {
    if (x.empty()) throw HttpError{400, "a 'stop' string must not be empty"};
  }
  if (!stops.empty() && !ctx.tokenizer) {
    throw HttpError{400, "'stop' needs a model that names its tokenizer"};
  }
  return stops;
}

CompletionRequest read_completion(const json& body, const ServerContext& ctx) {
  CompletionRequest r;
  if (body.contains("prompt") && !body["prompt"].is_null()) {
    r.has_prompt = true;
    r.prompts = read_prompts(body["prompt"], ctx, &r.batch);
  } else {
    r.prompts.emplace_back();  // a named session continues from what it holds
  }
  // OpenAI's completions: `logprobs` is how many alternatives to list per position (0 lists the
  // token's own only); `echo` puts the prompt's tokens first.
  r.logprobs = static_cast<int>(integer_field(body, "logprobs", -1, 0, 20));
  if (body.contains("echo") && !body["echo"].is_null()) {
    if (!body["echo"].is_boolean()) throw HttpError{400, "'echo' must be true or false"};
    r.echo = body["echo"].get<bool>();
  }
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean()) throw HttpError{400, "'stream' must be true or false"};
    r.stream = body["stream"].get<bool>();
  }
  if (integer_field(body, "n", 1, 1, 1) != 1) throw HttpError{400, "'n' must be 1"};
  r.opt.max_new_tokens = integer_field(body, "max_tokens", 16, 0, ctx.opt.max_context);
  tconst::SamplerConfig& s = r.opt.sampler;
  s.temperature = static_cast<float>(number_field(body, "temperature", 1.0, 0.0, 100.0));
  s.top_p = static_cast<float>(number_field(body, "top_p", 1.0, 1e-6, 1.0));
  s.top_k = static_cast<int>(integer_field(body, "top_k", 0, 0, 1 << 30));
  s.min_p = static_cast<float>(number_field(body, "min_p", 0.0, 0.0, 0.999999));
  s.repetition_penalty = static_cast<float>(number_field(body, "repeat_penalty", 1.0, 1e-3, 100.0));
  s.seed =
      static_cast<uint64_t>(integer_field(body, "seed", 0, 0, std::numeric_limits<int64_t>::max()));
  r.opt.stop_strings = read_stops(body, ctx);
  try {
    s.validate();
  } catch (const tconst::Error& e) {
    throw HttpError{400, e.what()};
  }
  return r;
}

// Checks a prompt against the session it goes to.
void check_prompt(const std::vector<int32_t>& prompt, const Session& s) {
  if (prompt.empty() && s.position() == 0) {
    throw HttpError{400, "'prompt' is empty and the session holds no tokens to continue from"};
  }
  const int64_t room = s.options().max_context - s.position();
  if (static_cast<int64_t>(prompt.size()) > room) {
    throw HttpError{400, "the prompt has " + std::to_string(prompt.size()) +
                             " tokens; the session holds " + std::to_string(s.position()) +
                             " of at most " + std::to_string(s.options().max_context) +
                             " (max_context)"};
  }
}

// ---- Replies ------------------------------------------------------------------------------------

struct Reply {
  std::string id;
  int64_t created = 0;
  int64_t prompt_tokens = 0;  // over every prompt
};

// Whether `s` is whole, valid UTF-8 (a byte-level token may hold part of a character).
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80           ? 1
                     : (c >> 5) == 0x6  ? 2
                     : (c >> 4) == 0xE  ? 3
                     : (c >> 3) == 0x1E ? 4
                                        : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// A token's text in `tokens` and as a key of `top_logprobs`: its bytes when they are whole UTF-8,
// else "bytes:" and each byte as \xNN (as OpenAI writes them), so that distinct tokens stay apart.
std::string token_text(const ServerContext& ctx, int32_t id) {
  if (!ctx.tokenizer) return "token_id:" + std::to_string(id);
  const std::string bytes = ctx.tokenizer->token_bytes(id);
  if (valid_utf8(bytes)) return bytes;
  std::string out = "bytes:";
  static const char* const kHex = "0123456789abcdef";
  for (unsigned char c : bytes) {
    out += "\\x";
    out += kHex[c >> 4];
    out += kHex[c & 0xF];
  }
  return out;
}

// Characters (code points) in a token's bytes: what text_offset counts.
int64_t characters(const ServerContext& ctx, int32_t id) {
  if (!ctx.tokenizer) return 0;
  int64_t n = 0;
  for (unsigned char c : ctx.tokenizer->token_bytes(id)) n += (c & 0xC0) != 0x80;
  return n;
}

// One choice's output so far, and what its logprobs need across pieces.
struct ChoiceState {
  std::string text;
  std::vector<int32_t> ids;
  json logprobs;       // tokens, token_logprobs, top_logprobs, text_offset (when asked)
  int64_t offset = 0;  // characters before the next token, counted from the prompt's start
  bool ended = false;  // its last event was sent (streams)
};

json empty_logprobs() {
  return {{"tokens", json::array()},
          {"token_logprobs", json::array()},
          {"top_logprobs", json::array()},
          {"text_offset", json::array()}};
}

// Appends a piece's tokens to `lp` (OpenAI's completions format). top_logprobs maps a token's text
// to its logprob; where two alternatives have the same text the likelier stays.
void add_logprobs(const ServerContext& ctx, const Piece& p, int64_t& offset, json& lp) {
  for (size_t i = 0; i < p.ids.size(); ++i) {
    const TokenLogprob& t = p.logprobs[i];
    lp["tokens"].push_back(token_text(ctx, p.ids[i]));
    lp["text_offset"].push_back(offset);
    offset += characters(ctx, p.ids[i]);
    if (!t.known) {
      lp["token_logprobs"].push_back(nullptr);
      lp["top_logprobs"].push_back(nullptr);
      continue;
    }
    lp["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const auto& [id, logprob] : t.top) {  // most likely first: the first of a text stays
      const std::string key = token_text(ctx, id);
      if (!top.contains(key)) top[key] = logprob;
    }
    lp["top_logprobs"].push_back(std::move(top));
  }
}

json choice(int index, const std::string& text, const std::vector<int32_t>& ids,
            const json& logprobs, const json& finish) {
  return {{"text", text},
          {"index", index},
          {"logprobs", logprobs},
          {"finish_reason", finish},
          {"token_ids", ids}};
}

json completion_object(const ServerContext& ctx, const Reply& r, json choices) {
  return {{"id", r.id},
          {"object", "text_completion"},
          {"created", r.created},
          {"model", ctx.model_name},
          {"choices", std::move(choices)}};
}

json usage(const Reply& r, int64_t generated) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", generated},
          {"total_tokens", r.prompt_tokens + generated}};
}

// What a request's generations hold while they run: one job per prompt, and the sessions they use
// (a named one to release to the store, or private ones for /v1/completions).
struct Running {
  ServerContext* ctx = nullptr;
  std::vector<std::shared_ptr<Job>> jobs;
  std::vector<ChoiceState> choices;
  std::string session_id;                     // named session, released at the end
  std::vector<std::unique_ptr<Session>> own;  // or sessions of their own
  int64_t own_bytes = 0;
  bool want_logprobs = false;
  std::string durable_error;  // --durable: why the turn could not be written (then not kept)
  Reply reply;

  ~Running() { close(); }

  // Ends the generations (cancelling those that still run) and gives their sessions back.
  // Idempotent.
  void close() {
    if (closed) return;
    closed = true;
    for (const auto& job : jobs) job->cancelled = true;  // no-op for ended ones
    for (const auto& job : jobs) job->wait_finished();
    if (!session_id.empty()) durable_error = ctx->store->release(session_id);
    ctx->metrics.ephemeral_bytes -= own_bytes;
    own.clear();
  }
  bool closed = false;

  int64_t generated() const {
    int64_t n = 0;
    for (const auto& job : jobs) n += job->generated;
    return n;
  }

  // A piece of choice i: appended to its state; returns the piece's own choice object.
  json add(size_t i, const Piece& p) {
    ChoiceState& c = choices[i];
    c.text += p.text;
    c.ids.insert(c.ids.end(), p.ids.begin(), p.ids.end());
    json lp = nullptr;
    if (want_logprobs) {
      lp = empty_logprobs();
      add_logprobs(*ctx, p, c.offset, lp);
      for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
        for (const json& v : lp[key]) c.logprobs[key].push_back(v);
      }
    }
    return choice(static_cast<int>(i), p.text, p.ids, lp, nullptr);
  }
};

// The socket of the connection that carries `req`: the one whose local and peer addresses are the
// request's. cpp-httplib does not hand it to a handler; -1 when it is not found.
int connection_socket(const httplib::Request& req) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (const dirent* ent = ::readdir(dir)) {
    const int fd = std::atoi(ent->d_name);
    if (fd <= 2 || fd == ::dirfd(dir)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0 ||
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) {
      continue;
    }
    char host[NI_MAXHOST], port[NI_MAXSERV], lport[NI_MAXSERV];
    if (::getnameinfo(reinterpret_cast<sockaddr*>(&peer), pl, host, sizeof host, port, sizeof port,
                      NI_NUMERICHOST | NI_NUMERICSERV) != 0 ||
        ::getnameinfo(reinterpret_cast<sockaddr*>(&local), ll, nullptr, 0, lport, sizeof lport,
                      NI_NUMERICSERV) != 0) {
      continue;
    }
    if (req.remote_addr == host && req.remote_port == std::atoi(port) &&
        req.local_port == std::atoi(lport)) {
      found = fd;
      break;
    }
  }
  ::closedir(dir);
  return found;
}

// Whether the client has closed its end of the connection (or it broke).
bool client_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

// A turn that --durable could not write: the client must not take it as done.
HttpError durable_failure(const std::string& why) {
  return HttpError{503,
                   "the turn could not be written to the session dir, so it was not kept (the "
                   "session is as before it): " +
                       why,
                   "server_error"};
}

// Waits for every choice and sends one JSON reply. A client that closes its connection meanwhile
// cancels the generations (checked every 100 ms), as a streaming client's does.
void reply_whole(Running& run, const httplib::Request& req, httplib::Response& res) {
  const int fd = connection_socket(req);
  json choices = json::array();
  for (size_t i = 0; i < run.jobs.size(); ++i) {
    Job& job = *run.jobs[i];
    std::vector<Piece> pieces;
    while (!job.take(pieces, 100)) {
      if (client_gone(fd)) {
        for (const auto& j : run.jobs) j->cancelled = true;
      }
    }
    for (const Piece& p : pieces) run.add(i, p);
    if (job.finish_reason == "error") {
      send_error(res, HttpError{500, job.error, "server_error"});
      return;
    }
    const ChoiceState& c = run.choices[i];
    choices.push_back(choice(static_cast<int>(i), c.text, c.ids,
                             run.want_logprobs ? c.logprobs : json(nullptr), job.finish_reason));
  }
  run.close();  // --durable: the turn is written before the client hears of it
  if (!run.durable_error.empty()) {
    send_error(res, durable_failure(run.durable_error));
    return;
  }
  json out = completion_object(*run.ctx, run.reply, std::move(choices));
  out["usage"] = usage(run.reply, run.generated());
  res.set_content(dump(out), "application/json");
}

bool send_event(httplib::DataSink& sink, const std::string& data) {
  const std::string event = "data: " + data + "\n\n";
  return sink.write(event.data(), event.size());
}

// Streams every choice's pieces as they come (each event names its choice's index); a choice's
// last event carries its finish_reason, and the request's last event the usage.
void reply_stream(const std::shared_ptr<Running>& run, httplib::Response& res) {
  ++g_open_streams;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [run](size_t, httplib::DataSink& sink) {
        const size_t n = run->jobs.size();
        // One job: wait on it. Several: poll them, and wait a little on the first still running.
        bool any = false;
        size_t left = 0;
        for (size_t i = 0; i < n; ++i) {
          if (run->choices[i].ended) continue;
          std::vector<Piece> pieces;
          const bool done = run->jobs[i]->take(pieces, n == 1 ? 200 : 0);
          any = any || !pieces.empty() || done;
          for (const Piece& p : pieces) {
            const json chunk = completion_object(*run->ctx, run->reply, {run->add(i, p)});
            if (!send_event(sink, dump(chunk))) {
              for (const auto& job : run->jobs) job->cancelled = true;  // the client has gone
              return false;
            }
          }
          if (!done) {
            ++left;
            continue;
          }
          run->choices[i].ended = true;
          const Job& job = *run->jobs[i];
          json last;
          if (job.finish_reason == "error") {
            last = error_body(500, job.error, "server_error");
          } else {
            last = completion_object(
                *run->ctx, run->reply,
                {choice(static_cast<int>(i), "", {}, run->want_logprobs ? empty_logprobs() : json(),
                        job.finish_reason)});
          }
          bool all_ended = true;
          for (const ChoiceState& c : run->choices) all_ended = all_ended && c.ended;
          if (all_ended) {
            run->close();  // the sessions are free before the client sees the end
            if (!run->durable_error.empty()) {
              const HttpError e = durable_failure(run->durable_error);
              last = error_body(e.status, e.message, e.type);
            } else if (job.finish_reason != "error") {
              last["usage"] = usage(run->reply, run->generated());
            }
          }
          if (!send_event(sink, dump(last))) return false;
          if (all_ended) {
            if (!send_event(sink, "[DONE]")) return false;
            sink.done();
            return true;
          }
        }
        if (!any && left > 0 && n > 1) {
          for (size_t i = 0; i < n; ++i) {
            if (!run->choices[i].ended) {
              run->jobs[i]->wait_for_output(10);
              break;
            }
          }
        }
        return true;
      },
      [run](bool) {
        run->close();  // cancels the jobs that still run, releases their sessions
        --g_open_streams;
      });
}

std::string next_completion_id() {
  static std::atomic<uint64_t> n{0};
  return "cmpl-" + std::to_string(static_cast<long long>(std::time(nullptr))) + "-" +
         std::to_string(++n);
}

// Runs a completion on `run`, one job per session of `sessions` (prompt i on session i): submits
// the jobs and replies.
void complete(const std::shared_ptr<Running>& run, const std::vector<Session*>& sessions,
              CompletionRequest& r, const httplib::Request& req, httplib::Response& res) {
  ServerContext& ctx = *run->ctx;
  for (size_t i = 0; i < sessions.size(); ++i) check_prompt(r.prompts[i], *sessions[i]);
  std::vector<std::shared_ptr<Job>> jobs;
  run->reply.id = next_completion_id();
  run->reply.created = static_cast<int64_t>(std::time(nullptr));
  run->want_logprobs = r.logprobs >= 0;
  for (size_t i = 0; i < sessions.size(); ++i) {
    auto job = std::make_shared<Job>();
    job->session = sessions[i];
    job->prompt = std::move(r.prompts[i]);
    job->opt = r.opt;
    job->tokenizer = ctx.tokenizer.get();
    job->logprobs = r.logprobs;
    job->echo = r.echo;
    run->reply.prompt_tokens += static_cast<int64_t>(job->prompt.size());
    ChoiceState c;
    c.logprobs = empty_logprobs();
    // Without echo, text_offset counts from the start of the prompt, as OpenAI's does.
    if (!r.echo) {
      for (int32_t id : job->prompt) c.offset += characters(ctx, id);
    }
    run->choices.push_back(std::move(c));
    jobs.push_back(std::move(job));
  }
  ctx.metrics.requests += static_cast<int64_t>(jobs.size());
  ctx.engine->submit(jobs);  // throws 503 when full
  run->jobs = std::move(jobs);
  if (r.stream) {
    reply_stream(run, res);
  } else {
    reply_whole(*run, req, res);
  }
}

// ---- Routes -------------------------------------------------------------------------------------

template <typename Fn>
httplib::Server::Handler guarded(ServerContext& ctx, Fn fn) {
  return [&ctx, fn](const httplib::Request& req, httplib::Response& res) {
    try {
      fn(req, res);
    } catch (const HttpError& e) {
      send_error(res, e);
    } catch (const tconst::Error& e) {
      send_error(res, HttpError{400, e.what()});
    } catch (const std::bad_alloc&) {
      send_error(res, HttpError{503, "out of memory", "server_error"});
    } catch (const std::exception& e) {
      log_line(std::string("error in ") + req.method + " " + req.path + ": " + e.what());
      send_error(res, HttpError{500, e.what(), "server_error"});
    }
    (void)ctx;
  };
}

void check_running(const ServerContext& ctx) {
  if (ctx.stopping) throw HttpError{503, "the server is shutting down", "server_error"};
}

void add_routes(httplib::Server& svr, ServerContext& ctx) {
  svr.Get("/health", guarded(ctx, [&ctx](const httplib::Request&, httplib::Response& res) {
            json j = {{"status", ctx.stopping ? "stopping" : "ok"}, {"model", ctx.model_name}};
            res.status = ctx.stopping ? 503 : 200;
            res.set_content(dump(j), "application/json");
          }));
  svr.Get("/metrics", guarded(ctx, [&ctx](const httplib::Request&, httplib::Response& res) {
            res.set_content(ctx.metrics.prometheus(), "text/plain; version=0.0.4");
          }));
  svr.Post("/v1/completions",
           guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
             check_running(ctx);
             CompletionRequest r = read_completion(parse_body(req, false), ctx);
             if (!r.has_prompt) throw HttpError{400, "'prompt' is required"};
             auto run = std::make_shared<Running>();
             run->ctx = &ctx;
             tconst::SessionOptions so;
             so.max_context = ctx.opt.max_context;
             so.compute = ctx.opt.compute;
             std::vector<Session*> sessions;
             for (size_t i = 0; i < r.prompts.size(); ++i) {
               run->own.push_back(tconst::make_session(ctx.model, so));
               const int64_t bytes = session_bytes(*run->own.back());
               run->own_bytes += bytes;
               ctx.metrics.ephemeral_bytes += bytes;
               sessions.push_back(run->own.back().get());
             }
             complete(run, sessions, r, req, res);
           }));
  svr.Get("/v1/models", guarded(ctx, [&ctx](const httplib::Request&, httplib::Response& res) {
            const json model = {{"id", ctx.model_name},
                                {"object", "model"},
                                {"created", ctx.started},
                                {"owned_by", "tconst"},
                                {"max_model_len", ctx.opt.max_context}};
            res.set_content(dump({{"object", "list"}, {"data", json::array({model})}}),
                            "application/json");
          }));
  // Both shapes of tokenizer endpoint: llama-server's (`content`) and vLLM's (`prompt`); the
  // answer uses the key the request used.
  svr.Post(
      "/tokenize", guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
        const json body = parse_body(req, false);
        const char* key = body.contains("content") ? "content" : "prompt";
        if (!body.contains(key) || !body[key].is_string()) {
          throw HttpError{400, "give the text as a string in 'content' or 'prompt'"};
        }
        const std::vector<int32_t> ids =
            read_one_prompt(body[key], ctx);  // 400 when there is no tokenizer
        res.set_content(
            dump({{"tokens", ids}, {"count", ids.size()}, {"max_model_len", ctx.opt.max_context}}),
            "application/json");
      }));
  svr.Post("/detokenize", guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
             const json body = parse_body(req, false);
             if (!body.contains("tokens") || !body["tokens"].is_array()) {
               throw HttpError{400, "give the token ids as an array in 'tokens'"};
             }
             if (!ctx.tokenizer) throw HttpError{400, "this model names no tokenizer"};
             const std::vector<int32_t> ids = body["tokens"].empty()
                                                  ? std::vector<int32_t>{}
                                                  : read_one_prompt(body["tokens"], ctx);
             const std::string text = ctx.tokenizer->decode(ids);
             // The request names no key to answer in: both are given.
             res.set_content(dump({{"content", text}, {"prompt", text}}), "application/json");
           }));
  svr.Get("/tokenizer_info", guarded(ctx, [&ctx](const httplib::Request&, httplib::Response& res) {
            if (!ctx.tokenizer) throw HttpError{404, "this model names no tokenizer"};
            const tconst::Tokenizer& tok = *ctx.tokenizer;
            // GPT-2's one special token ends (and begins) a document; the byte tokenizer has none.
            json eos = nullptr;
            const int32_t gpt2_eos = 50256;
            if (tok.name() == "gpt2" && tok.vocab_size() > gpt2_eos &&
                tok.token_bytes(gpt2_eos) == "<|endoftext|>") {
              eos = "<|endoftext|>";
            }
            res.set_content(dump({{"tokenizer_class", tok.name()},
                                  {"kind", tok.name()},
                                  {"vocab_size", tok.vocab_size()},
                                  {"model_vocab_size", ctx.model->config().vocab_size},
                                  {"eos_token", eos},
                                  {"eos_token_id", eos.is_null() ? json() : json(gpt2_eos)},
                                  {"bos_token", eos},
                                  {"bos_token_id", eos.is_null() ? json() : json(gpt2_eos)},
                                  {"max_model_len", ctx.opt.max_context}}),
                            "application/json");
          }));
  svr.Post("/v1/sessions",
           guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
             check_running(ctx);
             parse_body(req, true);
             const std::string id = ctx.store->create();
             res.status = 201;
             res.set_content(dump(ctx.store->describe(id)), "application/json");
           }));
  svr.Get(R"(/v1/sessions/([^/]+))",
          guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
            res.set_content(dump(ctx.store->describe(req.matches[1])), "application/json");
          }));
  svr.Delete(R"(/v1/sessions/([^/]+))",
             guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
               const std::string id = req.matches[1];
               ctx.store->remove(id);
               res.set_content(dump(json({{"id", id}, {"deleted", true}})), "application/json");
             }));
  svr.Post(R"(/v1/sessions/([^/]+)/completions)",
           guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
             check_running(ctx);
             CompletionRequest r = read_completion(parse_body(req, false), ctx);
             if (r.batch) throw HttpError{400, "a session takes one prompt, not a list"};
             const std::string id = req.matches[1];
             auto run = std::make_shared<Running>();
             run->ctx = &ctx;
             Session* session = ctx.store->acquire(id);
             run->session_id = id;  // released when `run` goes
             complete(run, {session}, r, req, res);
           }));
}

}  // namespace

bool run_http(ServerContext& ctx, const std::function<void(int port)>& on_bound) {
  httplib::Server svr;
  const size_t pool = static_cast<size_t>(ctx.opt.max_active + ctx.opt.max_queue + 8);
  svr.new_task_queue = [pool] { return new httplib::ThreadPool(pool); };
  svr.set_payload_max_length(ctx.opt.max_body_bytes);
  svr.set_tcp_nodelay(true);
  // cpp-httplib listens with a backlog of 5, which drops connections when many clients arrive at
  // once; the listening socket is caught here and listened on again with --backlog (Linux takes a
  // second listen() as a new backlog).
  int listen_fd = -1;
  svr.set_socket_options([&listen_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = sock;
  });
  add_routes(svr, ctx);
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg =
        res.status == 404   ? "no route " + req.method + " " + req.path
        : res.status == 413 ? "the request body is too large"
                            : "malformed HTTP request (a POST needs a body, or Content-Length: 0)";
    res.set_content(dump(error_body(res.status, msg,
                                    res.status >= 500 ? "server_error" : "invalid_request_error")),
                    "application/json");
  });
  if (!ctx.opt.quiet) {
    svr.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      log_line(req.method + " " + req.path + " " + std::to_string(res.status));
    });
  }
  int port = ctx.opt.port;
  if (port == 0) {
    port = svr.bind_to_any_port(ctx.opt.host);
    if (port < 0) return false;
  } else if (!svr.bind_to_port(ctx.opt.host, port)) {
    return false;
  }
  if (listen_fd < 0 || ::listen(listen_fd, ctx.opt.backlog) != 0) {
    log_line("cannot set the listen backlog to " + std::to_string(ctx.opt.backlog));
    return false;
  }
  g_server = &svr;
  on_bound(port);
  const bool ok = svr.listen_after_bind();
  g_server = nullptr;
  return ok;
}

int open_streams() {
  return g_open_streams;
}

void stop_http() {
  if (g_server) g_server->stop();
}

}  // namespace serve
}  // namespace tconst_cli
