#include "cairn/launcher.h"

#include "cairn/distributed.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <stdexcept>

namespace cairn {

namespace {

volatile std::sig_atomic_t g_signal = 0;
volatile std::sig_atomic_t g_count = 0;
void on_signal(int sig) {
  g_signal = sig;
  g_count = g_count + 1;
}

struct Stream {
  int fd = -1;
  FILE* to = nullptr;
  std::string partial;  //!< text after the last newline
};

struct Worker {
  pid_t pid = -1;
  Stream out, err;
  bool exited = false;
  int code = 0;        //!< exit code, or 128+N for a death by signal N
  bool by_signal = false;
  bool killed = false;  //!< stopped by the launcher after another worker failed
};

void write_all(FILE* to, const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), to);
  std::fflush(to);
}

//! Forwards complete lines (and carriage-return updates) with the rank prefix.
void pump(Stream& s, int rank, bool at_eof) {
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(s.fd, buf, sizeof buf);
    if (n > 0) {
      s.partial.append(buf, static_cast<size_t>(n));
      if (n == sizeof buf) continue;
      break;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) at_eof = true;
    break;
  }
  const std::string prefix = "[rank " + std::to_string(rank) + "] ";
  std::string out;
  size_t start = 0;
  for (size_t i = 0; i < s.partial.size(); ++i) {
    if (s.partial[i] == '\n' || s.partial[i] == '\r') {
      out += prefix + s.partial.substr(start, i + 1 - start);
      start = i + 1;
    }
  }
  s.partial.erase(0, start);
  if (at_eof && !s.partial.empty()) {
    out += prefix + s.partial + "\n";
    s.partial.clear();
  }
  if (!out.empty()) write_all(s.to, out);
  if (at_eof) {
    ::close(s.fd);
    s.fd = -1;
  }
}

