// The `tconst` Python module: models, streaming sessions, generation, snapshots, tokenizers and
// StreamBatch of the header-only engine, with logits as numpy arrays.
//
// Every Python value is checked here before it reaches the engine, so that a wrong type or value
// is a tconst.Error (a ValueError) naming the argument, as the engine's own errors are. Calls that
// run the model release the GIL; a session or StreamBatch used from two threads at once raises
// tconst.Error instead of racing. Logits are copied once, from the engine's buffer (which the next
// call overwrites) into a numpy array allocated for the caller.

#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "tconst/batch.hpp"
#include "tconst/synthetic.hpp"
#include "tconst/tconst.hpp"
#include "tconst/tokenizer/embedded.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

using tconst::Error;

// ---------------------------------------------------------------------------------------------
// Arguments: Python values to C++ ones, with a tconst.Error naming the argument on a mismatch.

std::string type_name(py::handle obj) {
  return Py_TYPE(obj.ptr())->tp_name;
}

// The UTF-8 of a str; a str that has none (a lone surrogate) is an Error, not a crash.
std::string utf8_of(py::handle str, const std::string& what) {
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(str.ptr(), &size);
  if (data == nullptr) {
    PyErr_Clear();
    throw Error(what + " is not valid Unicode (it cannot be encoded as UTF-8)");
  }
  return std::string(data, static_cast<size_t>(size));
}

// An int, or anything with __index__ (numpy integers); bool is refused.
int64_t int_arg(py::handle obj, const std::string& what) {
  if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr())) {
    throw Error(what + " must be an integer, got " + type_name(obj));
  }
  const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0) throw Error(what + " is out of range: " + std::string(py::str(obj)));
  if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

double float_arg(py::handle obj, const std::string& what) {
  if (PyBool_Check(obj.ptr()) || !(PyFloat_Check(obj.ptr()) || PyIndex_Check(obj.ptr()))) {
    throw Error(what + " must be a number, got " + type_name(obj));
  }
  const double v = PyFloat_AsDouble(obj.ptr());
  if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

// A token id in [0, vocab); the engine checks the range too, with the same message.
int32_t id_arg(py::handle obj, int64_t vocab, const std::string& what) {
  const int64_t v = int_arg(obj, what);
  if (v < 0 || v >= vocab) {
    throw Error("token id " + std::to_string(v) + " is outside [0, " + std::to_string(vocab) + ")");
  }
  return static_cast<int32_t>(v);
}

// Token ids: a sequence of ints or a 1-D numpy integer array.
std::vector<int32_t> ids_arg(py::handle obj, int64_t vocab, const std::string& what) {
  if (PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr())) {
    throw Error(what + " must be a sequence of token ids, got " + type_name(obj) +
                " (encode text with a Tokenizer first)");
  }
  std::vector<int32_t> ids;
  if (py::isinstance<py::array>(obj)) {
    const py::array a = py::reinterpret_borrow<py::array>(obj);
    const char kind = a.dtype().kind();
    if ((kind != 'i' && kind != 'u') || a.ndim() != 1) {
      throw Error(what + " must be a 1-D integer array, got a " + std::to_string(a.ndim()) +
                  "-D array of dtype " + std::string(py::str(a.dtype())));
    }
    const auto wide = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!wide) throw py::error_already_set();
    const int64_t* p = wide.data();
    ids.resize(static_cast<size_t>(wide.size()));
    for (size_t i = 0; i < ids.size(); ++i) {
      if (p[i] < 0 || p[i] >= vocab) {
        throw Error("token id " + std::to_string(p[i]) + " is outside [0, " +
                    std::to_string(vocab) + ")");
      }
      ids[i] = static_cast<int32_t>(p[i]);
    }
    return ids;
  }
  if (!PySequence_Check(obj.ptr())) {
    throw Error(what + " must be a sequence of token ids, got " + type_name(obj));
  }
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  ids.reserve(seq.size());
  for (size_t i = 0; i < seq.size(); ++i) {
    ids.push_back(id_arg(seq[i], vocab, what + "[" + std::to_string(i) + "]"));
  }
  return ids;
}

// A file path: str or os.PathLike.
std::string path_arg(py::handle obj, const std::string& what) {
  if (!PyUnicode_Check(obj.ptr()) && !py::hasattr(obj, "__fspath__")) {
    throw Error(what + " must be a path (str or os.PathLike), got " + type_name(obj));
  }
  const py::object path = py::module_::import("os").attr("fspath")(obj);
  if (!PyUnicode_Check(path.ptr())) {
    throw Error(what + " must be a str path, got " + type_name(path));
  }
  return utf8_of(path, what);
}

// Text for a tokenizer: str (encoded as UTF-8) or bytes (as they are).
std::string text_arg(py::handle obj, const std::string& what) {
  if (PyBytes_Check(obj.ptr()))
    return std::string(py::bytes(py::reinterpret_borrow<py::bytes>(obj)));
  if (!PyUnicode_Check(obj.ptr())) {
    throw Error(what + " must be str or bytes, got " + type_name(obj));
  }
  return utf8_of(obj, what);
}

