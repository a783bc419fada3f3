// SessionStore: the server's named sessions, each resident (a live Session) or parked (a snapshot
// file in --session-dir), within --max-resident-bytes.
//
// A session is busy while a generation holds it; only idle sessions are parked, least recently
// used first. Parking writes the snapshot atomically (a temporary file, fsync, rename, fsync of
// the directory), so a crash or a full disk mid-write leaves the previous snapshot whole; when the
// write fails the session simply stays resident and the failure is counted and logged. Restoring
// checks the file completely (snapshot.hpp) before the session is touched.
//
// Snapshot reads and writes run with the store's lock released, so a park or a restore (a few
// milliseconds to tens of them, with fsync) delays only the request that caused it, never the
// others' acquire and release. While a session is parked it is marked `moving` (a request for it
// waits for the park to end); while it is restored it is busy (it is being acquired). The serving
// loop never calls into the store.
//
// A snapshot file is "TCGEN001", the generation (8 bytes), then the session's snapshot
// (snapshot.hpp); a file without the prefix (an older server's) is generation 0. Each write of a
// session's snapshot is its next generation.
//
// With --durable, replicas may share the session dir. A request then holds the session's lease
// (serve_lease.cpp) from acquire to release; release writes the next generation and gives the lease
// back. A resident copy is a cache: acquire compares its generation with the file's and restores
// the file when another replica has written a newer one. Sessions another replica made are found
// in the directory when first asked for.

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

#include "serve.hpp"
#include "tconst/batch.hpp"

