// Leases: which replica may use a session, kept as files in the shared --session-dir.
//
// A lease is the file ID.lease holding "EXPIRY_MS OWNER\n" (EXPIRY_MS: Unix time in milliseconds).
// It is made with link(2): the content goes to a file of the replica's own, which is then linked to
// ID.lease. link() fails with EEXIST when the name exists, on local file systems and on NFS alike
// (O_EXCL is atomic on NFSv3 and later too, but link() is the long-standing portable way); a lost
// reply to a link() that did succeed is caught by the own file's link count being 2. An expired
// lease is taken over by renaming it to a name of the taker's own and checking that what was moved
// is the lease that was judged expired (else it is linked back): of several takers only one gets
// the file. A held lease is renewed (a new file renamed over it) every third of its time while the
// request runs. flock() is not used: over NFS it is emulated with byte-range locks that depend on
// the lock daemon, and is lost silently when a client's lock state is reclaimed; a file that names
// its owner and its expiry needs only atomic link and rename, and shows who holds it.
//
// Expiry compares wall clocks, so replicas on different hosts need clocks within a fraction of
// --lease-ms of each other. An owner with a default id (HOST:PID:START-MS:PIDNS) on the same host
// and in the same PID namespace whose process is gone is taken over at once, without waiting for
// the expiry.

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "serve.hpp"

namespace tconst_cli {
namespace serve {
namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

// The whole content of a small file; false when it cannot be read (errno set).
bool read_small(const std::string& path, std::string* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[512];
  out->clear();
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out->append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return true;
}

bool write_file(const std::string& path, const std::string& content, int flags) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | flags, 0644);
  if (fd < 0) return false;
  bool ok = true;
  const char* p = content.data();
  size_t left = content.size();
  while (ok && left > 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    ok = w > 0;
    if (ok) {
      p += w;
      left -= static_cast<size_t>(w);
    }
  }
  return ::close(fd) == 0 && ok;
}

struct LeaseText {
  int64_t expiry = 0;
  std::string owner;
};

bool parse(const std::string& text, LeaseText* out) {
  const size_t sp = text.find(' ');
  if (sp == std::string::npos || sp == 0) return false;
  char* end = nullptr;
  out->expiry = std::strtoll(text.c_str(), &end, 10);
  if (end != text.c_str() + sp) return false;
  size_t stop = text.find('\n', sp + 1);
  if (stop == std::string::npos) stop = text.size();
  out->owner = text.substr(sp + 1, stop - sp - 1);
  return !out->owner.empty();
}

// The PID namespace's inode number ("" when unknown): a PID means a process only within it.
std::string pid_namespace() {
  char buf[64] = {};
  const ssize_t n = ::readlink("/proc/self/ns/pid", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string digits;
  for (ssize_t i = 0; i < n; ++i) {
    if (buf[i] >= '0' && buf[i] <= '9') digits += buf[i];
  }
  return digits;
}

}  // namespace

std::string default_replica_id() {
  return host_name() + ":" + std::to_string(::getpid()) + ":" + std::to_string(now_ms()) + ":" +
         pid_namespace();
}

Leases::Leases(std::string dir, std::string owner, int64_t ttl_ms)
    : dir_(std::move(dir)),
      owner_(std::move(owner)),
      ttl_ms_(ttl_ms),
      host_(host_name()),
      pidns_(pid_namespace()) {
  // Own file names are unique per process and per use (the counter).
  tag_ = std::to_string(::getpid()) + "-" + std::to_string(now_ms() % 100000000);
  renewer_ = std::thread([this] { renew_loop(); });
}

Leases::~Leases() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  renewer_.join();
}

std::string Leases::path_of(const std::string& id) const {
  return dir_ + "/" + id + ".lease";
}

std::string Leases::own_name(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return dir_ + "/" + id + ".lease." + tag_ + "-" + std::to_string(++counter_) + ".tmp";
}

std::string Leases::content() const {
  return std::to_string(now_ms() + ttl_ms_) + " " + owner_ + "\n";
}