Worker spawn(const LaunchOptions& o, const std::vector<std::string>& args, int rank, int port) {
  int out[2], err[2];
  // Close-on-exec: a worker inherits only its own two pipe ends (dup2'd onto
  // 1 and 2), never its siblings', so one worker's death is seen as EOF.
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }
  const pid_t launcher = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    // Die with the launcher: a `kill -9` of it must not leave workers that
    // train on and hold the run's lock. (SIGKILL: the last durable checkpoint
    // stands, as after a machine's death.) The check after prctl closes the
    // window where the launcher died before it took effect.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != launcher) ::_exit(137);
    // Its own process group: a terminal's SIGINT reaches the workers only
    // through the launcher, once (a second SIGINT would abort without saving).
    ::setpgid(0, 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    ::close(out[0]), ::close(out[1]), ::close(err[0]), ::close(err[1]);
    std::signal(SIGTERM, SIG_DFL);
    std::signal(SIGINT, SIG_DFL);
    ::setenv("RANK", std::to_string(rank).c_str(), 1);
    ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
    ::setenv("WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
    ::setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(o.program.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(o.program.c_str(), argv.data());
    std::fprintf(stderr, "cairn: cannot start %s: %s\n", o.program.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  Worker w;
  w.pid = pid;
  w.out.fd = out[0];
  w.out.to = stdout;
  w.err.fd = err[0];
  w.err.to = stderr;
  return w;
}

std::string describe(const Worker& w) {
  return w.by_signal ? "was killed by signal " + std::to_string(w.code - 128) : "exited with code " + std::to_string(w.code);
}

}  // namespace

int launch_workers(const LaunchOptions& o) {
  if (o.nproc < 1) throw std::invalid_argument("--nproc must be at least 1");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  const std::vector<std::string>* args = &o.args;
  std::vector<std::string> restart;
  for (int attempt = 0;; ++attempt) {
    const int port = free_local_port();
    std::cout << "cairn: starting " << o.nproc << " processes on 127.0.0.1:" << port
              << (attempt ? " (restart " + std::to_string(attempt) + " of " + std::to_string(o.max_restarts) + ")" : "")
              << "\n";
    std::cout.flush();
    std::vector<Worker> workers;
    for (int r = 0; r < o.nproc; ++r) workers.push_back(spawn(o, *args, r, port));

    int forwarded = 0;
    bool aborted = false;
    int first_failure = -1;
    for (;;) {
      std::vector<pollfd> fds;
      std::vector<std::pair<int, Stream*>> streams;
      for (int r = 0; r < o.nproc; ++r) {
        for (Stream* s : {&workers[static_cast<size_t>(r)].out, &workers[static_cast<size_t>(r)].err}) {
          if (s->fd < 0) continue;
          fds.push_back({s->fd, POLLIN, 0});
          streams.emplace_back(r, s);
        }
      }
      if (!fds.empty()) {
        ::poll(fds.data(), fds.size(), 100);
      } else {
        ::usleep(50 * 1000);
      }
      for (size_t i = 0; i < fds.size(); ++i) {
        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) pump(*streams[i].second, streams[i].first, false);
      }
      if (g_signal != 0 && forwarded == 0) {
        forwarded = g_signal;
        std::cerr << "cairn: " << (forwarded == SIGINT ? "SIGINT" : "SIGTERM")
                  << ": passing it to every process; they save at the same step and stop\n";
        for (auto& w : workers) {
          if (!w.exited) ::kill(w.pid, forwarded);
        }
      }
      if (g_count >= 2 && forwarded != 0 && !aborted) {
        aborted = true;
        // A second Ctrl-C: stop at once, as one process does (nothing more is saved).
        std::cerr << "cairn: second signal: stopping every process now, without saving\n";
        for (auto& w : workers) {
          if (!w.exited) ::kill(w.pid, SIGKILL);
        }
      }
      bool all_exited = true;
      for (int r = 0; r < o.nproc; ++r) {
        Worker& w = workers[static_cast<size_t>(r)];
        if (!w.exited) {
          int status = 0;
          const pid_t p = ::waitpid(w.pid, &status, WNOHANG);
          if (p == w.pid) {
            w.exited = true;
            w.by_signal = WIFSIGNALED(status);
            w.code = w.by_signal ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
            if (w.code != 0 && first_failure < 0 && forwarded == 0) {
              first_failure = r;
              // The others would wait for it until the timeout: stop them now.
              for (auto& other : workers) {
                if (!other.exited) {
                  ::kill(other.pid, SIGKILL);
                  other.killed = true;
                }
              }
            }
          }
        }
        all_exited = all_exited && w.exited;
      }
      if (all_exited && fds.empty()) break;
      if (all_exited) {
        // Drain what is left in the pipes.
        for (auto& st : streams) pump(*st.second, st.first, true);
        break;
      }
    }

    if (forwarded != 0) {
      if (aborted) return 128 + forwarded;
      for (const auto& w : workers) {
        if (w.code != 0 && w.code != 128 + forwarded) return w.code;
      }
      return 128 + forwarded;
    }
    if (first_failure < 0) return 0;
    // A worker that lost its peer (6) usually reports second-hand: name the
    // cause when another worker failed on its own.
    for (int r = 0; r < o.nproc; ++r) {
      const Worker& w = workers[static_cast<size_t>(r)];
      if (workers[static_cast<size_t>(first_failure)].code == 6 && !w.killed && w.code != 0 && w.code != 6) {
        first_failure = r;
      }
    }
    const Worker& failed = workers[static_cast<size_t>(first_failure)];
    const bool restartable = failed.by_signal || failed.code == 1 || failed.code == 6;
    if (restartable && attempt < o.max_restarts) {
        const LaunchOptions::Restart how = o.restart ? o.restart() : LaunchOptions::Restart{o.args, "with the same arguments"};
      restart = how.args;
      std::cerr << "cairn: rank " << first_failure << " " << describe(failed) << "; restarting all " << o.nproc
                << " processes " << how.how << "\n";
      args = &restart;
      continue;
    }
    std::cerr << "cairn: rank " << first_failure << " " << describe(failed)
              << (restartable ? (o.max_restarts > 0 ? "; no restarts left" : "; --max-restarts K restarts it") : "")
              << "\n";
    return failed.code;
  }
}

}  // namespace cairn
