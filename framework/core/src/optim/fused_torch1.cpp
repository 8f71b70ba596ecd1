// LibTorch before 2.4: no fused Adam on the CPU and no fused AdamW at all, so
// fused steps are refused (MultiTensorOptimizer::check_device says so before
// training starts). CMake compiles this file or fused_torch2.cpp by version.
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
