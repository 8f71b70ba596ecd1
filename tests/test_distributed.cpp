// Data parallelism on c10d/Gloo over loopback: real worker processes
// (examples/data_parallel.cpp), a real TCPStore, real sockets on 127.0.0.1.
#include "support.h"

#include <cairn/distributed.h>

#include <csignal>

#ifndef CAIRN_EXAMPLE_DATA_PARALLEL
#error "test_distributed runs examples/data_parallel.cpp: configure with CAIRN_BUILD_EXAMPLES=ON"
#endif

namespace {
// A port nobody listens on right now (the kernel picks it).
std::map<std::string, std::string> rank_env(int rank, int world, int port, int timeout_ms = 60000) {
  return {{"RANK", std::to_string(rank)},       {"WORLD_SIZE", std::to_string(world)},
          {"LOCAL_RANK", std::to_string(rank)}, {"MASTER_ADDR", "127.0.0.1"},
          {"MASTER_PORT", std::to_string(port)}, {"CAIRN_DIST_TIMEOUT_MS", std::to_string(timeout_ms)}};
}

// Runs the example as `world` processes; returns rank 0's and rank 1's exit codes.
std::vector<int> run_workers(int world, const std::string& out, const std::string& batch, const std::string& accumulate,
                             const std::string& log_prefix) {
  const int port = cairn::free_local_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    pids.push_back(test::spawn({CAIRN_EXAMPLE_DATA_PARALLEL, out, "3", batch, accumulate},
                               log_prefix + std::to_string(r) + ".log", 0, rank_env(r, world, port)));
  }
  std::vector<int> codes;
  for (pid_t p : pids) codes.push_back(test::wait_exit(p));
  return codes;
}

double max_difference(const cairn::Value& a, const cairn::Value& b) {
  double d = 0;
  for (size_t i = 0; i < a.keys().size(); ++i) {
    const at::Tensor x = a.values()[i].to_tensor(), y = b.at(a.keys()[i].to_string()).to_tensor();
    d = std::max(d, (x - y).abs().max().item<double>());
  }
  return d;
}
}  // namespace

TEST_CASE("the process-group environment: torchrun's and SLURM's variables, errors naming the variable") {
  using cairn::DistEnv;
  const DistEnv one = DistEnv::from({{"HOME", "/root"}});
  CHECK_FALSE(one.distributed());
  CHECK(one.source == "none");
  const DistEnv t = DistEnv::from({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"},
                                   {"MASTER_ADDR", "10.0.0.5"}, {"MASTER_PORT", "29400"}});
  CHECK(t.distributed());
  CHECK(t.source == "torchrun");
  CHECK(t.rank == 1);
  CHECK(t.world_size == 4);
  CHECK(t.master_addr == "10.0.0.5");
  CHECK(t.master_port == 29400);
  const DistEnv s = DistEnv::from({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"},
                                   {"MASTER_ADDR", "node1"}, {"MASTER_PORT", "29500"}});
  CHECK(s.source == "slurm");
  CHECK(s.rank == 3);
  CHECK(s.local_rank == 1);
  CHECK(s.world_size == 8);
  // A plain one-task SLURM job without a rendezvous stays one process.
  CHECK_FALSE(DistEnv::from({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}).distributed());

  auto error = [](const std::map<std::string, std::string>& env) {
    try {
      DistEnv::from(env);
    } catch (const cairn::DistributedError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}}).find("RANK=2 is not below WORLD_SIZE=2") != std::string::npos);
  CHECK(error({{"RANK", "0"}, {"WORLD_SIZE", "two"}}).find("WORLD_SIZE='two' is not an integer") != std::string::npos);
  CHECK(error({{"RANK", "0"}}).find("sets RANK but not WORLD_SIZE") != std::string::npos);
  CHECK(error({{"RANK", "0"}, {"WORLD_SIZE", "2"}}).find("needs MASTER_ADDR and MASTER_PORT") != std::string::npos);
  CHECK(error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "70000"}}).find("not a TCP port") != std::string::npos);
}

