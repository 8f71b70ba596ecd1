// Adam, AdamW and SGD whose step can run as one kernel per operation over all
// parameters ("foreach", LibTorch's `_foreach_*` ops) or as one fused kernel
// ("fused", `_fused_adam_`/`_fused_adamw_`, LibTorch 2.4 and newer), as
// PyTorch's `foreach=` and `fused=` arguments.
//
// They are LibTorch's own optimizers (cairn::Adam derives from
// torch::optim::Adam): the same options, the same per-parameter state, the same
// checkpoint layout as PyTorch's `optimizer.state_dict()`. Only the kernels of
// step() differ:
//   for_loop  LibTorch's step, parameter by parameter (about 7 kernels each)
//   foreach   the same operations, in the same order, on lists: on the CPU
//             the same results bit for bit (tests/test_optimizers.cpp checks
//             it); on CUDA the list kernels are their own implementations and
//             may round differently (test_cuda measures it); far fewer launches
//   fused     one kernel for all of Adam's arithmetic; it rounds differently
//             (2.4e-7 to 3.5e-7 largest relative difference after 100 steps
//             on the CPU, measured by tests/test_optimizers.cpp)
//   automatic foreach when the parameters are on a CUDA device, for_loop
//             elsewhere (PyTorch's default: on the CPU the list ops gain nothing)
//
// A hand-written loop uses them like LibTorch's:
//   cairn::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));   // automatic
//   cairn::AdamW fused(model->parameters(), torch::optim::AdamWOptions(1e-3), cairn::StepMode::fused);
#pragma once

#include <c10/core/Device.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <string>
#include <vector>

namespace cairn {

enum class StepMode { automatic, for_loop, foreach, fused };

const char* step_mode_name(StepMode m);

//! The step-mode part of cairn's optimizers (found by dynamic_cast on any
//! torch::optim::Optimizer, which the Trainer does to check the device).
class MultiTensorOptimizer {
 public:
  explicit MultiTensorOptimizer(StepMode mode) : mode_(mode) {}
  virtual ~MultiTensorOptimizer() = default;
  StepMode requested_mode() const { return mode_; }
  //! What a step of parameters on `device` runs (automatic resolved).
  StepMode mode_on(const c10::Device& device) const;
  //! Throws std::invalid_argument, naming what can run, when this LibTorch
  //! cannot run the requested mode on `device` (fused before 2.4, fused SGD).
  virtual void check_device(const c10::Device& device) const;

 protected:
  virtual bool has_fused() const { return false; }

 private:
  StepMode mode_;
};

class Adam : public torch::optim::Adam, public MultiTensorOptimizer {
 public:
  Adam(std::vector<at::Tensor> params, torch::optim::AdamOptions options = torch::optim::AdamOptions(),
       StepMode mode = StepMode::automatic);
  at::Tensor step(LossClosure closure = nullptr) override;

 protected:
  bool has_fused() const override { return true; }
};

class AdamW : public torch::optim::AdamW, public MultiTensorOptimizer {
 public:
  AdamW(std::vector<at::Tensor> params, torch::optim::AdamWOptions options = torch::optim::AdamWOptions(),
        StepMode mode = StepMode::automatic);
  at::Tensor step(LossClosure closure = nullptr) override;

 protected:
  bool has_fused() const override { return true; }
};

//! SGD with foreach (fused is not offered for SGD: asking for it throws).
class SGD : public torch::optim::SGD, public MultiTensorOptimizer {
 public:
  SGD(std::vector<at::Tensor> params, torch::optim::SGDOptions options, StepMode mode = StepMode::automatic);
  at::Tensor step(LossClosure closure = nullptr) override;
};

//! Whether this LibTorch has fused Adam kernels for `device`'s type.
bool fused_adam_available(const c10::Device& device);

namespace detail {
//! The fused kernels (src/optim/fused_torch{1,2}.cpp, chosen by version).
void fused_adam(bool decoupled, std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads,
                std::vector<at::Tensor>& exp_avgs, std::vector<at::Tensor>& exp_avg_sqs,
                std::vector<at::Tensor>& max_exp_avg_sqs, std::vector<at::Tensor>& steps, double lr, double beta1,
                double beta2, double weight_decay, double eps, bool amsgrad);
bool fused_available(c10::DeviceType type);
}  // namespace detail

}  // namespace cairn
