// Data parallelism on c10d/Gloo over loopback: real worker processes
// (examples/data_parallel.cpp), a real TCPStore, real sockets on 127.0.0.1.
#include "support.h"

#include <cairn/distributed.h>
#include <cairn/objectives.h>

#include <algorithm>
#include <csignal>
#include <random>
#include <sstream>
#include <thread>

#ifndef CAIRN_EXAMPLE_DATA_PARALLEL
#error "test_distributed runs examples/data_parallel.cpp: configure with CAIRN_BUILD_EXAMPLES=ON"
#endif

namespace {
// torchrun's variables for one rank of a job on this machine.
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

TEST_CASE("the backends this build has: NCCL exactly where LibTorch has it; auto picks NCCL for CUDA models only") {
  const std::vector<std::string> have = cairn::available_backends();
  REQUIRE(!have.empty());
  CHECK(have.front() == "gloo");
  // CMake saw ProcessGroupNCCL in this LibTorch (PyPI's CUDA wheel) or not
  // (Debian's): the build compiled and linked the NCCL backend accordingly.
  const bool nccl = std::find(have.begin(), have.end(), "nccl") != have.end();
  CHECK(nccl == bool(CAIRN_TORCH_HAS_NCCL));
  const cairn::DistEnv env;
  const c10::Device cpu(c10::kCPU), cuda(c10::kCUDA, 0);
  CHECK(cairn::choose_backend("auto", cpu, env) == "gloo");
  const bool gpu = torch::cuda::device_count() >= 1;
  CHECK(cairn::choose_backend("auto", cuda, env) == (nccl && gpu ? "nccl" : "gloo"));
  // More local ranks than GPUs: auto falls back to Gloo (ranks share GPUs).
  cairn::DistEnv crowded;
  crowded.world_size = crowded.local_world_size = static_cast<int>(torch::cuda::device_count()) + 1;
  CHECK(cairn::choose_backend("auto", cuda, crowded) == "gloo");
  CHECK(cairn::choose_backend("gloo", cuda, env) == "gloo");

  auto refusal = [](const std::string& backend, const c10::Device& device, const cairn::DistEnv& e) {
    try {
      cairn::choose_backend(backend, device, e);
    } catch (const std::invalid_argument& x) {
      return std::string(x.what());
    }
    return std::string();
  };
  CHECK(refusal("mpi", cpu, env).find("must be auto, gloo or nccl, got 'mpi'") != std::string::npos);
  if (!nccl) {
    const std::string why = refusal("nccl", cuda, env);
    CHECK_MESSAGE(why.find("this LibTorch build has no NCCL") != std::string::npos, why);
    CHECK_MESSAGE(why.find("the backends this build has: gloo") != std::string::npos, why);
  } else {
    CHECK(refusal("nccl", cpu, env).find("carries CUDA tensors only, and this job trains on cpu") != std::string::npos);
    // Four local ranks need four GPUs: the refusal names both counts.
    cairn::DistEnv four;
    four.world_size = four.local_world_size = 4;
    const int gpus = static_cast<int>(torch::cuda::device_count());
    if (gpus < 4) {
      const std::string why = refusal("nccl", cuda, four);
      CHECK_MESSAGE(why.find("one GPU per local rank: 4 local ranks, " + std::to_string(gpus) + " GPUs") !=
                        std::string::npos,
                    why);
    }
  }
  // LOCAL_WORLD_SIZE (torchrun) and SLURM_NTASKS_PER_NODE give the local count.
  CHECK(cairn::DistEnv::from({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                              {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}})
            .local_world_size == 2);
  CHECK(cairn::DistEnv::from({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "8"}, {"SLURM_NTASKS_PER_NODE", "4"},
                              {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}})
            .local_world_size == 4);
  // Gloo ranks may share a GPU: local ranks wrap around the GPUs present.
  cairn::DistEnv third;
  third.world_size = 3;
  third.local_rank = 2;
  CHECK(cairn::device_for_rank(cpu, third).is_cpu());
  CHECK(cairn::device_for_rank(cuda, third).index() ==
        static_cast<c10::DeviceIndex>(2 % std::max<int64_t>(1, torch::cuda::device_count())));
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
  const double d_two = test::max_difference(a, b), d_acc = test::max_difference(a, c);
  MESSAGE("max |w1 - w2| = " << d_two << ", with accumulation " << d_acc);
  CHECK(d_two < 1e-4);
  CHECK(d_acc < 1e-4);
  // The comparison can fail: a run with another global batch differs by far more.
  auto other = test::run({CAIRN_EXAMPLE_DATA_PARALLEL, dir / "other.ckpt", "3", "16"});
  REQUIRE(other.exit_code == 0);
  CHECK(test::max_difference(a, cairn::read_checkpoint(dir / "other.ckpt").at("state_dict")) > 1e-2);
}

