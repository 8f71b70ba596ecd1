// LibTorch before 2.4: no fused Adam kernel on the CPU (1.13 has a CUDA one
// for Adam only; 2.0-2.3 CUDA ones whose signatures moved between versions).
// cairn uses fused kernels from 2.4 on and refuses them before
// (MultiTensorOptimizer::check_device says so before training starts).
// CMake compiles this file or fused_torch2.cpp by version.
#include "cairn/optimizers.h"

#include <stdexcept>

namespace cairn::detail {

bool fused_available(c10::DeviceType) { return false; }

void fused_adam(bool, std::vector<at::Tensor>&, std::vector<at::Tensor>&, std::vector<at::Tensor>&,
                std::vector<at::Tensor>&, std::vector<at::Tensor>&, std::vector<at::Tensor>&, double, double, double,
                double, double, bool) {
  throw std::invalid_argument("fused Adam needs LibTorch 2.4 or newer; use foreach, which is exact");
}

}  // namespace cairn::detail