namespace tconst_cli {
namespace serve {
namespace {

constexpr const char* kSuffix = ".tcsnap";
constexpr char kGenMagic[8] = {'T', 'C', 'G', 'E', 'N', '0', '0', '1'};
constexpr size_t kGenHeader = 16;  // the magic and the generation

// What the start of a snapshot file says.
struct FileHead {
  bool exists = false;  // false: there is no file (or it cannot be opened)
  bool valid = false;   // a tconst session snapshot
  uint64_t generation = 0;
  int64_t position = 0;
};

FileHead read_head(const std::string& path) {
  FileHead h;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return h;
  h.exists = true;
  unsigned char head[kGenHeader + 40] = {};
  size_t got = 0;
  while (got < sizeof head) {
    const ssize_t n = ::read(fd, head + got, sizeof head - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  size_t at = 0;
  if (got >= kGenHeader && std::memcmp(head, kGenMagic, 8) == 0) {
    std::memcpy(&h.generation, head + 8, 8);
    at = kGenHeader;
  }
  // The token count is the first field of the state (snapshot.hpp: 32 bytes of header).
  if (got >= at + 40 && std::memcmp(head + at, "TCSNAPSH", 8) == 0) {
    uint64_t n = 0;
    std::memcpy(&n, head + at + 32, 8);
    h.position = static_cast<int64_t>(n);
    h.valid = true;
  }
  return h;
}

bool valid_id(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (const char ch : id) {
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
      return false;
  }
  return true;
}

std::string errno_text() {
  return std::strerror(errno);
}

// Writes all of `bytes` to fd; false (errno set) on failure.
bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// The whole file in one read where it can (a stream iterator reads it a byte at a time); false
// (errno set) on failure.
bool read_file(const std::string& path, std::vector<uint8_t>* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    errno = err;
    return false;
  }
  out->resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  for (;;) {
    if (got == out->size()) out->resize(out->size() + 65536);  // it grew meanwhile
    const ssize_t n = ::read(fd, out->data() + got, out->size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      errno = err;
      return false;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  out->resize(got);
  return true;
}

}  // namespace

int64_t session_bytes(const Session& s) {
  size_t bytes = s.cache_bytes() + s.tokens().capacity() * sizeof(int32_t);
  // A TConstFormer session keeps its window pass's buffers for its life, and its resync buffers
  // from its first resync on.
  if (const auto* t = dynamic_cast<const tconst::TConstSession<float>*>(&s)) {
    bytes += t->window_buffer_bytes() + t->resync_buffer_bytes();
  }
  return static_cast<int64_t>(bytes);
}

SessionStore::SessionStore(std::shared_ptr<const Model> model, const ServeOptions& opt,
                           Metrics& metrics)
    : model_(std::move(model)), opt_(opt), metrics_(metrics) {
  session_options_.max_context = opt.max_context;
  session_options_.compute = opt.compute;
  if (opt_.durable && !opt_.session_dir.empty()) {
    if (opt_.replica_id.empty()) opt_.replica_id = default_replica_id();
    leases_ = std::make_unique<Leases>(opt_.session_dir, opt_.replica_id, opt_.lease_ms);
  }
  fresh_bytes_ = session_bytes(*tconst::make_session(model_, session_options_));
  std::random_device rd;
  id_salt_ = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
             static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

std::string SessionStore::path_of(const std::string& id) const {
  return opt_.session_dir + "/" + id + kSuffix;
}

std::string SessionStore::new_id() {
  // Unique within the process by the counter; across restarts by the salt (and checked below).
  uint64_t x = id_salt_ + 0x9e3779b97f4a7c15ull * ++id_counter_;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  char buf[32];
  std::snprintf(buf, sizeof buf, "sess_%016llx", static_cast<unsigned long long>(x));
  return buf;
}

void SessionStore::account(const Entry& e, int sign) {
  if (e.live) {
    metrics_.resident_bytes += sign * e.bytes;
    metrics_.resident_sessions += sign;
  } else {
    metrics_.parked_sessions += sign;
  }
}

size_t SessionStore::scan() {
  if (opt_.session_dir.empty()) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  DIR* dir = ::opendir(opt_.session_dir.c_str());
  if (dir == nullptr) {
    throw tconst::Error("cannot open --session-dir '" + opt_.session_dir + "': " + errno_text());
  }
  size_t found = 0;
  const std::string suffix = kSuffix;
  const time_t now = ::time(nullptr);
  while (const dirent* ent = ::readdir(dir)) {
    const std::string name = ent->d_name;
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
      // An interrupted write. With replicas, only one that is old: another may be writing it.
      const std::string path = opt_.session_dir + "/" + name;
      struct stat st {};
      if (!leases_ || (::stat(path.c_str(), &st) == 0 && st.st_mtime + 60 < now)) {
        ::unlink(path.c_str());
      }
      continue;
    }
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string id = name.substr(0, name.size() - suffix.size());
    if (!valid_id(id)) continue;
    Entry e;
    e.dirty = false;
    const FileHead head = read_head(path_of(id));
    if (head.valid) {
      e.position = head.position;
      e.generation = head.generation;
    } else {
      e.error = "snapshot '" + path_of(id) + "' is not a tconst session snapshot";
    }
    account(e, +1);
    sessions_.emplace(id, std::move(e));
    ++found;
  }
  ::closedir(dir);
  return found;
}

std::string SessionStore::create() {
  std::unique_lock<std::mutex> lock(mu_);
  if (static_cast<int64_t>(sessions_.size()) >= opt_.max_sessions) {
    throw HttpError{503,
                    "the server holds its maximum of " + std::to_string(opt_.max_sessions) +
                        " sessions; delete some",
                    "server_error"};
  }
  fit_budget(lock, fresh_bytes_);
  auto session = tconst::make_session(model_, session_options_);
  const int64_t bytes = session_bytes(*session);
  std::string id;
  do {
    id = new_id();
  } while (sessions_.count(id) ||
           (!opt_.session_dir.empty() && ::access(path_of(id).c_str(), F_OK) == 0));
  Entry e;
  e.live = std::move(session);
  e.bytes = bytes;
  e.last_used = ++tick_;
  account(e, +1);
  Entry& made = sessions_.emplace(id, std::move(e)).first->second;
  // --durable: the session exists for every replica once its first snapshot is in the directory.
  std::string why;
  if (leases_ && !save(lock, id, made, &why)) {
    account(made, -1);
    sessions_.erase(id);
    throw HttpError{503, "the new session's snapshot could not be written: " + why, "server_error"};
  }
  return id;
}

nlohmann::json SessionStore::describe(const std::string& id) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = settled(lock, id);
  Entry& e = it->second;
  if (leases_ && !e.busy) {
    // Another replica may have continued or deleted it: the directory says.
    const FileHead h = read_head(path_of(id));
    if (!h.exists) {
      account(e, -1);
      sessions_.erase(it);
      throw HttpError{404, "no session '" + id + "'"};
    }
    if (h.valid && h.generation != e.generation) {
      if (e.live) ++metrics_.stale_copies;
      drop_live(e);
      e.position = h.position;
      e.generation = h.generation;
    }
  }
  nlohmann::json j = {{"id", id}, {"object", "session"}};
  if (e.live && !e.busy) {
    j["position"] = e.live->position();
    j["cache_bytes"] = e.live->cache_bytes();
    j["resyncs"] = e.live->resync_count();
  } else {
    j["position"] = e.position;  // as of the last release (a generation may be running)
  }
  j["tokens"] = j["position"];
  if (!opt_.session_dir.empty()) j["generation"] = e.generation;
  j["resident_bytes"] = e.live ? e.bytes : 0;
  j["state"] = !e.error.empty() ? "error" : e.busy ? "generating" : e.live ? "resident" : "parked";
  if (!e.error.empty()) j["error"] = e.error;
  return j;
}

std::map<std::string, SessionStore::Entry>::iterator SessionStore::settled(
    std::unique_lock<std::mutex>& lock, const std::string& id) {
  for (;;) {
    auto it = valid_id(id) ? sessions_.find(id) : sessions_.end();
    if (it == sessions_.end() && leases_ && valid_id(id)) {
      // Made by another replica (or since this one started): registered as parked.
      const FileHead h = read_head(path_of(id));
      if (h.exists) {
        Entry e;
        e.dirty = false;
        e.position = h.position;
        e.generation = h.generation;
        if (!h.valid) e.error = "snapshot '" + path_of(id) + "' is not a tconst session snapshot";
        account(e, +1);
        it = sessions_.emplace(id, std::move(e)).first;
      }
    }
    if (it == sessions_.end()) throw HttpError{404, "no session '" + id + "'"};
    if (!it->second.moving) return it;
    moved_.wait(lock);
  }
}

void SessionStore::remove(const std::string& id) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = settled(lock, id);
  if (it->second.busy) throw HttpError{409, "session '" + id + "' is generating"};
  if (leases_) {
    it->second.busy = true;  // while its lease is taken with the lock released
    take_lease(lock, id);
    lock.unlock();
    ::unlink(path_of(id).c_str());
    leases_->give_back(id);
    lock.lock();
  } else if (!opt_.session_dir.empty()) {
    ::unlink(path_of(id).c_str());
  }
  account(it->second, -1);
  sessions_.erase(it);
}

void SessionStore::take_lease(std::unique_lock<std::mutex>& lock, const std::string& id) {
  lock.unlock();
  std::string holder;
  try {
    holder = leases_->take(id, opt_.lease_wait_ms);
  } catch (...) {
    lock.lock();
    sessions_[id].busy = false;
    throw;
  }
  lock.lock();
  if (holder.empty()) return;
  sessions_[id].busy = false;
  ++metrics_.lease_conflicts;
  throw HttpError{409,
                  "session '" + id + "' is in use by replica '" + holder + "' (waited " +
                      std::to_string(opt_.lease_wait_ms) + " ms, --lease-wait-ms)",
                  "conflict_error"};
}

void SessionStore::drop_live(Entry& e) {
  account(e, -1);
  e.live.reset();
  e.bytes = 0;
  e.dirty = false;
  account(e, +1);
}

Session* SessionStore::acquire(const std::string& id) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = settled(lock, id);
  if (it->second.busy) throw HttpError{409, "session '" + id + "' is generating already"};
  // --durable: an error is checked against the file's generation below (it may be rewritten).
  if (!leases_ && !it->second.error.empty()) {
    throw HttpError{500, it->second.error, "server_error"};
  }
  it->second.busy = true;  // nobody parks or removes it while the lock is dropped below
  Entry& e = it->second;
  if (leases_) {
    take_lease(lock, id);
    // The resident copy is a cache of the file's generation.
    lock.unlock();
    const FileHead h = read_head(path_of(id));
    lock.lock();
    if (h.exists && h.valid && h.generation != e.generation) e.error.clear();  // a newer file
    if (!h.exists || !h.valid || !e.error.empty()) {
      e.busy = false;
      leases_->give_back(id);
      if (!h.exists) {
        account(e, -1);
        sessions_.erase(id);
        throw HttpError{404, "no session '" + id + "'"};
      }
      if (e.error.empty()) {
        e.error = "snapshot '" + path_of(id) + "' is not a tconst session snapshot";
      }
      throw HttpError{500, e.error, "server_error"};
    }
    if (e.live && e.generation != h.generation) {
      ++metrics_.stale_copies;
      drop_live(e);
    }
    if (!e.live) e.position = h.position;
  }
  if (!e.live) {
    try {
      const int64_t expected = fresh_bytes_ + e.position * int64_t{sizeof(int32_t)};
      fit_budget(lock, expected);
      restore(lock, id, e, expected);  // busy: nobody else touches the entry meanwhile
    } catch (...) {
      e.busy = false;
      if (leases_) leases_->give_back(id);
      throw;
    }
  }
  it->second.last_used = ++tick_;
  return it->second.live.get();
}

std::string SessionStore::release(const std::string& id) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return "";
  Entry& e = it->second;
  if (!leases_) e.busy = false;  // --durable: busy until its lease is given back
  e.dirty = true;
  e.last_used = ++tick_;
  account(e, -1);
  e.bytes = session_bytes(*e.live);
  e.position = e.live->position();
  account(e, +1);
  // --durable: the turn is on disk before its client sees the end of the reply (release runs
  // before the last event or the whole reply is sent), so a crash loses no completed turn. A turn
  // that cannot be written (or whose lease was lost) is dropped and its client told so.
  std::string failure;
  if (leases_) {
    lock.unlock();
    const bool ours = leases_->holds(id);
    lock.lock();
    if (!ours) {
      failure = "the session's lease was lost to another replica";
    } else {
      save(lock, id, e, &failure);
    }
    if (!failure.empty()) {
      drop_live(e);
      const FileHead h = read_head(path_of(id));
      e.position = h.position;
      e.generation = h.generation;
    }
    lock.unlock();
    leases_->give_back(id);
    lock.lock();
    e.busy = false;
  }
  fit_budget(lock, 0);
  return failure;
}

// Parks least recently used idle sessions until `incoming` more bytes fit the budget. Sessions
// that are generating are never parked, so while they alone exceed the budget it is exceeded (size
// the budget for --max-active sessions). Throws HttpError 503 when idle sessions would have to go
// but cannot (no session dir, or their snapshot writes fail).
//
// The lock is released while a snapshot is written or read: other threads may fit the budget
// meanwhile. Sessions being parked count as gone already and sessions being restored as present,
// so that they neither park too many nor overfill the budget together.
void SessionStore::fit_budget(std::unique_lock<std::mutex>& lock, int64_t incoming) {
  while (metrics_.resident_bytes - parking_bytes_ + restoring_bytes_ + incoming >
         opt_.max_resident_bytes) {
    std::string victim;
    uint64_t oldest = UINT64_MAX;
    for (auto& [id, e] : sessions_) {
      if (e.live && !e.busy && !e.moving && e.last_used < oldest) {
        oldest = e.last_used;
        victim = id;
      }
    }
    if (victim.empty()) return;
    if (opt_.session_dir.empty() || !park(lock, victim, sessions_[victim])) {
      if (incoming == 0) return;  // a release: stay over budget until something can be parked
      throw HttpError{503,
                      "resident session memory is full (--max-resident-bytes " +
                          std::to_string(opt_.max_resident_bytes) + ") and idle sessions " +
                          (opt_.session_dir.empty() ? "cannot be parked without --session-dir"
                                                    : "could not be parked"),
                      "server_error"};
    }
  }
}

void SessionStore::write_atomically(const std::string& path, const std::string& head,
                                    const std::string& bytes) {
  // The process's own temporary name: replicas never write over each other's.
  const std::string tmp = path + "." + std::to_string(::getpid()) + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw tconst::Error("cannot create '" + tmp + "': " + errno_text());
  const bool ok = write_all(fd, head.data(), head.size()) &&
                  write_all(fd, bytes.data(), bytes.size()) && ::fsync(fd) == 0;
  const std::string why = errno_text();
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    throw tconst::Error("cannot write '" + tmp + "': " + why);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why2 = errno_text();
    ::unlink(tmp.c_str());
    throw tconst::Error("cannot rename '" + tmp + "' to '" + path + "': " + why2);
  }
  // The rename itself is durable once the directory is synced.
  const int dfd = ::open(opt_.session_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

// The lock is released while the snapshot is taken and written: the entry, marked moving, is
// neither used, parked nor removed meanwhile (std::map keeps its address).
bool SessionStore::save(std::unique_lock<std::mutex>& lock, const std::string& id, Entry& e,
                        std::string* why) {
  if (!e.dirty) return true;
  e.moving = true;
  const uint64_t next = e.generation + 1;
  std::string failure;
  lock.unlock();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    std::string head(kGenMagic, sizeof kGenMagic);
    head.append(reinterpret_cast<const char*>(&next), sizeof next);
    write_atomically(path_of(id), head, tconst::snapshot_bytes(*e.live));
  } catch (const std::exception& ex) {
    failure = ex.what();
    if (failure.empty()) failure = "cannot write the snapshot";
  }
  lock.lock();
  e.moving = false;
  moved_.notify_all();
  if (!failure.empty()) {
    ++metrics_.park_failures;
    log_line("snapshot of session " + id + " failed" + (leases_ ? ": " : ", kept resident: ") +
             failure);
    if (why) *why = failure;
    return false;
  }
  e.dirty = false;
  e.generation = next;
  metrics_.write_ns +=
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  ++metrics_.writes;
  return true;
}

// Writes the session's snapshot (unless the file already holds its state) and frees it. On a
// failed write the session stays resident and unchanged; returns false.
bool SessionStore::park(std::unique_lock<std::mutex>& lock, const std::string& id, Entry& e) {
  parking_bytes_ += e.bytes;
  const bool saved = save(lock, id, e);
  parking_bytes_ -= e.bytes;
  if (!saved) return false;
  account(e, -1);
  e.live.reset();
  e.bytes = 0;
  e.dirty = false;
  account(e, +1);
  ++metrics_.parks;
  return true;
}

// Reads the snapshot into a new session with the lock released (the caller has marked the entry
// busy, so nobody else uses, parks or removes it meanwhile).
void SessionStore::restore(std::unique_lock<std::mutex>& lock, const std::string& id, Entry& e,
                           int64_t expected_bytes) {
  const std::string path = path_of(id);
  std::unique_ptr<Session> session;
  uint64_t generation = 0;
  std::string failure;
  restoring_bytes_ += expected_bytes;  // so that other restores meanwhile leave room for it
  lock.unlock();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    std::vector<uint8_t> bytes;
    if (!read_file(path, &bytes)) {
      throw tconst::Error("cannot read snapshot '" + path + "': " + errno_text());
    }
    size_t at = 0;
    if (bytes.size() >= kGenHeader && std::memcmp(bytes.data(), kGenMagic, 8) == 0) {
      std::memcpy(&generation, bytes.data() + 8, 8);
      at = kGenHeader;
    }
    session = tconst::make_session(model_, session_options_);
    tconst::restore_snapshot(*session, bytes.data() + at, bytes.size() - at, path);
  } catch (const std::exception& ex) {
    failure = ex.what();
    if (failure.empty()) failure = "cannot restore snapshot '" + path + "'";
  }
  lock.lock();
  restoring_bytes_ -= expected_bytes;
  if (!failure.empty()) {
    ++metrics_.restore_failures;
    e.error = failure;
    log_line("restore of session " + id + " failed: " + e.error);
    throw HttpError{500, e.error, "server_error"};
  }
  account(e, -1);
  e.live = std::move(session);
  e.bytes = session_bytes(*e.live);
  e.position = e.live->position();
  e.generation = generation;
  e.dirty = false;
  account(e, +1);
  metrics_.restore_ns +=
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  ++metrics_.restores;
}

int SessionStore::park_all() {
  std::unique_lock<std::mutex> lock(mu_);
  int failed = 0;
  if (opt_.session_dir.empty()) return 0;
  // Parks in flight end first (they were started by requests still finishing).
  moved_.wait(lock, [&] { return parking_bytes_ == 0; });
  for (auto& [id, e] : sessions_) {
    if (e.live && !park(lock, id, e)) ++failed;
  }
  return failed;
}

std::vector<std::string> SessionStore::ids() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& kv : sessions_) out.push_back(kv.first);
  return out;
}

}  // namespace serve
}  // namespace tconst_cli
