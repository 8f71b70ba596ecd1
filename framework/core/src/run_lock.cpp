#include "cairn/run_lock.h"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <filesystem>
#include <map>
#include <mutex>
#include <sys/file.h>
#include <unistd.h>

namespace cairn {

namespace fs = std::filesystem;

namespace {
std::mutex registry_mutex;
std::map<std::string, std::weak_ptr<RunLock>>& registry() {
  static std::map<std::string, std::weak_ptr<RunLock>> r;
  return r;
}

std::string read_holder(int fd) {
  char buf[512];
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return "an unknown process";
  std::string s(buf, static_cast<size_t>(n));
  std::string out;
  for (char c : s) out += (c == '\n') ? ' ' : c;
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::string now_text() {
  char buf[64];
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %z", &tm);
  return buf;
}
}  // namespace

std::string RunLock::file() const { return (fs::path(dir_) / ".cairn.lock").string(); }

std::shared_ptr<RunLock> RunLock::acquire(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create the run directory " + dir + ": " + ec.message());
  const std::string canonical = fs::weakly_canonical(dir, ec).string();
  std::lock_guard<std::mutex> guard(registry_mutex);
  auto& reg = registry();
  if (auto it = reg.find(canonical); it != reg.end()) {
    if (auto held = it->second.lock()) return held;
  }
  const std::string path = (fs::path(canonical) / ".cairn.lock").string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot open the lock file " + path + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    const std::string holder = e == EWOULDBLOCK ? read_holder(fd) : std::string(std::strerror(e));
    ::close(fd);
    throw RunLocked("the run directory " + dir + " is in use by another process (" + holder +
                    "; lock file " + path + "). Wait for it to finish or stop it, or train in another --run-dir");
  }
  char host[256] = "unknown";
  ::gethostname(host, sizeof host - 1);
  const std::string text =
      "pid " + std::to_string(::getpid()) + ", host " + host + ", started " + now_text() + "\n";
  // Who holds the lock is information for a refused second process; the
  // lock itself is the flock. A failure to record it is said, not fatal.
  int e = ::ftruncate(fd, 0) != 0 ? errno : 0;
  if (e == 0) {
    const ssize_t w = ::pwrite(fd, text.data(), text.size(), 0);
    if (w < 0) e = errno;
    else if (static_cast<size_t>(w) != text.size()) e = EIO;
  }
  if (e != 0) {
    std::fprintf(stderr, "cairn: warning: cannot record this process in the lock file %s: %s (the lock holds)\n",
                 path.c_str(), std::strerror(e));
  }
  std::shared_ptr<RunLock> lock(new RunLock(canonical, fd));
  reg[canonical] = lock;
  return lock;
}

RunLock::~RunLock() {
  // Closing the last descriptor releases the flock (whatever close says).
  if (fd_ >= 0 && ::close(fd_) != 0) {
    std::fprintf(stderr, "cairn: warning: closing the lock file in %s failed: %s\n", dir_.c_str(),
                 std::strerror(errno));
  }
}

}  // namespace cairn