TEST_CASE("2 processes with batch b end with the weights of 1 process with batch 2b, with and without accumulation") {
  test::TempDir dir("dist_equal");
  auto one = test::run({CAIRN_EXAMPLE_DATA_PARALLEL, dir / "one.ckpt", "3", "32"});
  REQUIRE_MESSAGE(one.exit_code == 0, one.output);

  const auto codes = run_workers(2, dir / "two.ckpt", "16", "1", dir / "two-");
  const std::vector<int> ok{0, 0};
  REQUIRE_MESSAGE(codes == ok, (test::read_file(dir / "two-0.log") + test::read_file(dir / "two-1.log")));
  const std::string log1 = test::read_file(dir / "two-1.log");
  CHECK_MESSAGE(log1.find("rank 1: ") != std::string::npos, log1);
  CHECK(log1.find("gradient buckets") != std::string::npos);

  const auto acc = run_workers(2, dir / "acc.ckpt", "16", "2", dir / "acc-");
  REQUIRE_MESSAGE(acc == ok, (test::read_file(dir / "acc-0.log") + test::read_file(dir / "acc-1.log")));

  const cairn::Value a = cairn::read_checkpoint(dir / "one.ckpt").at("state_dict");
  const cairn::Value b = cairn::read_checkpoint(dir / "two.ckpt").at("state_dict");
  const cairn::Value c = cairn::read_checkpoint(dir / "acc.ckpt").at("state_dict");
  REQUIRE(a.keys().size() == 4);
  // Sums in another order: float32 rounding, nothing more (the weights moved by ~1).
  const double d_two = max_difference(a, b), d_acc = max_difference(a, c);
  MESSAGE("max |w1 - w2| = " << d_two << ", with accumulation " << d_acc);
  CHECK(d_two < 1e-4);
  CHECK(d_acc < 1e-4);
  // The comparison can fail: a run with another global batch differs by far more.
  auto other = test::run({CAIRN_EXAMPLE_DATA_PARALLEL, dir / "other.ckpt", "3", "16"});
  REQUIRE(other.exit_code == 0);
  CHECK(max_difference(a, cairn::read_checkpoint(dir / "other.ckpt").at("state_dict")) > 1e-2);
}

TEST_CASE("a peer that never arrives, or dies mid-run, is a clear error within the timeout, not a hang") {
  test::TempDir dir("dist_fail");
  // Rank 0 alone, waiting for a rank 1 that is never started.
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t lone = test::spawn({CAIRN_EXAMPLE_DATA_PARALLEL, dir / "x.ckpt", "3", "16"}, dir / "lone.log", 0,
                                 rank_env(0, 2, cairn::free_local_port(), 2000));
  const int code = test::wait_exit(lone);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string lone_log = test::read_file(dir / "lone.log");
  CHECK(code == 3);
  CHECK_MESSAGE(lone_log.find("rank 0 of 2 could not join the process group at 127.0.0.1:") != std::string::npos, lone_log);
  CHECK(waited < 30);

  // Both start; rank 1 is killed after the first epoch: rank 0 reports the failed collective.
  const int port = cairn::free_local_port();
  const pid_t r0 = test::spawn({CAIRN_EXAMPLE_DATA_PARALLEL, dir / "y.ckpt", "400", "16"}, dir / "r0.log", 0,
                               rank_env(0, 2, port, 5000));
  const pid_t r1 = test::spawn({CAIRN_EXAMPLE_DATA_PARALLEL, dir / "y.ckpt", "400", "16"}, dir / "r1.log", 0,
                               rank_env(1, 2, port, 5000));
  for (int i = 0; i < 60000 && test::read_file(dir / "r0.log").find("epoch 0 ") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::kill(r1, SIGKILL);
  CHECK(test::wait_exit(r1) == 128 + SIGKILL);
  const auto t1 = std::chrono::steady_clock::now();
  const int code0 = test::wait_exit(r0);
  const double after = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  const std::string r0_log = test::read_file(dir / "r0.log");
  CHECK(code0 == 3);
  CHECK_MESSAGE(r0_log.find("failed on rank 0 of 2") != std::string::npos, r0_log);
  CHECK(after < 30);
  CHECK_FALSE(test::fs::exists(dir / "y.ckpt"));  // nothing half-trained was written
}
