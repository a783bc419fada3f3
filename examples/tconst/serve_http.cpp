// The HTTP side of tconst serve: routes, request checking, JSON replies and server-sent events.
//
// The completions API is a compatible subset of the one common clients speak: a request is a JSON
// object with `prompt` (text, or an array of token ids) and the sampling settings; the reply is one
// JSON object, or with "stream": true a stream of `data: {...}` events (one per token, whose text
// holds whole UTF-8 characters only) ended by `data: [DONE]`. Each choice also carries the token
// ids it holds (`token_ids`), which clients that do not know it ignore.
//
// Every mistake in a request gets a JSON error body, {"error": {"message", "type", "code"}}, with
// its status: 400 malformed or out-of-range input, 404 unknown session or route, 409 a session
// already generating, 413 a body over the limit, 503 (with Retry-After) when the server is full or
// stopping, 500 a session whose snapshot cannot be restored.

#include <chrono>
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

void send_error(httplib::Response& res, const HttpError& e) {
  res.status = e.status;
  if (e.status == 503) res.set_header("Retry-After", "1");
  res.set_content(error_body(e.status, e.message, e.type).dump(), "application/json");
}

// ---- Reading a completion request ---------------------------------------------------------------

struct CompletionRequest {
  bool has_prompt = false;
  std::vector<int32_t> prompt;
  tconst::GenerateOptions opt;
  bool stream = false;
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

std::vector<int32_t> read_prompt(const json& p, const ServerContext& ctx) {
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
    r.prompt = read_prompt(body["prompt"], ctx);
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

// Checks the prompt against the session it goes to.
void check_prompt(const CompletionRequest& r, const Session& s) {
  if (r.prompt.empty() && s.position() == 0) {
    throw HttpError{400, "'prompt' is empty and the session holds no tokens to continue from"};
  }
  const int64_t room = s.options().max_context - s.position();
  if (static_cast<int64_t>(r.prompt.size()) > room) {
    throw HttpError{400, "the prompt has " + std::to_string(r.prompt.size()) +
                             " tokens; the session holds " + std::to_string(s.position()) +
                             " of at most " + std::to_string(s.options().max_context) +
                             " (max_context)"};
  }
}

// ---- Replies ------------------------------------------------------------------------------------

struct Reply {
  std::string id;
  int64_t created = 0;
  int64_t prompt_tokens = 0;
};

json choice(const std::string& text, const std::vector<int32_t>& ids, const json& finish) {
  return {{"text", text},
          {"index", 0},
          {"logprobs", nullptr},
          {"finish_reason", finish},
          {"token_ids", ids}};
}

json completion_object(const ServerContext& ctx, const Reply& r, json choice_json) {
  return {{"id", r.id},
          {"object", "text_completion"},
          {"created", r.created},
          {"model", ctx.model_name},
          {"choices", json::array({std::move(choice_json)})}};
}

json usage(const Reply& r, int64_t generated) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", generated},
          {"total_tokens", r.prompt_tokens + generated}};
}

// What a generation holds while it runs: the job, and the session it uses (a named one to release
// to the store, or a private one for /v1/completions).
struct Running {
  ServerContext* ctx = nullptr;
  std::shared_ptr<Job> job;
  std::string session_id;        // named session, released at the end
  std::unique_ptr<Session> own;  // or a session of its own
  int64_t own_bytes = 0;
  Reply reply;

  ~Running() { close(); }

  // Ends the generation (cancelling it if it still runs) and gives its session back. Idempotent.
  void close() {
    if (closed) return;
    closed = true;
    if (job) {
      job->cancelled = true;  // no-op when it has ended; else it ends at its next token
      job->wait_finished();
    }
    if (!session_id.empty()) ctx->store->release(session_id);
    ctx->metrics.ephemeral_bytes -= own_bytes;
    own.reset();
  }
  bool closed = false;
};

void reply_whole(Running& run, httplib::Response& res) {
  std::vector<Piece> pieces;
  while (!run.job->take(pieces, 1000)) {
  }
  std::string text;
  std::vector<int32_t> ids;
  for (const Piece& p : pieces) {
    text += p.text;
    ids.insert(ids.end(), p.ids.begin(), p.ids.end());
  }
  const Job& job = *run.job;
  if (job.finish_reason == "error") {
    send_error(res, HttpError{500, job.error, "server_error"});
    return;
  }
  json out = completion_object(*run.ctx, run.reply, choice(text, ids, job.finish_reason));
  out["usage"] = usage(run.reply, job.generated);
  res.set_content(out.dump(), "application/json");
}

bool send_event(httplib::DataSink& sink, const std::string& data) {
  const std::string event = "data: " + data + "\n\n";
  return sink.write(event.data(), event.size());
}