// None, one str, or a sequence of str.
std::vector<std::string> strings_arg(py::handle obj, const std::string& what) {
  std::vector<std::string> out;
  if (obj.is_none()) return out;
  if (PyUnicode_Check(obj.ptr())) return {utf8_of(obj, what)};
  if (!PySequence_Check(obj.ptr()) || PyBytes_Check(obj.ptr())) {
    throw Error(what + " must be a str or a sequence of str, got " + type_name(obj));
  }
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  for (size_t i = 0; i < seq.size(); ++i) {
    const py::object s = seq[i];
    if (!PyUnicode_Check(s.ptr())) {
      throw Error(what + "[" + std::to_string(i) + "] must be a str, got " + type_name(s));
    }
    out.push_back(utf8_of(s, what + "[" + std::to_string(i) + "]"));
  }
  return out;
}

// Bytes as str, ill-formed UTF-8 replaced by U+FFFD (a token can end inside a character).
py::str utf8_str(const std::string& s) {
  PyObject* u = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (u == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(u);
}

// Token ids as a Python list.
py::list id_list(const std::vector<int32_t>& ids) {
  py::list out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) out[i] = py::int_(ids[i]);
  return out;
}

// A C-contiguous numpy array of `rows` x `cols` over memory from new[], freed with the array.
// For large results (score): numpy's own allocator asks the kernel for huge pages on arrays of
// 4 MB and more, which on a machine with fragmented memory stalls each first touch on compaction
// (docs/benchmarks.md); memory from new[] is what a C++ program writing the same rows gets.
template <typename S>
py::array_t<S> new_matrix(size_t rows, size_t cols) {
  S* data = new S[rows * cols];
  py::capsule owner(data, [](void* p) { delete[] static_cast<S*>(p); });
  return py::array_t<S>({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)}, data,
                        owner);
}

// ---------------------------------------------------------------------------------------------
// Threads and exclusive use.

int default_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_num_procs());
#else
  return 1;
#endif
}

