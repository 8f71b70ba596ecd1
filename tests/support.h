// Test helpers: temp folders, real child processes, small configs.
#pragma once

#include <cairn/cairn.h>
#include "doctest_torch.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fcntl.h>
#include <ftw.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace test {

namespace fs = std::filesystem;

//! Removes a folder tree. (std::filesystem::remove_all crashed on the GPU
//! machine's toolchain, GCC 13 headers over another libstdc++; nftw is plain POSIX.)
inline void remove_tree(const fs::path& p) {
  ::nftw(
      p.c_str(), [](const char* f, const struct stat*, int, struct FTW*) { return ::remove(f); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

//! A fresh folder under the build tree, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path = fs::path(CAIRN_BINARY_DIR) / "test_tmp" / (name + "-" + std::to_string(::getpid()));
    remove_tree(path);
    fs::create_directories(path);
  }
  ~TempDir() { remove_tree(path); }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
  std::string str() const { return path.string(); }
};

inline std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_file(const std::string& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

struct ProcessResult {
  int exit_code = -1;   //!< exit status, or 128+signal when killed
  std::string output;   //!< stdout and stderr together
};

//! Starts `args` with stdout+stderr to `log`; returns the pid. `file_size_limit`
//! > 0 sets the child's RLIMIT_FSIZE (writes past it fail with EFBIG).
inline pid_t spawn(const std::vector<std::string>& args, const std::string& log, long file_size_limit = 0,
                   const std::map<std::string, std::string>& env = {}) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    for (const auto& kv : env) ::setenv(kv.first.c_str(), kv.second.c_str(), 1);
    if (file_size_limit > 0) {
      struct rlimit rl {static_cast<rlim_t>(file_size_limit), static_cast<rlim_t>(file_size_limit)};
      ::setrlimit(RLIMIT_FSIZE, &rl);
      ::signal(SIGXFSZ, SIG_IGN);
    }
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

inline int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

inline ProcessResult run(const std::vector<std::string>& args, long file_size_limit = 0) {
  static int counter = 0;
  const std::string log = (fs::temp_directory_path() / ("cairn-test-" + std::to_string(::getpid()) + "-" +
                                                       std::to_string(counter++) + ".log")).string();
  ProcessResult r;
  r.exit_code = wait_exit(spawn(args, log, file_size_limit));
  r.output = read_file(log);
  fs::remove(log);
  return r;
}

inline ProcessResult cairn_cli(std::vector<std::string> args, long file_size_limit = 0) {
  args.insert(args.begin(), CAIRN_CLI);
  return run(args, file_size_limit);
}

//! A real small filesystem: a tmpfs of `bytes` mounted at `dir` (needs root,
//! as in CI). mounted() is false where mounting is not allowed.
struct SmallDisk {
  std::string dir;
  bool ok = false;
  SmallDisk(const std::string& d, long bytes) : dir(d) {
    fs::create_directories(dir);
    const std::string opts = "size=" + std::to_string(bytes);
    ok = ::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) == 0;
  }
  ~SmallDisk() {
    if (ok) ::umount2(dir.c_str(), MNT_DETACH);
  }
  bool mounted() const { return ok; }
  //! Fills the disk until only `free_bytes` remain (a file named filler).
  void leave_free(long free_bytes) {
    const auto space = fs::space(dir);
    const long avail = static_cast<long>(space.available);
    const long fill = std::max<long>(0, avail - free_bytes);
    std::ofstream f(dir + "/filler", std::ios::binary);
    std::string block(1 << 16, 'x');
    for (long left = fill; left > 0; left -= static_cast<long>(block.size())) {
      f.write(block.data(), static_cast<std::streamsize>(std::min<long>(left, static_cast<long>(block.size()))));
    }
  }
  void remove_filler() { fs::remove(dir + "/filler"); }
};

//! A small ext4 filesystem on a loop device (root only): a real block device,
//! where direct I/O has alignment rules and a full disk says ENOSPC to
//! O_DIRECT writes (tmpfs accepts any alignment).
struct LoopDisk {
  std::string dir, image;
  bool ok = false;
  LoopDisk(const std::string& d, long bytes) : dir(d), image(d + ".img") {
    if (::geteuid() != 0) return;
    fs::create_directories(dir);
    { std::ofstream(image, std::ios::binary).flush(); }
    fs::resize_file(image, static_cast<uintmax_t>(bytes));
    ok = std::system(("mkfs.ext4 -q -F '" + image + "' >/dev/null 2>&1 && mount -o loop '" + image + "' '" + dir +
                      "' >/dev/null 2>&1").c_str()) == 0;
  }
  ~LoopDisk() {
    if (ok && std::system(("umount '" + dir + "' >/dev/null 2>&1 || umount -l '" + dir + "'").c_str()) != 0) {
      std::fprintf(stderr, "could not unmount %s\n", dir.c_str());
    }
    fs::remove(image);
  }
  bool mounted() const { return ok; }
};

inline ProcessResult python(const std::string& script, std::vector<std::string> args) {
  args.insert(args.begin(), std::string(CAIRN_SOURCE_DIR) + "/tests/python/" + script);
  args.insert(args.begin(), CAIRN_PYTHON);
  return run(args);
}

//! Synthetic data (16 features, 4 classes) with 32 validation and 32 test examples.
inline std::shared_ptr<cairn::SyntheticData> synthetic(int64_t train, int64_t batch) {
  cairn::SyntheticOptions o;
  o.train_size = train;
  o.valid_size = 32;
  o.test_size = 32;
  o.batch_size = batch;
  return std::make_shared<cairn::SyntheticData>(o);
}

//! A small, fast experiment on real Fashion-MNIST (or synthetic data).
inline std::string small_config(const std::string& run_dir, const std::string& extra_callbacks = "",
                                int epochs = 2, int limit_train = 640, const std::string& data = "") {
  std::ostringstream c;
  c << "name: small\nseed: 7\nrun: {dir: " << run_dir << "}\n";
  if (data.empty()) {
    c << "data: {name: fashion_mnist, batch_size: 32, valid_fraction: 0.1, limit_train: " << limit_train
      << ", limit_test: 500}\n";
  } else {
    c << data << "\n";
  }
  c << "model: {name: mlp, hidden: [32], dropout: 0.2}\n"
       "optimizer: {name: adam, lr: 0.002}\n"
       "scheduler: {name: cosine, warmup_steps: 5}\n"
       "trainer: {max_epochs: " << epochs << ", threads: 1, log_every_n_steps: 4}\n"
       "callbacks:\n"
       "  - {name: checkpoint, monitor: valid/acc, mode: max, save_top_k: 2, every_n_train_steps: 3}\n"
       "  - {name: early_stopping, monitor: valid/loss, patience: 5}\n"
       "  - {name: csv_logger}\n"
       "  - {name: progress_bar}\n"
    << extra_callbacks;
  return c.str();
}

//! Removes what legitimately differs between two runs of the same experiment
//! (their folders, and the record of where one of them resumed).
inline cairn::Value comparable(cairn::Value c) {
  c.erase("hyper_parameters");
  cairn::Value& loop = c.at("loop");
  loop.erase("resumes");
  cairn::Value& cbs = c.at("callbacks");
  for (size_t i = 0; i < cbs.keys().size(); ++i) {
    cairn::Value& s = cbs.items()[i];
    for (const char* k : {"dirpath", "best_model_path", "last_model_path"}) {
      if (cairn::Value* v = s.find(k)) *v = fs::path(v->to_string()).filename().string();
    }
    if (cairn::Value* sum = s.find("summary")) {
      if (cairn::Value* v = sum->find("best_path")) *v = fs::path(v->to_string()).filename().string();
    }
    if (cairn::Value* np = s.find("newest_paths")) {
      for (auto& item : np->items()) item = cairn::Value(fs::path(item.to_string()).filename().string());
    }
    if (cairn::Value* bk = s.find("best_k_models")) {
      cairn::Value renamed = cairn::Value::dict();
      for (size_t j = 0; j < bk->keys().size(); ++j) {
        renamed.set(fs::path(bk->keys()[j].to_string()).filename().string(), bk->values()[j]);
      }
      *bk = renamed;
    }
    if (cairn::Value* np = s.find("newest_paths")) {
      for (auto& p : np->items()) p = fs::path(p.to_string()).filename().string();
    }
  }
  return c;
}

//! Fits the YAML experiment `first` in-process, stopped (as SIGTERM would)
//! at global step `stop` (0: never), then resumed with config `second` (""
//! for `first` again); returns the final checkpoint, comparable across runs.
//! `on_stop` sees the run directory's last.ckpt each time the run stopped.
inline cairn::Value fit_stop_resume(const std::string& first, const std::string& second, int64_t stop,
                                    const std::function<void(const cairn::Value&)>& on_stop = {}) {
  cairn::register_builtin_callbacks();
  const std::string rounds[2] = {first, second.empty() ? first : second};
  for (int round = 0; round < 2; ++round) {
    auto spec = cairn::parse_experiment(rounds[round]);
    auto t = cairn::build_trainer(spec);
    t->resume_from(spec.run_dir + "/checkpoints");
    if (round == 0 && stop > 0) {
      t->loop().on(cairn::Event::batch_end, [stop](cairn::Loop& l) {
        if (l.state().global_step == stop) l.state().request_interrupt(SIGTERM, "test stop");
      });
    }
    const std::string last = spec.run_dir + "/checkpoints/last.ckpt";
    if (!t->fit().interrupted) return comparable(cairn::read_checkpoint(last));
    if (on_stop) on_stop(cairn::read_checkpoint(last));
  }
  FAIL("the run did not finish");
  return {};
}

//! A process's live children (a launcher's workers), from /proc, by pid.
inline std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  {
    // The children its main thread forked (the launcher forks from it).
    const std::string p = std::to_string(parent);
    std::istringstream in(test::read_file("/proc/" + p + "/task/" + p + "/children"));
    for (pid_t c; in >> c;) out.push_back(c);
    if (!out.empty()) {
      std::sort(out.begin(), out.end());
      return out;
    }
  }
  std::error_code ec;
  for (const auto& e : test::fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = test::read_file(e.path().string() + "/stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent && state != 'Z') out.push_back(static_cast<pid_t>(std::stol(name)));
  }
  std::sort(out.begin(), out.end());
  return out;
}

//! How long a wait for another process's progress may take before the test
//! calls it a hang. Only a hang guard: no test's outcome depends on speed,
//! so it is far beyond what the slowest loaded machine needs.
constexpr double hang_guard_seconds = 600;

//! Polls `done` every `poll_ms` until it holds (true) or, for a process that
//! hangs, until the hang guard runs out (false). Tests wait for progress they
//! can see (a file, a line, a step count), never for a fraction of a time.
inline bool wait_until(const std::function<bool()>& done, int poll_ms = 5,
                       double guard_seconds = hang_guard_seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(guard_seconds);
  while (!done()) {
    if (std::chrono::steady_clock::now() >= end) return false;
    if (poll_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(poll_ms));
    else std::this_thread::yield();
  }
  return true;
}

//! Waits until `path` exists (false: the hang guard ran out).
inline bool wait_for_file(const std::string& path, double guard_seconds = hang_guard_seconds) {
  return wait_until([&] { return test::fs::exists(path); }, 5, guard_seconds);
}

//! Whether `sig` is pending for process `pid` (sent, not yet taken by a
//! handler): /proc/PID/status's process-wide and main-thread masks. False
//! once the process has exited.
inline bool signal_pending(pid_t pid, int sig) {
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
  const unsigned long long bit = 1ULL << (sig - 1);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("ShdPnd:", 0) == 0 || line.rfind("SigPnd:", 0) == 0) {
      if (std::stoull(line.substr(7), nullptr, 16) & bit) return true;
    }
  }
  return false;
}

