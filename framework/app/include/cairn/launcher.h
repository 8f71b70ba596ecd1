// The local launcher behind `cairn fit --nproc N [--max-restarts K]`.
//
// Starts N copies of a program on this machine as ranks 0..N-1 of one job,
// with the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT), and:
//   - prefixes every line they print with "[rank R] " (stdout to stdout,
//     stderr to stderr);
//   - forwards SIGTERM and SIGINT to every worker once (the workers run in a
//     process group of their own, so a terminal's Ctrl-C reaches them only
//     through the launcher), and they stop together at the same step; a
//     second signal kills them at once (nothing more is saved);
//   - when a worker dies (a signal, or exit code 1 or 6), stops the others
//     (SIGKILL: the last durable checkpoint stands) and, up to K times, starts
//     all N again with the arguments `restart()` returns at that moment
//     (the CLI's: the original ones until the job has written a checkpoint,
//     then a resume from it, never --overwrite again);
//   - workers die with the launcher (PR_SET_PDEATHSIG): a `kill -9` of it
//     leaves no worker training on, holding the run's lock;
//   - exits with the workers' code: 0, 128+N after a forwarded signal N, or
//     the first failing worker's code (128+N when it died by signal N).
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace cairn {

struct LaunchOptions {
  int nproc = 2;
  int max_restarts = 0;
  std::string program;                    //!< the executable (e.g. /proc/self/exe)
  std::vector<std::string> args;          //!< argv[1..] of the first start
  //! How to restart, asked at each restart: argv[1..] and a few words for
  //! the log ("from the job's last checkpoint"). Unset: `args` again.
  struct Restart {
    std::vector<std::string> args;
    std::string how;
  };
  std::function<Restart()> restart;
};

//! Runs the job to its end; returns the exit code described above.
int launch_workers(const LaunchOptions& options);

}  // namespace cairn