// OpenMP's thread count is per calling thread, so each call sets its model's count.
void use_threads(int threads) {
#ifdef _OPENMP
  omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

// Marks an object in use for one call; a second thread's call raises instead of racing.
class InUse {
 public:
  InUse(std::atomic<bool>& flag, const char* what) : flag_(flag) {
    if (flag_.exchange(true)) {
      throw Error(std::string("this ") + what + " is in use by another thread (a " + what +
                  " is not thread-safe: use one per thread)");
    }
  }
  ~InUse() { flag_.store(false); }
  InUse(const InUse&) = delete;
  InUse& operator=(const InUse&) = delete;

 private:
  std::atomic<bool>& flag_;
};

using TokenizerPtr = std::shared_ptr<tconst::Tokenizer>;

// ---------------------------------------------------------------------------------------------
// Type-erased model, session, generation and batch: the Python classes; one implementation per
// precision below.

class PySession;
class PyStreamBatch;

class PyModel : public std::enable_shared_from_this<PyModel> {
 public:
  PyModel(std::string label, std::string path, int threads)
      : label_(std::move(label)), path_(std::move(path)), threads_(threads) {}
  virtual ~PyModel() = default;

  virtual const tconst::ModelConfig& config() const = 0;
  virtual const char* precision() const = 0;
  virtual int64_t parameter_count() const = 0;
  virtual std::shared_ptr<PySession> session(int64_t max_context) = 0;
  virtual std::shared_ptr<PyStreamBatch> stream_batch() = 0;

  const std::string& label() const { return label_; }
  int threads() const { return threads_; }

  py::dict config_dict() const {
    const tconst::ModelConfig& c = config();
    py::dict d;
    d["architecture"] = tconst::to_string(c.arch);
    d["vocab_size"] = c.vocab_size;
    d["d_model"] = c.n_embd;
    d["heads"] = c.n_head;
    d["head_dim"] = c.head_dim();
    d["blocks"] = c.n_block;
    d["layers"] = c.total_layers();
    d["ffn_hidden"] = c.ffn_hidden;
    if (!c.is_baseline()) {
      d["inner_depth"] = c.inner_depth;
      d["window"] = c.generate_window;
      d["history_window"] = c.history_window;
    }
    d["rope_base"] = c.rope_base;
    d["norm_eps"] = c.norm_eps;
    d["tied_head"] = c.tied_head;
    d["tokenizer"] = c.tokenizer;
    d["parameters"] = parameter_count();
    d["precision"] = precision();
    return d;
  }

  // The tokenizer the file carries or names (made once): an embedded GPT-2 tokenizer, the bytes
  // tokenizer, or an error that says how to load one.
  TokenizerPtr tokenizer() {
    if (tokenizer_) return tokenizer_;
    const tconst::ModelConfig& c = config();
    TokenizerPtr tok;
    if (!path_.empty()) tok = tconst::embedded_tokenizer(path_);
    if (!tok) {
      if (c.tokenizer == "gpt2") {
        throw Error(
            "the model uses the gpt2 tokenizer and does not carry it: load it with "
            "tconst.Tokenizer(PATH), a directory with vocab.json + merges.txt (or encoder.json + "
            "vocab.bpe), or a tokenizer.json");
      }
      if (c.tokenizer.empty() && c.vocab_size != 256) {
        throw Error("the model names no tokenizer: load one with tconst.Tokenizer(PATH)");
      }
      tok = tconst::make_tokenizer_by_name(c.tokenizer.empty() ? "bytes" : c.tokenizer);
    }
    if (tok->vocab_size() > c.vocab_size) {
      throw Error("tokenizer has " + std::to_string(tok->vocab_size()) +
                  " tokens but the model's vocabulary is " + std::to_string(c.vocab_size));
    }
    tokenizer_ = std::move(tok);
    return tokenizer_;
  }

 private:
  std::string label_, path_;  // path_ empty for a model made in memory
  int threads_;
  TokenizerPtr tokenizer_;
};

class PyGeneration {
 public:
  virtual ~PyGeneration() = default;
  // The next id, or -1 when generation has ended.
  virtual int32_t next() = 0;
  virtual py::object stop_reason() const = 0;
  virtual int64_t generated() const = 0;
};

struct GenerateArgs {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 128;
  tconst::SamplerConfig sampler;
  std::vector<std::string> stop_strings;
  std::vector<int32_t> stop_ids;
  TokenizerPtr tokenizer;  // for the stop strings
};

class PySession : public std::enable_shared_from_this<PySession> {
 public:
  virtual ~PySession() = default;
  virtual std::shared_ptr<PyModel> model() const = 0;
  virtual py::array feed(py::handle token) = 0;
  virtual py::array prefill(py::handle ids) = 0;
  virtual py::array score(py::handle ids) = 0;
  virtual py::array logits() = 0;
  virtual std::shared_ptr<PyGeneration> generate(GenerateArgs args) = 0;
  virtual int64_t position() = 0;
  virtual size_t cache_bytes() = 0;
  virtual int64_t resync_count() = 0;
  virtual py::list tokens() = 0;
  virtual void reset() = 0;
  virtual std::shared_ptr<PySession> copy() = 0;
  virtual void save(const std::string& path) = 0;
  virtual void load(const std::string& path) = 0;
  // The same feeds and score run in a C++ loop, timed (for docs/benchmarks.md).
  virtual double bench_feeds(const std::vector<int32_t>& ids) = 0;
  virtual double bench_score(const std::vector<int32_t>& ids) = 0;

  std::atomic<bool> busy{false};
};

class PyStreamBatch {
 public:
  virtual ~PyStreamBatch() = default;
  virtual py::array feed(py::handle sessions, py::handle tokens) = 0;
};

// ---------------------------------------------------------------------------------------------
// One precision.

template <typename S>
class ModelT;

template <typename S>
class SessionT final : public PySession {
 public:
  SessionT(std::shared_ptr<ModelT<S>> owner, std::unique_ptr<tconst::Session<S>> s)
      : owner_(std::move(owner)), s_(std::move(s)), vocab_(s_->model().config().vocab_size) {}

  std::shared_ptr<PyModel> model() const override { return owner_; }
  tconst::Session<S>& session() { return *s_; }
  int threads() const { return owner_->threads(); }

  py::array feed(py::handle token) override {
    const int32_t id = id_arg(token, vocab_, "feed: the token");
    InUse in_use(busy, "session");
    py::array_t<S> out(vocab_);
    S* dst = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      use_threads(threads());
      const auto& logits = s_->feed(id);
      std::memcpy(dst, logits.data(), sizeof(S) * static_cast<size_t>(vocab_));
    }
    return std::move(out);
  }

  py::array prefill(py::handle obj) override {
    const std::vector<int32_t> ids = ids_arg(obj, vocab_, "prefill: ids");
    InUse in_use(busy, "session");
    const bool empty = ids.empty() && s_->position() == 0;
    py::array_t<S> out(empty ? 0 : vocab_);
    S* dst = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      use_threads(threads());
      const auto& logits = s_->prefill(ids);
      std::memcpy(dst, logits.data(), sizeof(S) * static_cast<size_t>(logits.size()));
    }
    return std::move(out);
  }

  py::array score(py::handle obj) override {
    const std::vector<int32_t> ids = ids_arg(obj, vocab_, "score: ids");
    InUse in_use(busy, "session");
    py::array_t<S> out = new_matrix<S>(ids.size(), static_cast<size_t>(vocab_));
    S* dst = out.mutable_data();
    const size_t V = static_cast<size_t>(vocab_);
    {
      py::gil_scoped_release nogil;
      use_threads(threads());
      s_->score(ids.data(), ids.size(), [&](size_t i, const tconst::Vector<S>& row) {
        std::memcpy(dst + i * V, row.data(), sizeof(S) * V);
      });
    }
    return std::move(out);
  }

  py::array logits() override {
    InUse in_use(busy, "session");
    const auto& logits = s_->logits();
    py::array_t<S> out(logits.size());
    std::memcpy(out.mutable_data(), logits.data(), sizeof(S) * static_cast<size_t>(logits.size()));
    return std::move(out);
  }

  std::shared_ptr<PyGeneration> generate(GenerateArgs args) override;

  int64_t position() override {
    InUse in_use(busy, "session");
    return s_->position();
  }
  size_t cache_bytes() override {
    InUse in_use(busy, "session");
    return s_->cache_bytes();
  }
  int64_t resync_count() override {
    InUse in_use(busy, "session");
    return s_->resync_count();
  }
  py::list tokens() override {
    InUse in_use(busy, "session");
    return id_list(s_->tokens());
  }
  void reset() override {
    InUse in_use(busy, "session");
    s_->reset();
  }
  std::shared_ptr<PySession> copy() override {
    InUse in_use(busy, "session");
    std::unique_ptr<tconst::Session<S>> c;
    {
      py::gil_scoped_release nogil;
      c = s_->copy();
    }
    return std::make_shared<SessionT<S>>(owner_, std::move(c));
  }
  void save(const std::string& path) override {
    InUse in_use(busy, "session");
    py::gil_scoped_release nogil;
    tconst::save_session(*s_, path);
  }
  void load(const std::string& path) override {
    InUse in_use(busy, "session");
    py::gil_scoped_release nogil;
    use_threads(threads());
    tconst::load_session(*s_, path);
  }

  double bench_feeds(const std::vector<int32_t>& ids) override {
    InUse in_use(busy, "session");
    py::gil_scoped_release nogil;
    use_threads(threads());
    const auto t0 = std::chrono::steady_clock::now();
    for (const int32_t id : ids) s_->feed(id);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // A C++ program that keeps every row, as score() in Python does: rows copied into one buffer.
  double bench_score(const std::vector<int32_t>& ids) override {
    InUse in_use(busy, "session");
    py::gil_scoped_release nogil;
    use_threads(threads());
    const size_t V = static_cast<size_t>(vocab_);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<S> rows(ids.size() * V);
    s_->score(ids.data(), ids.size(), [&](size_t i, const tconst::Vector<S>& row) {
      std::memcpy(rows.data() + i * V, row.data(), sizeof(S) * V);
    });
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

 private:
  std::shared_ptr<ModelT<S>> owner_;  // keeps the threads and the tokenizer with the session
  std::unique_ptr<tconst::Session<S>> s_;
  int64_t vocab_;
};

// Generation as an iterator: the steps of tconst::generate() one per next(), so that a seed gives
// the ids `tconst generate` gives. Sampling and the feed after it run without the GIL.
template <typename S>
class GenerationT final : public PyGeneration {
 public:
  GenerationT(std::shared_ptr<SessionT<S>> owner, GenerateArgs args)
      : owner_(std::move(owner)), args_(std::move(args)), sampler_(args_.sampler) {
    for (const std::string& s : args_.stop_strings)
      longest_stop_ = std::max(longest_stop_, s.size());
  }

  int32_t next() override {
    if (!reason_.empty()) return -1;
    InUse in_use(owner_->busy, "session");
    int32_t id = -1;
    {
      py::gil_scoped_release nogil;
      use_threads(owner_->threads());
      id = step();
    }
    return id;
  }

  py::object stop_reason() const override {
    if (reason_.empty()) return py::none();
    return py::str(reason_);
  }
  int64_t generated() const override { return generated_; }

 private:
  // One token drawn and fed; -1 (with reason_ set) once the budget or the context is used up.
  int32_t step() {
    tconst::Session<S>& s = owner_->session();
    if (generated_ >= args_.max_new_tokens) {
      reason_ = "budget";
      return -1;
    }
    if (s.position() >= s.options().max_context) {
      reason_ = "context_full";
      return -1;
    }
    const int32_t id = sampler_.sample(s.logits(), s.tokens());
    bool stop_string = false;
    if (longest_stop_ > 0) {
      // The last longest_stop - 1 bytes are kept so that a stop string split across tokens is seen.
      tail_ += args_.tokenizer->token_bytes(id);
      for (const std::string& stop : args_.stop_strings) {
        if (tail_.find(stop) != std::string::npos) stop_string = true;
      }
      if (tail_.size() >= longest_stop_) tail_.erase(0, tail_.size() - (longest_stop_ - 1));
    }
    ++generated_;
    s.feed(id);
    if (std::find(args_.stop_ids.begin(), args_.stop_ids.end(), id) != args_.stop_ids.end()) {
      reason_ = "stop_id";
    } else if (stop_string) {
      reason_ = "stop_string";
    }
    return id;
  }

  std::shared_ptr<SessionT<S>> owner_;
  GenerateArgs args_;
  tconst::Sampler<S> sampler_;
  size_t longest_stop_ = 0;
  std::string tail_;
  int64_t generated_ = 0;
  std::string reason_;  // empty while generating
};

template <typename S>
std::shared_ptr<PyGeneration> SessionT<S>::generate(GenerateArgs args) {
  auto self = std::static_pointer_cast<SessionT<S>>(shared_from_this());
  // The prompt is consumed now, so that its errors come from this call rather than from the
  // first next().
  const std::vector<int32_t> prompt = std::move(args.prompt);
  auto gen = std::make_shared<GenerationT<S>>(self, std::move(args));
  InUse in_use(busy, "session");
  if (prompt.empty() && s_->position() == 0) {
    throw Error("generate needs a prompt, or a session that has already consumed tokens");
  }
  if (!prompt.empty()) {
    py::gil_scoped_release nogil;
    use_threads(threads());
    s_->prefill(prompt);
  }
  return gen;
}

template <typename S>
class StreamBatchT final : public PyStreamBatch {
 public:
  explicit StreamBatchT(std::shared_ptr<const tconst::Model<S>> model) : model_(std::move(model)) {}

  py::array feed(py::handle sessions_obj, py::handle tokens_obj) override {
    const int64_t V = model_->config().vocab_size;
    if (!PySequence_Check(sessions_obj.ptr())) {
      throw Error("StreamBatch.feed: sessions must be a sequence of Session, got " +
                  type_name(sessions_obj));
    }
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(sessions_obj);
    std::vector<std::shared_ptr<PySession>> owners;
    std::vector<tconst::TConstSession<S>*> sessions;
    for (size_t i = 0; i < seq.size(); ++i) {
      const std::string what = "StreamBatch.feed: sessions[" + std::to_string(i) + "]";
      const py::object item = seq[i];
      if (!py::isinstance<PySession>(item)) {
        throw Error(what + " must be a Session, got " + type_name(item));
      }
      auto owner = item.cast<std::shared_ptr<PySession>>();
      auto* typed = dynamic_cast<SessionT<S>*>(owner.get());
      if (typed == nullptr || &typed->session().model() != model_.get()) {
        throw Error(what + " belongs to another model than the StreamBatch's");
      }
      auto* ts = dynamic_cast<tconst::TConstSession<S>*>(&typed->session());
      if (ts == nullptr) {
        throw Error(what +
                    " is a baseline Transformer session; StreamBatch steps TConstFormer "
                    "and TLinFormer sessions");
      }
      if (std::find(sessions.begin(), sessions.end(), ts) != sessions.end()) {
        throw Error("StreamBatch::feed: a session appears twice");
      }
      owners.push_back(std::move(owner));
      sessions.push_back(ts);
    }
    const std::vector<int32_t> tokens = ids_arg(tokens_obj, V, "StreamBatch.feed: tokens");
    InUse batch_in_use(busy_, "StreamBatch");
    std::vector<std::unique_ptr<InUse>> in_use;
    for (const auto& o : owners) in_use.push_back(std::make_unique<InUse>(o->busy, "session"));
    py::array_t<S> out({static_cast<py::ssize_t>(sessions.size()), static_cast<py::ssize_t>(V)});
    S* dst = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      if (!owners.empty()) use_threads(owners[0]->model()->threads());
      batch_.feed(sessions, tokens);
      for (size_t i = 0; i < sessions.size(); ++i) {
        std::memcpy(dst + i * V, sessions[i]->logits().data(), sizeof(S) * static_cast<size_t>(V));
      }
    }
    return std::move(out);
  }

 private:
  std::shared_ptr<const tconst::Model<S>> model_;
  tconst::StreamBatch<S> batch_;
  std::atomic<bool> busy_{false};
};