//! Reads a running `cairn fit`'s output as it grows and counts the training
//! steps it has printed: the progress bar's plain lines ("epoch E/M step B/T",
//! one each `log_every_n_steps`, on output that is not a terminal) give the
//! global step (E-1)*T+B. Steps are what a kill test counts, so its kills land
//! at the same points of the run on an idle and on a loaded machine.
struct StepsPrinted {
  std::string path;       //!< the process's output file
  std::streamoff read = 0;  //!< bytes parsed so far (whole lines only)
  int64_t steps = 0;      //!< the largest global step seen so far (0: none yet)
  explicit StepsPrinted(std::string log) : path(std::move(log)) {}
  //! Parses what was written since the last call; returns the steps seen so far.
  int64_t update() {
    std::ifstream in(path, std::ios::binary);
    if (!in) return steps;
    in.seekg(read);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // a line still being written: parse it next time
      read += static_cast<std::streamoff>(line.size() + 1);
      long long e = 0, m = 0, b = 0, t = 0;
      if (std::sscanf(line.c_str(), "epoch %lld/%lld step %lld/%lld", &e, &m, &b, &t) == 4 && e >= 1) {
        steps = std::max<int64_t>(steps, (e - 1) * t + b);
      }
    }
    return steps;
  }
};

//! The largest absolute difference between two state dicts' tensors (by `a`'s keys).
inline double max_difference(const cairn::Value& a, const cairn::Value& b) {
  double d = 0;
  for (size_t i = 0; i < a.keys().size(); ++i) {
    const at::Tensor x = a.values()[i].to_tensor(), y = b.at(a.keys()[i].to_string()).to_tensor();
    d = std::max(d, (x - y).abs().max().item<double>());
  }
  return d;
}

}  // namespace test
