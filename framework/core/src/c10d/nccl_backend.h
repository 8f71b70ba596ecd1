// c10d's NCCL backend, compiled only where LibTorch has ProcessGroupNCCL
// (nccl_backend.cpp); elsewhere nccl_backend_none.cpp says so.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace cairn::c10d_group {

bool nccl_compiled();
//! A ProcessGroupNCCL bound to `cuda_device`.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                    std::chrono::milliseconds timeout, int cuda_device);

}  // namespace cairn::c10d_group