template <typename S>
class ModelT final : public PyModel {
 public:
  ModelT(std::shared_ptr<const tconst::Model<S>> model, std::string label, std::string path,
         int threads)
      : PyModel(std::move(label), std::move(path), threads), model_(std::move(model)) {}

  const tconst::ModelConfig& config() const override { return model_->config(); }
  const char* precision() const override { return sizeof(S) == 8 ? "double" : "float"; }
  int64_t parameter_count() const override { return model_->parameter_count(); }

  std::shared_ptr<PySession> session(int64_t max_context) override {
    tconst::SessionOptions opt;
    if (max_context > 0) opt.max_context = max_context;
    auto self = std::static_pointer_cast<ModelT<S>>(shared_from_this());
    return std::make_shared<SessionT<S>>(self, tconst::make_session(model_, opt));
  }

  std::shared_ptr<PyStreamBatch> stream_batch() override {
    if (model_->config().is_baseline()) {
      throw Error(
          "StreamBatch steps TConstFormer and TLinFormer sessions; this model is a "
          "baseline Transformer");
    }
    return std::make_shared<StreamBatchT<S>>(model_);
  }

 private:
  std::shared_ptr<const tconst::Model<S>> model_;
};

// ---------------------------------------------------------------------------------------------
// Construction from Python arguments.