TEST_CASE("a peer that never arrives, or dies mid-run, is a clear error within the timeout, not a hang") {
  test::TempDir dir("dist_fail");
  // Rank 0 alone, waiting for a rank 1 that is never started: the error
  // names the 2 s it was given (the default is 60 s; no wall time is measured).
  const pid_t lone = test::spawn({CAIRN_EXAMPLE_DATA_PARALLEL, dir / "x.ckpt", "3", "16"}, dir / "lone.log", 0,
                                 rank_env(0, 2, cairn::free_local_port(), 2000));
  const int code = test::wait_exit(lone);
  const std::string lone_log = test::read_file(dir / "lone.log");
  CHECK(code == 6);
  CHECK_MESSAGE(lone_log.find("rank 0 of 2 could not join the process group at 127.0.0.1:") != std::string::npos, lone_log);
  CHECK_MESSAGE(lone_log.find(" within 2.000000 s ") != std::string::npos, lone_log);

  // Both start; rank 1 is killed after the first epoch: rank 0 reports the
  // failed collective (the closed connection, long before the timeout, which
  // is generous so that a slow start on a loaded machine still joins).
  const int port = cairn::free_local_port();
  const pid_t r0 = test::spawn({CAIRN_EXAMPLE_DATA_PARALLEL, dir / "y.ckpt", "400", "16"}, dir / "r0.log", 0,
                               rank_env(0, 2, port, 120000));
  const pid_t r1 = test::spawn({CAIRN_EXAMPLE_DATA_PARALLEL, dir / "y.ckpt", "400", "16"}, dir / "r1.log", 0,
                               rank_env(1, 2, port, 120000));
  int status0 = 0;
  bool r0_exited = false;
  const bool trained = test::wait_until([&] {
    if (::waitpid(r0, &status0, WNOHANG) == r0) return r0_exited = true;
    return test::read_file(dir / "r0.log").find("epoch 0 ") != std::string::npos;
  });
  REQUIRE_MESSAGE((trained && !r0_exited), test::read_file(dir / "r0.log"));
  ::kill(r1, SIGKILL);
  CHECK(test::wait_exit(r1) == 128 + SIGKILL);
  const int code0 = test::wait_exit(r0);
  const std::string r0_log = test::read_file(dir / "r0.log");
  CHECK(code0 == 6);
  CHECK_MESSAGE(r0_log.find("failed on rank 0 of 2") != std::string::npos, r0_log);
  CHECK_FALSE(test::fs::exists(dir / "y.ckpt"));  // nothing half-trained was written
}

