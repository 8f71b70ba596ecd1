// Fused Adam and AdamW for LibTorch 2.4 and newer, which have both kernels on
// the CPU and on CUDA (CMake compiles this file or fused_torch1.cpp by version).
#include "cairn/optimizers.h"

#include <ATen/ATen.h>

namespace cairn::detail {

bool fused_available(c10::DeviceType type) { return type == c10::DeviceType::CPU || type == c10::DeviceType::CUDA; }

void fused_adam(bool decoupled, std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads,
                std::vector<at::Tensor>& exp_avgs, std::vector<at::Tensor>& exp_avg_sqs,
                std::vector<at::Tensor>& max_exp_avg_sqs, std::vector<at::Tensor>& steps, double lr, double beta1,
                double beta2, double weight_decay, double eps, bool amsgrad) {
  if (decoupled) {
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, weight_decay,
                      eps, amsgrad, /*maximize=*/false);
  } else {
    at::_fused_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, weight_decay, eps,
                     amsgrad, /*maximize=*/false);
  }
}

}  // namespace cairn::detail
