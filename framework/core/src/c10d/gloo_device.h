// The Gloo device (network interface) for a group: shared by both LibTorch
// versions' group builders.
#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

namespace cairn::c10d_group {

inline std::shared_ptr<::gloo::transport::Device> gloo_device(bool loopback) {
  // One machine: loopback. Several: the interface Gloo picks for this host's name.
  return loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                  : c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace cairn::c10d_group