std::string precision_arg(py::handle obj) {
  if (!PyUnicode_Check(obj.ptr())) {
    throw Error("precision must be \"float\" or \"double\", got " + type_name(obj));
  }
  const std::string p = utf8_of(obj, "precision");
  if (p != "float" && p != "double") {
    throw Error("precision must be \"float\" or \"double\", got \"" + p + "\"");
  }
  return p;
}

int threads_arg(py::handle obj) {
  if (obj.is_none()) return default_threads();
  const int64_t t = int_arg(obj, "threads");
  if (t < 1 || t > 1024) throw Error("threads must be in [1, 1024], got " + std::to_string(t));
  return static_cast<int>(t);
}

template <typename S>
std::shared_ptr<PyModel> load_model(const std::string& path, int threads) {
  std::shared_ptr<const tconst::Model<S>> m;
  {
    py::gil_scoped_release nogil;
    m = tconst::Model<S>::load(path);
  }
  return std::make_shared<ModelT<S>>(std::move(m), path, path, threads);
}

template <typename S>
std::shared_ptr<PyModel> synthetic_model(const tconst::ModelConfig& c, uint64_t seed,
                                         const std::string& label, int threads) {
  std::shared_ptr<const tconst::Model<S>> m;
  {
    py::gil_scoped_release nogil;
    m = tconst::Model<S>::load_from_bytes(tconst::random_model_bytes(c, seed), label);
  }
  return std::make_shared<ModelT<S>>(std::move(m), label, "", threads);
}