// ---------------------------------------------------------------------------
// `cairn fit` as a job of several processes: the launcher, the Trainer's
// sharded data, reduced metrics, agreed stops and per-rank RNG states.
namespace {
//! A small experiment on synthetic data. With dropout, every rank's random
//! stream matters; without it (and with SGD) one process with the doubled
//! batch computes the same updates.
std::string dist_config(const std::string& run, int batch, bool dropout) {
  return "name: dist\nseed: 5\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 1000, valid_size: 200, test_size: 200, features: 16, num_classes: 4, "
         "noise: 1.0, batch_size: " + std::to_string(batch) + "}\n"
         "model: {name: mlp, hidden: [64]" + (dropout ? ", dropout: 0.3" : "") + "}\n"
         "metrics: [accuracy, {name: f1, average: macro}, {name: top_k_accuracy, k: 2}]\n"
         "optimizer: {name: " + (dropout ? "adam, lr: 0.002" : "sgd, lr: 0.1") + "}\n"
         "trainer: {max_epochs: 4, threads: 1, log_every_n_steps: 5}\n"
         "distributed: {timeout: 120}\n"
         "callbacks:\n"
         "  - {name: checkpoint, monitor: valid/acc, mode: max, save_top_k: 2, every_n_train_steps: 4}\n"
         "  - {name: csv_logger}\n";
}

cairn::Value last_checkpoint(const std::string& run) { return cairn::read_checkpoint(run + "/checkpoints/last.ckpt"); }

double metric_difference(const cairn::Value& a, const cairn::Value& b, const std::string& name) {
  const at::Tensor x = a.at("metrics").at(name).at("value").to_tensor();
  const at::Tensor y = b.at("metrics").at(name).at("value").to_tensor();
  if (x.sizes() != y.sizes()) return 1e9;
  return (x - y).abs().max().item<double>();
}

}  // namespace