// Whether an owner with a default id, on this host and in this PID namespace, has no running
// process any more.
bool Leases::owner_gone(const std::string& owner) const {
  std::vector<std::string> f(1);
  for (const char ch : owner) {
    if (ch == ':') {
      f.emplace_back();
    } else {
      f.back() += ch;
    }
  }
  if (f.size() != 4 || f[0] != host_ || pidns_.empty() || f[3] != pidns_) return false;
  char* end = nullptr;
  const long pid = std::strtol(f[1].c_str(), &end, 10);
  if (f[1].empty() || *end != '\0' || pid <= 0) return false;
  if (pid == ::getpid()) return owner != owner_;  // an earlier process that had this pid
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

bool Leases::try_create(const std::string& id) {
  const std::string mine = own_name(id);
  if (!write_file(mine, content(), O_CREAT | O_EXCL)) {
    const std::string why = std::strerror(errno);
    ::unlink(mine.c_str());
    throw HttpError{503, "cannot write the lease of session '" + id + "': " + why, "server_error"};
  }
  bool ok = ::link(mine.c_str(), path_of(id).c_str()) == 0;
  const int err = errno;
  struct stat st {};
  if (!ok && ::stat(mine.c_str(), &st) == 0 && st.st_nlink == 2) ok = true;  // NFS: lost reply
  ::unlink(mine.c_str());
  if (!ok && err != EEXIST) {
    throw HttpError{503, "cannot make the lease of session '" + id + "': " + std::strerror(err),
                    "server_error"};
  }
  return ok;
}

// Takes over the lease file if it still holds `seen` (the text judged expired).
void Leases::take_over(const std::string& id, const std::string& seen) {
  const std::string mine = own_name(id);
  if (::rename(path_of(id).c_str(), mine.c_str()) != 0) return;  // someone else moved it
  std::string moved;
  if (!read_small(mine, &moved) || moved != seen) {
    // A new lease was made meanwhile: put it back (unless yet another one exists by now).
    ::link(mine.c_str(), path_of(id).c_str());
  }
  ::unlink(mine.c_str());
}

std::string Leases::take(const std::string& id, int64_t wait_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  std::string holder;
  for (;;) {
    if (try_create(id)) {
      std::lock_guard<std::mutex> lock(mu_);
      held_[id] = true;
      return "";
    }
    std::string text;
    LeaseText lease;
    if (read_small(path_of(id), &text)) {
      if (!parse(text, &lease) || lease.expiry <= now_ms() || owner_gone(lease.owner) ||
          lease.owner == owner_) {
        // Expired, its owner gone, ours from an earlier use that could not remove it (a request
        // takes a lease only for a session not busy here), or unreadable (a lease is written
        // whole before it is linked, so a malformed one was written by something else): taken
        // over.
        take_over(id, text);
        continue;
      }
      holder = lease.owner;
    } else if (errno == ENOENT) {
      continue;  // released meanwhile
    } else {
      holder = "unknown (" + std::string(std::strerror(errno)) + ")";
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return holder;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
        std::chrono::milliseconds(10), deadline - now));
  }
}

bool Leases::holds(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = held_.find(id);
    if (it == held_.end() || !it->second) return false;
  }
  std::string text;
  LeaseText lease;
  return read_small(path_of(id), &text) && parse(text, &lease) && lease.owner == owner_;
}

void Leases::give_back(const std::string& id) {
  std::lock_guard<std::mutex> renewing(renew_mu_);  // no renewal recreates it after the unlink
  {
    std::lock_guard<std::mutex> lock(mu_);
    held_.erase(id);
  }
  std::string text;
  LeaseText lease;
  if (read_small(path_of(id), &text) && parse(text, &lease) && lease.owner == owner_) {
    ::unlink(path_of(id).c_str());
  }
}

void Leases::renew_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(1, ttl_ms_ / 3)));
    if (stop_) break;
    std::vector<std::string> ids;
    for (const auto& [id, ok] : held_) {
      if (ok) ids.push_back(id);
    }
    lock.unlock();
    for (const std::string& id : ids) {
      std::lock_guard<std::mutex> renewing(renew_mu_);
      {
        std::lock_guard<std::mutex> relock(mu_);
        if (!held_.count(id)) continue;  // given back meanwhile
      }
      std::string text;
      LeaseText lease;
      const bool ours =
          read_small(path_of(id), &text) && parse(text, &lease) && lease.owner == owner_;
      bool renewed = false;
      if (ours) {
        const std::string mine = own_name(id);
        renewed = write_file(mine, content(), O_CREAT | O_EXCL) &&
                  ::rename(mine.c_str(), path_of(id).c_str()) == 0;
        if (!renewed) ::unlink(mine.c_str());
      }
      if (!ours) {
        log_line("lease of session " + id + " lost" +
                 (lease.owner.empty() ? std::string() : " to " + lease.owner));
        std::lock_guard<std::mutex> relock(mu_);
        auto it = held_.find(id);
        if (it != held_.end()) it->second = false;
      } else if (!renewed) {
        log_line("lease of session " + id + " could not be renewed: " + std::strerror(errno));
      }
    }
    lock.lock();
  }
}

}  // namespace serve
}  // namespace tconst_cli
