// Building a c10d process group: the one place that knows how LibTorch's
// versions differ here. In 1.13 a backend (ProcessGroupGloo) *is* a
// c10d::ProcessGroup; since 2.0 a ProcessGroup holds one c10d::Backend per
// device type. CMake compiles exactly one of group_torch1.cpp and
// group_torch2.cpp (cmake/CairnTorch.cmake), and nccl_backend.cpp only where the
// LibTorch has ProcessGroupNCCL; no #if elsewhere.
#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace cairn::c10d_group {

struct Spec {
  c10::intrusive_ptr<c10d::Store> store;
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout{0};
  bool loopback = true;  //!< one machine: Gloo on 127.0.0.1, else the host name's interface
  bool nccl = false;     //!< CUDA tensors over NCCL (CPU tensors keep Gloo)
  int cuda_device = 0;   //!< this rank's GPU, when nccl
};

//! A group whose CPU tensors go over Gloo, and CUDA tensors over NCCL when
//! `spec.nccl`, else over Gloo as well.
c10::intrusive_ptr<c10d::ProcessGroup> make(const Spec& spec);

//! The backends this build can make: "gloo", and "nccl" where LibTorch has it.
std::vector<std::string> backends();

}  // namespace cairn::c10d_group