std::shared_ptr<PyModel> make_model(py::handle path, py::handle precision, py::handle threads) {
  const std::string p = path_arg(path, "Model: path");
  const std::string prec = precision_arg(precision);
  const int t = threads_arg(threads);
  return prec == "double" ? load_model<double>(p, t) : load_model<float>(p, t);
}

std::shared_ptr<PyModel> make_synthetic(py::handle preset, py::handle architecture, py::handle seed,
                                        py::handle precision, py::handle threads) {
  const std::string name = text_arg(preset, "Model.synthetic: preset");
  if (name != "paper-41m") throw Error("unknown preset '" + name + "' (known: paper-41m)");
  const tconst::ModelConfig c = tconst::paper_41m(
      tconst::parse_architecture(text_arg(architecture, "Model.synthetic: architecture")));
  const int64_t s = int_arg(seed, "Model.synthetic: seed");
  if (s < 0) throw Error("Model.synthetic: seed must be >= 0, got " + std::to_string(s));
  const std::string label = "<" + name + " " + tconst::to_string(c.arch) + ">";
  const int t = threads_arg(threads);
  return precision_arg(precision) == "double"
             ? synthetic_model<double>(c, static_cast<uint64_t>(s), label, t)
             : synthetic_model<float>(c, static_cast<uint64_t>(s), label, t);
}

GenerateArgs generate_args(PySession& session, py::handle ids, py::handle max_new_tokens,
                           py::handle temperature, py::handle top_k, py::handle top_p,
                           py::handle min_p, py::handle repetition_penalty, py::handle seed,
                           py::handle greedy, py::handle stop, py::handle stop_ids,
                           py::handle tokenizer) {
  const std::shared_ptr<PyModel> model = session.model();
  const int64_t V = model->config().vocab_size;
  GenerateArgs a;
  a.prompt = ids.is_none() ? std::vector<int32_t>{} : ids_arg(ids, V, "generate: ids");
  a.max_new_tokens = int_arg(max_new_tokens, "generate: max_new_tokens");
  if (a.max_new_tokens < 0) {
    throw Error("max_new_tokens must be >= 0, got " + std::to_string(a.max_new_tokens));
  }
  a.sampler.temperature = static_cast<float>(float_arg(temperature, "generate: temperature"));
  const int64_t k = int_arg(top_k, "generate: top_k");
  if (k < 0 || k > std::numeric_limits<int>::max()) {
    throw Error("sampler top_k must be >= 0 (0 = off), got " + std::to_string(k));
  }
  a.sampler.top_k = static_cast<int>(k);
  a.sampler.top_p = static_cast<float>(float_arg(top_p, "generate: top_p"));
  a.sampler.min_p = static_cast<float>(float_arg(min_p, "generate: min_p"));
  a.sampler.repetition_penalty =
      static_cast<float>(float_arg(repetition_penalty, "generate: repetition_penalty"));
  const int64_t s = int_arg(seed, "generate: seed");
  if (s < 0) throw Error("generate: seed must be >= 0, got " + std::to_string(s));
  a.sampler.seed = static_cast<uint64_t>(s);
  if (!PyBool_Check(greedy.ptr())) {
    throw Error("generate: greedy must be a bool, got " + type_name(greedy));
  }
  a.sampler.greedy = greedy.cast<bool>();
  a.sampler.validate();
  a.stop_strings = strings_arg(stop, "generate: stop");
  for (const std::string& str : a.stop_strings) {
    if (str.empty()) throw Error("a stop string must not be empty (it would match at once)");
  }
  if (!stop_ids.is_none()) a.stop_ids = ids_arg(stop_ids, V, "generate: stop_ids");
  if (!a.stop_strings.empty()) {
    if (tokenizer.is_none()) {
      a.tokenizer = model->tokenizer();
    } else if (py::isinstance<tconst::Tokenizer>(tokenizer)) {
      a.tokenizer = tokenizer.cast<TokenizerPtr>();
    } else {
      throw Error("generate: tokenizer must be a Tokenizer, got " + type_name(tokenizer));
    }
  }
  return a;
}

TokenizerPtr make_tokenizer(py::handle path) {
  if (PyUnicode_Check(path.ptr()) && utf8_of(path, "Tokenizer: path") == "bytes") {
    return tconst::make_tokenizer_by_name("bytes");
  }
  const std::string p = path_arg(path, "Tokenizer: path");
  return tconst::load_tokenizer(p);
}

// A StreamDecoder with the tokenizer it reads kept alive.
struct PyStreamDecoder {
  explicit PyStreamDecoder(TokenizerPtr t) : tok(std::move(t)), decoder(*tok) {}
  TokenizerPtr tok;
  tconst::StreamDecoder decoder;
};