void reply_stream(const std::shared_ptr<Running>& run, httplib::Response& res) {
  ++g_open_streams;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [run](size_t, httplib::DataSink& sink) {
        std::vector<Piece> pieces;
        const bool done = run->job->take(pieces, 200);
        for (const Piece& p : pieces) {
          const json chunk =
              completion_object(*run->ctx, run->reply, choice(p.text, p.ids, nullptr));
          if (!send_event(sink, chunk.dump())) {
            run->job->cancelled = true;  // the client has gone
            return false;
          }
        }
        if (!done) return true;
        run->close();  // the session is free before the client sees the end
        const Job& job = *run->job;
        json last;
        if (job.finish_reason == "error") {
          last = error_body(500, job.error, "server_error");
        } else {
          last = completion_object(*run->ctx, run->reply, choice("", {}, job.finish_reason));
          last["usage"] = usage(run->reply, job.generated);
        }
        if (!send_event(sink, last.dump()) || !send_event(sink, "[DONE]")) return false;
        sink.done();
        return true;
      },
      [run](bool) {
        run->close();  // cancels the job if it still runs, releases its session
        --g_open_streams;
      });
}

std::string next_completion_id() {
  static std::atomic<uint64_t> n{0};
  return "cmpl-" + std::to_string(static_cast<long long>(std::time(nullptr))) + "-" +
         std::to_string(++n);
}

// Runs a completion on `run` (its session set): submits the job and replies.
void complete(const std::shared_ptr<Running>& run, Session* session, CompletionRequest& r,
              httplib::Response& res) {
  ServerContext& ctx = *run->ctx;
  check_prompt(r, *session);
  auto job = std::make_shared<Job>();
  job->session = session;
  job->prompt = std::move(r.prompt);
  job->opt = r.opt;
  job->tokenizer = ctx.tokenizer.get();
  run->reply.id = next_completion_id();
  run->reply.created = static_cast<int64_t>(std::time(nullptr));
  run->reply.prompt_tokens = static_cast<int64_t>(job->prompt.size());
  ++ctx.metrics.requests;
  ctx.engine->submit(job);  // throws 503 when full
  run->job = job;
  if (r.stream) {
    reply_stream(run, res);
  } else {
    reply_whole(*run, res);
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
            res.set_content(j.dump(), "application/json");
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
             run->own = tconst::make_session(ctx.model, so);
             run->own_bytes = session_bytes(*run->own);
             ctx.metrics.ephemeral_bytes += run->own_bytes;
             complete(run, run->own.get(), r, res);
           }));
  svr.Post("/v1/sessions",
           guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
             check_running(ctx);
             parse_body(req, true);
             const std::string id = ctx.store->create();
             res.status = 201;
             res.set_content(ctx.store->describe(id).dump(), "application/json");
           }));
  svr.Get(R"(/v1/sessions/([^/]+))",
          guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
            res.set_content(ctx.store->describe(req.matches[1]).dump(), "application/json");
          }));
  svr.Delete(R"(/v1/sessions/([^/]+))",
             guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
               const std::string id = req.matches[1];
               ctx.store->remove(id);
               res.set_content(json({{"id", id}, {"deleted", true}}).dump(), "application/json");
             }));
  svr.Post(R"(/v1/sessions/([^/]+)/completions)",
           guarded(ctx, [&ctx](const httplib::Request& req, httplib::Response& res) {
             check_running(ctx);
             CompletionRequest r = read_completion(parse_body(req, false), ctx);
             const std::string id = req.matches[1];
             auto run = std::make_shared<Running>();
             run->ctx = &ctx;
             Session* session = ctx.store->acquire(id);
             run->session_id = id;  // released when `run` goes
             complete(run, session, r, res);
           }));
}

}  // namespace

bool run_http(ServerContext& ctx, const std::function<void(int port)>& on_bound) {
  httplib::Server svr;
  const size_t pool = static_cast<size_t>(ctx.opt.max_active + ctx.opt.max_queue + 8);
  svr.new_task_queue = [pool] { return new httplib::ThreadPool(pool); };
  svr.set_payload_max_length(ctx.opt.max_body_bytes);
  svr.set_tcp_nodelay(true);
  add_routes(svr, ctx);
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg =
        res.status == 404   ? "no route " + req.method + " " + req.path
        : res.status == 413 ? "the request body is too large"
                            : "malformed HTTP request (a POST needs a body, or Content-Length: 0)";
    res.set_content(
        error_body(res.status, msg, res.status >= 500 ? "server_error" : "invalid_request_error")
            .dump(),
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
