// RunLock: one owner per run directory.
//
// A process that trains in a run directory (the CLI, a Trainer, a hand-written
// Loop with a checkpoint folder) holds an exclusive flock(2) on
// `<dir>/.cairn.lock` for as long as it trains. A second process is refused at
// once with RunLocked, whose message names the holder (pid, host, start time).
// The kernel drops a flock when its holder dies, so a lock left by a killed
// process never blocks anyone; the file itself stays and is harmless.
//
// Within one process, acquiring the same directory again shares the lock
// (flock would otherwise conflict with itself through a second open file).
//
//   auto lock = cairn::RunLock::acquire("runs/x");  // throws RunLocked
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

namespace cairn {

//! Another live process holds the run directory. Exit code 4 in the CLI.
class RunLocked : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class RunLock {
 public:
  //! Locks `dir` (created if missing), or shares this process's existing lock on it.
  static std::shared_ptr<RunLock> acquire(const std::string& dir);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  const std::string& dir() const { return dir_; }
  //! The lock file, `<dir>/.cairn.lock`.
  std::string file() const;

 private:
  RunLock(std::string dir, int fd) : dir_(std::move(dir)), fd_(fd) {}
  std::string dir_;  //!< canonical directory
  int fd_ = -1;      //!< the open lock file holding the flock
};

}  // namespace cairn
