// LibTorch 1.x: ProcessGroupGloo is itself a c10d::ProcessGroup, and carries
// CPU and CUDA tensors. (Debian's 1.13 has no NCCL: see nccl_backend.cpp.)
#include "group.h"

#include "gloo_device.h"

#include <stdexcept>

namespace cairn::c10d_group {

c10::intrusive_ptr<c10d::ProcessGroup> make(const Spec& spec) {
  if (spec.nccl) throw std::logic_error("c10d_group::make: NCCL asked of a LibTorch 1.x build");
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->devices.push_back(gloo_device(spec.loopback));
  opts->timeout = spec.timeout;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(spec.store, spec.rank, spec.size, opts);
}

std::vector<std::string> backends() { return {"gloo"}; }

}  // namespace cairn::c10d_group
