// Data parallelism on PyTorch's c10d (the process groups DistributedDataParallel
// runs on): joining a process group from the environment, broadcasting a
// model from rank 0, and averaging gradients with bucketed allreduce that
// overlaps backward, as DDP does.
//
// A hand-written loop (examples/data_parallel.cpp):
//   const cairn::DistEnv env = cairn::DistEnv::from_environment();   // torchrun / SLURM variables
//   auto pg = cairn::ProcessGroup::join(env);                        // Gloo over a TCPStore
//   pg->broadcast_module(*model);                                    // rank 0's weights everywhere
//   cairn::GradientSync sync(pg, model->parameters());
//   for (...) {
//     sync.prepare_for_backward();   // only on the last backward of an accumulation cycle
//     loss.backward();               // buckets are allreduced while backward runs
//     optimizer.step();              // gradients are the mean over all ranks
//   }
//
// The Trainer (and so YAML experiments and `cairn fit --nproc N`) does all of
// this by itself when the environment names a job of more than one process;
// a Loop given the group with Loop::set_process_group() agrees on stops,
// reduces metrics and saves every rank's RNG state (see loop.h).
#pragma once

#include "cairn/torch_fwd.h"

#include <ATen/Tensor.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cairn {

//! A process group could not be formed or a collective failed (a peer that
//! never arrived, died, or timed out). The message says which and why.
class DistributedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! Where this process stands in a job, from the environment.
struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 0;  //!< processes on this machine (LOCAL_WORLD_SIZE, SLURM_NTASKS_PER_NODE); 0: not said
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "none";  //!< "torchrun", "slurm" or "none" (one process)

  bool distributed() const { return world_size > 1; }

  //! torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, else
  //! SLURM's SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (with MASTER_ADDR and
  //! MASTER_PORT). Without either, one process. Inconsistent or malformed
  //! values are a DistributedError naming the variable.
  static DistEnv from_environment();
  //! The same, from a given environment (for tests).
  static DistEnv from(const std::map<std::string, std::string>& env);
};

//! The backends this build of cairn can use: "gloo" always, "nccl" where the
//! LibTorch has c10d's ProcessGroupNCCL (PyPI's CUDA wheel; not Debian's).
std::vector<std::string> available_backends();

//! The backend a job on `device` uses: "gloo" or "nccl". `requested` is
//! "auto" (NCCL for a CUDA device where this build has it and every local
//! rank has a GPU of its own, else Gloo),
//! "gloo" (CPU and CUDA tensors; several ranks may share a GPU) or "nccl"
//! (CUDA only, one GPU per local rank). A request that cannot be met here is
//! a std::invalid_argument (a config error, exit 2) that names the backends
//! this build has, or the counts of local ranks and GPUs.
std::string choose_backend(const std::string& requested, const c10::Device& device, const DistEnv& env);

//! This rank's device when the job trains on `resolved` (cpu, or cuda):
//! CUDA ranks take GPU local_rank modulo the GPUs present (under Gloo, ranks
//! may share one; NCCL is refused by choose_backend when they would).
c10::Device device_for_rank(const c10::Device& resolved, const DistEnv& env);

//! A c10d process group over a TCPStore hosted by rank 0: Gloo for CPU
//! tensors, and NCCL or Gloo for CUDA tensors.
class ProcessGroup {
 public:
  //! Joins the group described by `env`; waits at most `timeout` for the
  //! others, and every later collective also fails after `timeout`.
  //! `backend` and `device` as for choose_backend() (`device`: where this
  //! rank's model lives; NCCL binds to it).
  static std::shared_ptr<ProcessGroup> join(const DistEnv& env,
                                            std::chrono::milliseconds timeout = std::chrono::minutes(5),
                                            const std::string& backend = "auto",
                                            const c10::Device& device = c10::Device(c10::kCPU));
  ~ProcessGroup();

  int rank() const;
  int size() const;
  //! "gloo" or "nccl": what carries CUDA tensors (CPU tensors always use Gloo).
  const std::string& backend() const;
  //! Sums each tensor over all ranks, in place.
  void allreduce_sum(std::vector<at::Tensor>& tensors);
  //! Copies `root`'s tensors into every rank's, in place.
  void broadcast(std::vector<at::Tensor>& tensors, int root = 0);
  //! Rank 0's parameters and buffers into every rank's module.
  void broadcast_module(torch::nn::Module& module);
  void barrier();
  //! Every rank's `bytes`, by rank (any lengths).
  std::vector<std::string> allgather_bytes(const std::string& bytes);
  //! `root`'s `bytes` on every rank.
  std::string broadcast_bytes(const std::string& bytes, int root = 0);

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

//! Averages gradients over the ranks as DDP does: parameters are grouped in
//! buckets of about `bucket_bytes` (in reverse order, the order in which
//! backward produces them); each bucket's allreduce starts as soon as all its
//! gradients are accumulated, so communication overlaps the rest of backward,
//! and backward returns once every bucket is averaged.
class GradientSync {
 public:
  GradientSync(std::shared_ptr<ProcessGroup> group, const std::vector<at::Tensor>& parameters,
               int64_t bucket_bytes = 25 << 20);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  //! Arms the next backward to communicate. Call it before the last backward
  //! of an accumulation cycle only; other backwards stay local (no_sync).
  void prepare_for_backward();
  size_t buckets() const;
  //! Seconds spent waiting for allreduces after backward's own work ended.
  double last_wait_seconds() const;

  struct State;

 private:
  std::unique_ptr<State> state_;
};

//! A TCP port on 127.0.0.1 that was free a moment ago (for a local job's
//! MASTER_PORT; the kernel picks it).
int free_local_port();

}  // namespace cairn