TEST_CASE("cairn fit --nproc 2 with batch b: the weights and metrics of one process with batch 2b; stopped at 2 "
          "processes and resumed at 1, the sample sequence continues") {
  test::TempDir dir("dist_fit");
  const std::string one = dir / "one", two = dir / "two", moved = dir / "moved";
  test::write_file(dir / "one.yaml", dist_config(one, 32, false));
  test::write_file(dir / "two.yaml", dist_config(two, 16, false));
  test::write_file(dir / "moved.yaml", dist_config(moved, 16, false));

  auto r1 = test::cairn_cli({"fit", "--config", dir / "one.yaml"});
  REQUIRE_MESSAGE(r1.exit_code == 0, r1.output);
  auto r2 = test::cairn_cli({"fit", "--config", dir / "two.yaml", "--nproc", "2"});
  REQUIRE_MESSAGE(r2.exit_code == 0, r2.output);
  // Output carries the rank; rank 0 alone draws progress and writes files.
  CHECK_MESSAGE(r2.output.find("[rank 0] cairn: run 'dist' in " + two + " (threads 1, device cpu, 2 processes, global batch 32)") != std::string::npos, r2.output);
  CHECK(r2.output.find("[rank 1] cairn: finished") != std::string::npos);
  CHECK(r2.output.find("[rank 1] epoch") == std::string::npos);
  CHECK(test::fs::exists(two + "/metrics.csv"));

  const cairn::Value a = last_checkpoint(one), b = last_checkpoint(two);
  CHECK(a.at("global_step").to_int() == b.at("global_step").to_int());
  const double dw = test::max_difference(a.at("state_dict"), b.at("state_dict"));
  MESSAGE("N=2 x 16 vs N=1 x 32: max weight difference " << dw);
  CHECK(dw < 1e-4);
  // Metrics from running statistics (F1's per-class counts) are summed over
  // the ranks: per step for training, at the end for valid and test.
  for (const char* m : {"train/loss", "train/acc", "valid/loss", "valid/acc", "test/loss", "test/acc", "train/loss_step",
                        "train/f1_macro", "valid/f1_macro", "test/f1_macro", "train/top2_acc", "valid/top2_acc"}) {
    CHECK_MESSAGE(metric_difference(a, b, m) < 1e-5, m << " differs by " << metric_difference(a, b, m));
  }
  // Validation was split over the ranks and summed: 200 examples, not 100 or 400.
  CHECK(b.at("loop").at("world_size").to_int() == 2);
  CHECK(b.at("rng_states").at("ranks").size() == 2);

  // Stopped mid-epoch at 2 processes (SIGTERM to the launcher), resumed at 1
  // with the same global batch (32 x 1): it continues the same samples.
  const pid_t launcher = test::spawn({CAIRN_CLI, "fit", "--config", dir / "moved.yaml", "--nproc", "2"}, dir / "moved.log");
  REQUIRE(test::wait_for_file(moved + "/checkpoints/last.ckpt"));
  ::kill(launcher, SIGTERM);
  REQUIRE_MESSAGE(test::wait_exit(launcher) == 143, test::read_file(dir / "moved.log"));
  const int64_t stopped = last_checkpoint(moved).at("global_step").to_int();
  auto resumed = test::cairn_cli({"fit", "--config", dir / "moved.yaml", "--set", "data.batch_size=32"});
  REQUIRE_MESSAGE(resumed.exit_code == 0, resumed.output);
  CHECK_MESSAGE(resumed.output.find("data.batch_size: 16 -> 32 (the global batch stays 32 (2 -> 1 processes))") != std::string::npos, resumed.output);
  const cairn::Value c = last_checkpoint(moved);
  MESSAGE("stopped at step " << stopped << ", resumed at 1 process; max weight difference to N=1: "
                             << test::max_difference(a.at("state_dict"), c.at("state_dict")));
  CHECK(c.at("loop").at("resumes").size() == 1);
  CHECK(test::max_difference(a.at("state_dict"), c.at("state_dict")) < 1e-4);
  CHECK(metric_difference(a, c, "valid/acc") < 1e-5);
  // The other way, from a one-process file mid-epoch (epoch 1, batch 4) to 2
  // processes: each epoch's training means are logged once, over both parts.
  const std::string half = dir / "half";
  std::string half_yaml = dist_config(half, 32, false);
  // Every file kept (no monitor): the one at step 36 is there to resume from.
  half_yaml.replace(half_yaml.find("monitor: valid/acc, mode: max, save_top_k: 2"), 44, "save_top_k: -1");
  test::write_file(dir / "half.yaml", half_yaml);
  auto h = test::cairn_cli({"fit", "--config", dir / "half.yaml"});
  REQUIRE_MESSAGE(h.exit_code == 0, h.output);
  std::string mid;
  for (const auto& e : test::fs::directory_iterator(half + "/checkpoints")) {
    if (e.path().filename().string().find("step=36") != std::string::npos) mid = e.path().string();
  }
  REQUIRE_MESSAGE(!mid.empty(), "no checkpoint at step 36");
  REQUIRE(cairn::read_checkpoint(mid).at("batch_in_epoch").to_int() == 4);
  auto up = test::cairn_cli({"fit", "--config", dir / "half.yaml", "--resume", mid, "--nproc", "2", "--set", "data.batch_size=16"});
  REQUIRE_MESSAGE(up.exit_code == 0, up.output);
  const cairn::Value d = last_checkpoint(half);
  for (const char* m : {"train/loss", "train/acc", "train/f1_macro", "valid/acc"}) {
    CHECK_MESSAGE(metric_difference(a, d, m) < 1e-5, std::string(m) << " differs by " << metric_difference(a, d, m));
  }
  // The comparison can fail: resumed at 1 process with the per-process batch
  // unchanged (a global batch of 16), the run takes other steps.
  const std::string other = dir / "other";
  test::write_file(dir / "other.yaml", dist_config(other, 16, false));
  auto o = test::cairn_cli({"fit", "--config", dir / "other.yaml"});
  REQUIRE(o.exit_code == 0);
  CHECK(test::max_difference(a.at("state_dict"), last_checkpoint(other).at("state_dict")) > 1e-2);
}