std::shared_ptr<PySession> session_arg(py::handle obj, const char* what) {
  if (!py::isinstance<PySession>(obj)) {
    throw Error(std::string(what) + " must be a Session, got " + type_name(obj));
  }
  return obj.cast<std::shared_ptr<PySession>>();
}

}  // namespace

PYBIND11_MODULE(tconst, m) {
  m.doc() =
      "TConstFormer, TLinFormer and baseline Transformer inference (the tconst C++ engine): "
      "streaming sessions with numpy logits, generation, snapshots, tokenizers.";
  py::register_exception<Error>(m, "Error", PyExc_ValueError);
  m.attr("__version__") = tconst::kVersion;
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.def("vector_kernels", &tconst::vector_kernels,
        "The float kernels' instruction set in this process: \"avx512\", \"avx2\" or \"none\" "
        "(capped by TCONST_ISA in the environment).");

  py::class_<tconst::Tokenizer, TokenizerPtr>(m, "Tokenizer",
                                              "Turns text into token ids and back (byte-level).")
      .def(py::init(&make_tokenizer), py::arg("path"),
           "A GPT-2 BPE tokenizer from a directory (vocab.json + merges.txt, encoder.json + "
           "vocab.bpe, or tokenizer.json) or a file; \"bytes\" for the bytes tokenizer.")
      .def(
          "encode",
          [](const tconst::Tokenizer& t, py::handle text) {
            const std::string s = text_arg(text, "encode: text");
            std::vector<int32_t> ids;
            {
              py::gil_scoped_release nogil;
              ids = t.encode(s);
            }
            return id_list(ids);
          },
          py::arg("text"), "Token ids of a str (as UTF-8) or of bytes.")
      .def(
          "decode",
          [](const tconst::Tokenizer& t, py::handle ids) {
            return utf8_str(t.decode(ids_arg(ids, t.vocab_size(), "decode: ids")));
          },
          py::arg("ids"), "The text of ids; bytes that are not UTF-8 become U+FFFD.")
      .def(
          "decode_bytes",
          [](const tconst::Tokenizer& t, py::handle ids) {
            return py::bytes(t.decode(ids_arg(ids, t.vocab_size(), "decode_bytes: ids")));
          },
          py::arg("ids"), "The concatenated bytes of the tokens.")
      .def(
          "token_bytes",
          [](const tconst::Tokenizer& t, py::handle id) {
            return py::bytes(t.token_bytes(id_arg(id, t.vocab_size(), "token_bytes: id")));
          },
          py::arg("id"))
      .def_property_readonly("vocab_size", &tconst::Tokenizer::vocab_size)
      .def_property_readonly("name", &tconst::Tokenizer::name)
      .def("__repr__", [](const tconst::Tokenizer& t) {
        return "<tconst.Tokenizer " + t.name() + ", " + std::to_string(t.vocab_size()) + " tokens>";
      });

  py::class_<PyStreamDecoder, std::shared_ptr<PyStreamDecoder>>(
      m, "StreamDecoder", "Text of generated ids as they come, whole UTF-8 characters only.")
      .def(py::init([](py::handle tok) {
             if (!py::isinstance<tconst::Tokenizer>(tok)) {
               throw Error("StreamDecoder: tokenizer must be a Tokenizer, got " + type_name(tok));
             }
             return std::make_shared<PyStreamDecoder>(tok.cast<TokenizerPtr>());
           }),
           py::arg("tokenizer"))
      .def(
          "push",
          [](PyStreamDecoder& d, py::handle id) {
            return py::str(d.decoder.push(id_arg(id, d.tok->vocab_size(), "push: id")));
          },
          py::arg("id"), "Adds one id; returns the text now complete (often '' mid-character).")
      .def(
          "flush", [](PyStreamDecoder& d) { return py::str(d.decoder.flush()); },
          "The bytes held back, as text (U+FFFD for an incomplete character).");

  py::class_<PyModel, std::shared_ptr<PyModel>>(m, "Model",
                                                "The immutable weights and config of one model "
                                                "file; shared by any number of sessions.")
      .def(py::init(&make_model), py::arg("path"), py::arg("precision") = "float",
           py::arg("threads") = py::none(),
           "Loads a model file. precision: \"float\" or \"double\"; threads: OpenMP threads of "
           "each call (default: the processors available).")
      .def_static("synthetic", &make_synthetic, py::arg("preset") = "paper-41m",
                  py::arg("architecture") = "tconstformer", py::arg("seed") = 1,
                  py::arg("precision") = "float", py::arg("threads") = py::none(),
                  "A model of a preset's shape with pseudo-random weights (as `tconst bench "
                  "--preset`), for timing.")
      .def_property_readonly("config", &PyModel::config_dict)
      .def_property_readonly("threads", &PyModel::threads)
      .def_property_readonly("precision", &PyModel::precision)
      .def("tokenizer", &PyModel::tokenizer,
           "The tokenizer the file carries (embedded GPT-2) or names (bytes).")
      .def(
          "session",
          [](PyModel& model, py::handle max_context) {
            int64_t mc = 0;
            if (!max_context.is_none()) {
              mc = int_arg(max_context, "session: max_context");
              if (mc < 1) throw Error("max_context must be >= 1, got " + std::to_string(mc));
            }
            return model.session(mc);
          },
          py::arg("max_context") = py::none(),
          "A new streaming session (TConstFormer, TLinFormer or baseline, by the file).")
      .def(
          "load_session",
          [](PyModel& model, py::handle path) {
            const std::string p = path_arg(path, "load_session: path");
            std::shared_ptr<PySession> s = model.session(0);
            s->load(p);
            return s;
          },
          py::arg("path"), "A session restored from a snapshot that Session.save wrote.")
      .def("__repr__", [](PyModel& model) {
        return "<tconst.Model " + model.label() + ": " + tconst::to_string(model.config().arch) +
               ", " + model.precision() + ">";
      });

  py::class_<PySession, std::shared_ptr<PySession>>(m, "Session",
                                                    "One stream of tokens through a model.")
      .def("feed", &PySession::feed, py::arg("token"),
           "Consumes one id; returns the logits after it, numpy [vocab].")
      .def("prefill", &PySession::prefill, py::arg("ids"),
           "Consumes ids in one batched call; returns the logits after the last.")
      .def("score", &PySession::score, py::arg("ids"),
           "Consumes ids; returns every position's logits, numpy [len(ids), vocab].")
      .def(
          "generate",
          [](PySession& s, py::handle ids, py::handle max_new_tokens, py::handle temperature,
             py::handle top_k, py::handle top_p, py::handle min_p, py::handle repetition_penalty,
             py::handle seed, py::handle greedy, py::handle stop, py::handle stop_ids,
             py::handle tokenizer) {
            return s.generate(generate_args(s, ids, max_new_tokens, temperature, top_k, top_p,
                                            min_p, repetition_penalty, seed, greedy, stop, stop_ids,
                                            tokenizer));
          },
          py::arg("ids") = py::none(), py::arg("max_new_tokens") = 128,
          py::arg("temperature") = 0.8, py::arg("top_k") = 0, py::arg("top_p") = 0.95,
          py::arg("min_p") = 0.0, py::arg("repetition_penalty") = 1.0, py::arg("seed") = 0,
          py::arg("greedy") = false, py::arg("stop") = py::none(), py::arg("stop_ids") = py::none(),
          py::arg("tokenizer") = py::none(),
          "Consumes the prompt ids now; returns an iterator of the ids drawn after it (the "
          "defaults are `tconst generate`'s).")
      .def_property_readonly("position", &PySession::position)
      .def_property_readonly("cache_bytes", &PySession::cache_bytes)
      .def_property_readonly("resync_count", &PySession::resync_count)
      .def_property_readonly("tokens", &PySession::tokens)
      .def_property_readonly("logits", &PySession::logits)
      .def_property_readonly("model", &PySession::model)
      .def("reset", &PySession::reset)
      .def("copy", &PySession::copy)
      .def(
          "save", [](PySession& s, py::handle path) { s.save(path_arg(path, "save: path")); },
          py::arg("path"), "Writes a snapshot (atomically) that Model.load_session restores.")
      .def("__repr__", [](PySession& s) {
        return "<tconst.Session " + std::string(tconst::to_string(s.model()->config().arch)) +
               " at position " + std::to_string(s.position()) + ">";
      });

  py::class_<PyGeneration, std::shared_ptr<PyGeneration>>(m, "Generation",
                                                          "Iterator of generated ids.")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__",
           [](PyGeneration& g) {
             const int32_t id = g.next();
             if (id < 0) throw py::stop_iteration();
             return id;
           })
      .def_property_readonly("stop_reason", &PyGeneration::stop_reason,
                             "None while generating; then budget, stop_id, stop_string or "
                             "context_full.")
      .def_property_readonly("generated", &PyGeneration::generated);

  py::class_<PyStreamBatch, std::shared_ptr<PyStreamBatch>>(
      m, "StreamBatch",
      "Several TConstFormer or TLinFormer sessions of one model stepped together.")
      .def(py::init([](py::handle model) {
             if (!py::isinstance<PyModel>(model)) {
               throw Error("StreamBatch: model must be a Model, got " + type_name(model));
             }
             return model.cast<std::shared_ptr<PyModel>>()->stream_batch();
           }),
           py::arg("model"))
      .def("feed", &PyStreamBatch::feed, py::arg("sessions"), py::arg("tokens"),
           "Feeds tokens[i] to sessions[i]; returns the logits, numpy [len(sessions), vocab].");

  // C++ loops over a session, timed, for comparing the bindings' cost (docs/benchmarks.md).
  py::module_ bench = m.def_submodule("_bench", "C++ loops for benchmarks.");
  bench.def(
      "feeds",
      [](py::handle session, py::handle ids) {
        auto s = session_arg(session, "_bench.feeds: session");
        return s->bench_feeds(ids_arg(ids, s->model()->config().vocab_size, "ids"));
      },
      "Seconds to feed the ids one by one in C++.");
  bench.def(
      "score",
      [](py::handle session, py::handle ids) {
        auto s = session_arg(session, "_bench.score: session");
        return s->bench_score(ids_arg(ids, s->model()->config().vocab_size, "ids"));
      },
      "Seconds to score the ids in C++, keeping every row.");
}
