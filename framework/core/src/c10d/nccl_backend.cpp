// c10d's NCCL backend (LibTorch 2.x CUDA builds: PyPI's torch wheel).
#include "nccl_backend.h"

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <c10/cuda/CUDAFunctions.h>

namespace cairn::c10d_group {

bool nccl_compiled() { return true; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                    std::chrono::milliseconds timeout, int cuda_device) {
  // NCCL's communicator is bound to the device that is current when the first
  // collective runs; make it this rank's GPU for good.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_device));
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  c10::intrusive_ptr<c10d::Backend> backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
  return backend;
}

}  // namespace cairn::c10d_group