TEST_CASE("a 2-process run survives SIGKILL of either worker (--max-restarts) and SIGTERM to the launcher, and ends "
          "bit-identical to an uninterrupted one") {
  test::TempDir dir("dist_kill");
  const std::string ref = dir / "ref", run = dir / "run", term = dir / "term";
  test::write_file(dir / "ref.yaml", dist_config(ref, 16, true));
  test::write_file(dir / "run.yaml", dist_config(run, 16, true));
  test::write_file(dir / "term.yaml", dist_config(term, 16, true));
  auto r = test::cairn_cli({"fit", "--config", dir / "ref.yaml", "--nproc", "2"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const cairn::Value expected = test::comparable(last_checkpoint(ref));

  // SIGKILL rank 1, then rank 0, each a random moment after a checkpoint exists.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> delay_ms(0, 250);
  const pid_t launcher = test::spawn({CAIRN_CLI, "fit", "--config", dir / "run.yaml", "--nproc", "2", "--max-restarts", "3"},
                                     dir / "run.log");
  int kills = 0, round = 0;
  for (int victim : {1, 0}) {
    // This round's workers: started (after `round` restarts), both alive, and
    // a checkpoint written by them (newer than the moment they were seen).
    const std::string started = round == 0 ? "starting 2 processes" : "(restart " + std::to_string(round) + " of 3)";
    std::vector<pid_t> workers;
    for (int i = 0; i < 12000; ++i) {
      if (test::read_file(dir / "run.log").find(started) != std::string::npos) {
        workers = test::children_of(launcher);
        if (workers.size() == 2) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE_MESSAGE(workers.size() == 2, test::read_file(dir / "run.log"));
    const auto seen = test::fs::file_time_type::clock::now();
    const std::string last = run + "/checkpoints/last.ckpt";
    for (int i = 0; i < 12000; ++i) {
      std::error_code ec;
      const auto t = test::fs::last_write_time(last, ec);
      if (!ec && t > seen) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ++round;
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    REQUIRE_MESSAGE(test::children_of(launcher) == workers, test::read_file(dir / "run.log"));
    // Workers are started in rank order: the lower pid is rank 0.
    if (::kill(workers[static_cast<size_t>(victim)], SIGKILL) == 0) ++kills;
  }
  const int code = test::wait_exit(launcher);
  const std::string log = test::read_file(dir / "run.log");
  REQUIRE_MESSAGE(code == 0, log);
  CHECK(kills == 2);
  CHECK_MESSAGE(log.find("rank 1 was killed by signal 9; restarting all 2 processes from the job's last checkpoint") != std::string::npos, log);
  CHECK(log.find("rank 0 was killed by signal 9; restarting all 2 processes") != std::string::npos);
  CHECK(log.find("(restart 2 of 3)") != std::string::npos);
  const cairn::Value got = last_checkpoint(run);
  CHECK(got.at("loop").at("resumes").size() >= 1);
  const cairn::Value got_cmp = test::comparable(got);
  CHECK_MESSAGE(expected.first_difference(got_cmp) == "", expected.first_difference(got_cmp));

  // SIGTERM to the launcher: both ranks stop at the same step, rank 0 saves, exit 143.
  const pid_t l2 = test::spawn({CAIRN_CLI, "fit", "--config", dir / "term.yaml", "--nproc", "2"}, dir / "term.log");
  REQUIRE(test::wait_for_file(term + "/checkpoints/last.ckpt"));
  std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
  ::kill(l2, SIGTERM);
  const int term_code = test::wait_exit(l2);
  const std::string term_log = test::read_file(dir / "term.log");
  REQUIRE_MESSAGE(term_code == 143, term_log);
  const int64_t step = last_checkpoint(term).at("global_step").to_int();
  const cairn::Value saved = last_checkpoint(term);
  const std::string at = "interrupted " + cairn::describe_position(saved.at("epoch").to_int(),
                                                                  saved.at("batch_in_epoch").to_int(), step) + ";";
  CHECK_MESSAGE(term_log.find("[rank 0] cairn: " + at) != std::string::npos, term_log);
  CHECK(term_log.find("[rank 1] cairn: " + at) != std::string::npos);
  auto resumed = test::cairn_cli({"fit", "--config", dir / "term.yaml", "--nproc", "2"});
  REQUIRE_MESSAGE(resumed.exit_code == 0, resumed.output);
  CHECK(resumed.output.find("resumed from") != std::string::npos);
  const cairn::Value term_cmp = test::comparable(last_checkpoint(term));
  CHECK_MESSAGE(expected.first_difference(term_cmp) == "", expected.first_difference(term_cmp));
}

TEST_CASE("distributed.backend nccl where it cannot run is a config error (exit 2) naming the backends this build has") {
  test::TempDir dir("dist_nccl");
  std::string cfg = dist_config(dir / "run", 16, false);
  const auto at = cfg.find("distributed: {");
  REQUIRE(at != std::string::npos);
  cfg.insert(at + std::string("distributed: {").size(), "backend: nccl, ");
  test::write_file(dir / "n.yaml", cfg);
  for (const std::vector<std::string>& extra : {std::vector<std::string>{}, {"--nproc", "2"}}) {
    std::vector<std::string> args{"fit", "--config", dir / "n.yaml"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = test::cairn_cli(args);
    if (torch::cuda::is_available()) break;  // a GPU machine may run it: test_cuda covers that
    CHECK_MESSAGE(r.exit_code == 2, r.output);
    CHECK_MESSAGE(r.output.find("distributed.backend") != std::string::npos, r.output);
    if (CAIRN_TORCH_HAS_NCCL) {
      CHECK_MESSAGE(r.output.find("this machine has no CUDA") != std::string::npos, r.output);
    } else {
      CHECK_MESSAGE(r.output.find("the backends this build has: gloo") != std::string::npos, r.output);
    }
    CHECK(!test::fs::exists(dir / "run/checkpoints"));
  }
}

TEST_CASE("cairn fit in a job whose peer never arrives exits 6 within distributed.timeout; a bad config is not restarted") {
  test::TempDir dir("dist_cli_fail");
  std::string cfg = dist_config(dir / "lone", 16, false);
  cfg.replace(cfg.find("timeout: 120"), 12, "timeout: 2");
  test::write_file(dir / "lone.yaml", cfg);
  const pid_t lone = test::spawn({CAIRN_CLI, "fit", "--config", dir / "lone.yaml"}, dir / "lone.log", 0,
                                 rank_env(0, 2, cairn::free_local_port()));
  const int code = test::wait_exit(lone);
  const std::string log = test::read_file(dir / "lone.log");
  CHECK_MESSAGE(code == 6, log);
  CHECK(log.find("cairn: distributed error: rank 0 of 2 could not join the process group at 127.0.0.1:") != std::string::npos);
  CHECK_MESSAGE(log.find(" within 2.000000 s ") != std::string::npos, log);  // distributed.timeout, not the default

  // A config error is the same on every restart: reported once, exit 2.
  test::write_file(dir / "bad.yaml", dist_config(dir / "bad", 16, false) + "trainer_typo: 1\n");
  auto bad = test::cairn_cli({"fit", "--config", dir / "bad.yaml", "--nproc", "2", "--max-restarts", "2"});
  CHECK_MESSAGE(bad.exit_code == 2, bad.output);
  CHECK(bad.output.find("restart") == std::string::npos);
  // Nested launches are refused.
  const pid_t nested = test::spawn({CAIRN_CLI, "fit", "--config", dir / "lone.yaml", "--nproc", "2"}, dir / "nested.log",
                                   0, rank_env(0, 2, cairn::free_local_port()));
  CHECK(test::wait_exit(nested) == 2);
  CHECK(test::read_file(dir / "nested.log").find("already rank 0 of one") != std::string::npos);
}

TEST_CASE("metrics measured over two ranks (c10d Gloo, uneven shares, several batches) equal one process's, which "
          "test_objectives compares with scikit-learn and torchmetrics") {
  torch::manual_seed(31);
  const int64_t n = 203, c = 7;
  at::Tensor logits = torch::randn({n, c});
  logits.select(1, 6).fill_(-1e9);  // a class never predicted
  at::Tensor y = torch::randint(0, 5, {n}, torch::kLong);
  y.masked_fill_(torch::rand({n}) < 0.2, -100);  // ignored targets
  const at::Tensor score = (torch::randn({n}, torch::kDouble) * 3).round() / 10;  // ties
  const at::Tensor label = torch::bernoulli(torch::full({n}, 0.35, torch::kDouble)).to(torch::kLong);
  const at::Tensor ry = torch::randn({n, 3}, torch::kDouble) * torch::tensor({1.0, 5.0, 2.0}, torch::kDouble) + 3.0;
  const at::Tensor rout = ry + torch::randn({n, 3}, torch::kDouble) * 0.5;
  struct M {
    std::string name;
    std::shared_ptr<const cairn::Metric> metric;
    at::Tensor out, target;
  };
  const std::vector<M> ms = {
      {"valid/acc", std::make_shared<cairn::Accuracy>(), logits, y},
      {"valid/top3_acc", std::make_shared<cairn::TopKAccuracy>(3), logits, y},
      {"valid/f1_macro", std::make_shared<cairn::F1Score>(c, cairn::F1Score::macro), logits, y},
      {"valid/f1_weighted", std::make_shared<cairn::F1Score>(c, cairn::F1Score::weighted), logits, y},
      {"valid/auroc", std::make_shared<cairn::BinaryAuroc>(), score, label},
      {"valid/r2", std::make_shared<cairn::R2Score>(), rout, ry},
  };
  // One process, all the data at once.
  std::map<std::string, double> one;
  for (const auto& m : ms) {
    cairn::MetricStats s;
    m.metric->update(s, m.out, m.target);
    one[m.name] = m.metric->compute(s);
  }
  // Two ranks: rank 0 rows [0, 70), rank 1 [70, 203), in batches of 17.
  const int port = cairn::free_local_port();
  std::map<std::string, double> got[2];
  std::string errors[2];
  auto rank = [&](int r) {
    try {
      const cairn::DistEnv env = cairn::DistEnv::from(rank_env(r, 2, port));
      auto group = cairn::ProcessGroup::join(env, std::chrono::seconds(60), "gloo");
      cairn::Loop loop;
      loop.set_process_group(group);
      for (const auto& m : ms) loop.declare_metric(m.name, m.metric);
      loop.validation_begin();
      const int64_t begin = r == 0 ? 0 : 70, end = r == 0 ? 70 : n;
      for (int64_t b = begin; b < end; b += 17) {
        for (const auto& m : ms) {
          loop.update_metric(m.name, m.out.slice(0, b, std::min(b + 17, end)), m.target.slice(0, b, std::min(b + 17, end)));
        }
      }
      loop.validation_end();
      for (const auto& m : ms) got[r][m.name] = loop.metrics().last(m.name).value_or(NAN);
    } catch (const std::exception& e) {
      errors[r] = e.what();
    }
  };
  std::thread other(rank, 1);
  rank(0);
  other.join();
  REQUIRE_MESSAGE(errors[0].empty(), errors[0]);
  REQUIRE_MESSAGE(errors[1].empty(), errors[1]);
  for (const auto& m : ms) {
    INFO(m.name << ": one process " << one[m.name] << ", ranks " << got[0][m.name] << " and " << got[1][m.name]);
    CHECK(got[0][m.name] == got[1][m.name]);
    // Counts and rows are exact in any split; R² merges centred batch sums (float64 rounding).
    if (m.name == "valid/r2") {
      CHECK(std::abs(got[0][m.name] - one[m.name]) <= 1e-12);
    } else {
      CHECK(got[0][m.name] == one[m.name]);
    }
  }
}
