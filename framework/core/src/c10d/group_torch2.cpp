// LibTorch 2.x: a c10d::ProcessGroup holds a Backend per device type, as
// Python's init_process_group("cpu:gloo,cuda:nccl") builds it. CPU tensors
// (cairn's byte gathers, stop agreement, metric reductions) always go over
// Gloo; CUDA tensors (gradient buckets, the model broadcast) over NCCL when
// asked, else over Gloo too.
#include "group.h"

#include "gloo_device.h"
#include "nccl_backend.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

namespace cairn::c10d_group {

c10::intrusive_ptr<c10d::ProcessGroup> make(const Spec& spec) {
  auto group = c10::make_intrusive<c10d::ProcessGroup>(spec.store, spec.rank, spec.size);
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->devices.push_back(gloo_device(spec.loopback));
  opts->timeout = spec.timeout;
  // Each backend gets its own key space in the store, as Python's does.
  auto gloo_store = c10::make_intrusive<c10d::PrefixStore>("gloo", spec.store);
  c10::intrusive_ptr<c10d::Backend> gloo =
      c10::make_intrusive<c10d::ProcessGroupGloo>(gloo_store, spec.rank, spec.size, opts);
  using BT = c10d::ProcessGroup::BackendType;
  group->setDefaultBackend(BT::GLOO);
  group->setBackend(c10::DeviceType::CPU, BT::GLOO, gloo);
  if (spec.nccl) {
    auto nccl_store = c10::make_intrusive<c10d::PrefixStore>("nccl", spec.store);
    group->setBackend(c10::DeviceType::CUDA, BT::NCCL,
                      make_nccl_backend(nccl_store, spec.rank, spec.size, spec.timeout, spec.cuda_device));
  } else {
    group->setBackend(c10::DeviceType::CUDA, BT::GLOO, gloo);
  }
  return group;
}

std::vector<std::string> backends() {
  std::vector<std::string> out{"gloo"};
  if (nccl_compiled()) out.push_back("nccl");
  return out;
}

}  // namespace cairn::c10d_group
