// The list ("foreach") and fused steps of Adam, AdamW and SGD. Each performs
// LibTorch's per-parameter arithmetic (torch/csrc/api/src/optim/*.cpp) in the
// same order, operation by operation. On the CPU a `_foreach_` op runs the
// very kernel of the single-tensor op for each list item, so foreach and
// for_loop agree bit for bit; on CUDA a list op is one launch of its own
// kernel, which may round differently (a scalar division, for one).
#include "cairn/optimizers.h"

#include "optim/state_key.h"

#include <ATen/ATen.h>
#include <torch/optim.h>
#include <torch/version.h>

#include <cmath>
#include <map>
#include <stdexcept>
#include <tuple>

namespace cairn {

const char* step_mode_name(StepMode m) {
  switch (m) {
    case StepMode::automatic: return "automatic";
    case StepMode::for_loop: return "for_loop";
    case StepMode::foreach: return "foreach";
    case StepMode::fused: return "fused";
  }
  return "?";
}

bool fused_adam_available(const c10::Device& device) { return detail::fused_available(device.type()); }

StepMode MultiTensorOptimizer::mode_on(const c10::Device& device) const {
  if (mode_ != StepMode::automatic) return mode_;
  return device.is_cuda() ? StepMode::foreach : StepMode::for_loop;
}

void MultiTensorOptimizer::check_device(const c10::Device& device) const {
  if (mode_ != StepMode::fused) return;
  if (!has_fused()) {
    throw std::invalid_argument("fused steps exist for adam and adamw only; use foreach for this optimizer");
  }
  if (!detail::fused_available(device.type())) {
    throw std::invalid_argument(std::string("fused Adam is not available on ") + c10::DeviceTypeName(device.type()) +
                                " with this LibTorch " + TORCH_VERSION +
                                " (the CPU kernel came in 2.4); use foreach, which is exact, or leave it unset");
  }
}

namespace {
namespace optim = torch::optim;

// Adam and AdamW: the parameters of one group that have gradients, their
// state (created as LibTorch creates it), bucketed by step count, since the
// bias corrections depend on it (one bucket, unless some parameter missed steps).
struct AdamBucket {
  std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs;
};
//! Step count, then (for the fused kernels, which take one device and dtype
//! per call) the device and dtype.
using BucketKey = std::tuple<int64_t, std::string, int>;

template <class State, class Options, class StateMap>
std::map<BucketKey, AdamBucket> adam_buckets(optim::OptimizerParamGroup& group, StateMap& state, const Options& o) {
  std::map<BucketKey, AdamBucket> buckets;
  for (auto& p : group.params()) {
    if (!p.grad().defined()) continue;
    TORCH_CHECK(!p.grad().is_sparse(), "Adam does not support sparse gradients");
    const auto key = detail::state_key(state, p);
    auto it = state.find(key);
    if (it == state.end()) {
      auto s = std::make_unique<State>();
      s->step(0);
      s->exp_avg(torch::zeros_like(p, at::MemoryFormat::Preserve));
      s->exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Preserve));
      if (o.amsgrad()) s->max_exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Preserve));
      it = state.emplace(key, std::move(s)).first;
    }
    auto& s = static_cast<State&>(*it->second);
    s.step(s.step() + 1);
    AdamBucket& b = buckets[BucketKey{s.step(), p.device().str(), static_cast<int>(p.scalar_type())}];
    b.params.push_back(p);
    b.grads.push_back(p.grad());
    b.exp_avgs.push_back(s.exp_avg());
    b.exp_avg_sqs.push_back(s.exp_avg_sq());
    if (o.amsgrad()) b.max_exp_avg_sqs.push_back(s.max_exp_avg_sq());
  }
  return buckets;
}

template <class State, class Options, class StateMap>
void adam_step(std::vector<optim::OptimizerParamGroup>& groups, StateMap& state, bool decoupled, StepMode mode) {
  for (auto& group : groups) {
    auto& o = static_cast<Options&>(group.options());
    const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
    for (auto& kv : adam_buckets<State>(group, state, o)) {
      const int64_t step = std::get<0>(kv.first);
      AdamBucket& b = kv.second;
      if (mode == StepMode::fused) {
        // PyTorch's fused path: one float32 step tensor per parameter, already counted.
        const at::Tensor t = at::full({}, static_cast<double>(step), b.params.front().options().dtype(at::kFloat));
        std::vector<at::Tensor> steps(b.params.size(), t);
        detail::fused_adam(decoupled, b.params, b.grads, b.exp_avgs, b.exp_avg_sqs, b.max_exp_avg_sqs, steps, o.lr(),
                           beta1, beta2, o.weight_decay(), o.eps(), o.amsgrad());
        continue;
      }
      // AdamW decays the weights first; Adam adds the decay to the gradient.
      std::vector<at::Tensor> grads = b.grads;
      if (o.weight_decay() != 0) {
        if (decoupled) {
          at::_foreach_mul_(b.params, 1 - o.lr() * o.weight_decay());
        } else {
          grads = at::_foreach_add(b.grads, b.params, o.weight_decay());
        }
      }
      const double bias_correction1 = 1 - std::pow(beta1, step);
      const double bias_correction2 = 1 - std::pow(beta2, step);
      at::_foreach_mul_(b.exp_avgs, beta1);
      at::_foreach_add_(b.exp_avgs, grads, 1 - beta1);
      at::_foreach_mul_(b.exp_avg_sqs, beta2);
      at::_foreach_addcmul_(b.exp_avg_sqs, grads, grads, 1 - beta2);
      std::vector<at::Tensor> denom;
      if (o.amsgrad()) {
        at::_foreach_maximum_(b.max_exp_avg_sqs, b.exp_avg_sqs);
        denom = at::_foreach_sqrt(b.max_exp_avg_sqs);
      } else {
        denom = at::_foreach_sqrt(b.exp_avg_sqs);
      }
      at::_foreach_div_(denom, std::sqrt(bias_correction2));
      at::_foreach_add_(denom, o.eps());
      at::_foreach_addcdiv_(b.params, b.exp_avgs, denom, -(o.lr() / bias_correction1));
    }
  }
}

//! Where the parameters are (the first one's device; the CPU for none).
c10::Device params_device(const std::vector<optim::OptimizerParamGroup>& groups) {
  for (const auto& g : groups) {
    if (!g.params().empty()) return g.params().front().device();
  }
  return c10::Device(c10::kCPU);
}

template <class Body>
at::Tensor with_closure(const optim::Optimizer::LossClosure& closure, Body body) {
  at::NoGradGuard no_grad;
  at::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  body();
  return loss;
}

//! Adam's and AdamW's step(): LibTorch's own (`base`) for the per-parameter
//! mode, else the list or fused arithmetic.
template <class State, class Options, class StateMap, class BaseStep>
at::Tensor adam_like_step(const MultiTensorOptimizer& self, std::vector<optim::OptimizerParamGroup>& groups,
                          StateMap& state, bool decoupled, optim::Optimizer::LossClosure closure, BaseStep base) {
  const c10::Device device = params_device(groups);
  const StepMode mode = self.mode_on(device);
  if (mode == StepMode::for_loop) return base(std::move(closure));
  if (mode == StepMode::fused) self.check_device(device);
  return with_closure(closure, [&] { adam_step<State, Options>(groups, state, decoupled, mode); });
}
}  // namespace

Adam::Adam(std::vector<at::Tensor> params, torch::optim::AdamOptions options, StepMode mode)
    : torch::optim::Adam(std::move(params), options), MultiTensorOptimizer(mode) {}

at::Tensor Adam::step(LossClosure closure) {
  return adam_like_step<torch::optim::AdamParamState, torch::optim::AdamOptions>(
      *this, param_groups_, state_, /*decoupled=*/false, std::move(closure),
      [this](LossClosure c) { return torch::optim::Adam::step(std::move(c)); });
}

AdamW::AdamW(std::vector<at::Tensor> params, torch::optim::AdamWOptions options, StepMode mode)
    : torch::optim::AdamW(std::move(params), options), MultiTensorOptimizer(mode) {}

at::Tensor AdamW::step(LossClosure closure) {
  return adam_like_step<torch::optim::AdamWParamState, torch::optim::AdamWOptions>(
      *this, param_groups_, state_, /*decoupled=*/true, std::move(closure),
      [this](LossClosure c) { return torch::optim::AdamW::step(std::move(c)); });
}

SGD::SGD(std::vector<at::Tensor> params, torch::optim::SGDOptions options, StepMode mode)
    : torch::optim::SGD(std::move(params), options), MultiTensorOptimizer(mode) {}

at::Tensor SGD::step(LossClosure closure) {
  const c10::Device device = params_device(param_groups_);
  const StepMode mode = mode_on(device);
  if (mode == StepMode::for_loop) return torch::optim::SGD::step(std::move(closure));
  if (mode == StepMode::fused) check_device(device);
  return with_closure(closure, [&] {
    for (auto& group : param_groups_) {
      auto& o = static_cast<torch::optim::SGDOptions&>(group.options());
      std::vector<at::Tensor> params, grads;
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        params.push_back(p);
        grads.push_back(p.grad().data());
      }
      if (params.empty()) continue;
      std::vector<at::Tensor> d_p = grads;
      if (o.weight_decay() != 0) d_p = at::_foreach_add(grads, params, o.weight_decay());
      if (o.momentum() != 0) {
        // A parameter's first step starts its buffer as a copy of d_p (no decay
        // of a zero buffer); the others decay theirs, all in one list op.
        std::vector<at::Tensor> bufs(params.size()), old_bufs, old_dp;
        for (size_t i = 0; i < params.size(); ++i) {
          const auto key = detail::state_key(state_, params[i]);
          auto it = state_.find(key);
          if (it == state_.end()) {
            bufs[i] = d_p[i].detach().clone();
            auto s = std::make_unique<torch::optim::SGDParamState>();
            s->momentum_buffer(bufs[i]);
            state_.emplace(key, std::move(s));
          } else {
            bufs[i] = static_cast<torch::optim::SGDParamState&>(*it->second).momentum_buffer();
            old_bufs.push_back(bufs[i]);
            old_dp.push_back(d_p[i]);
          }
        }
        if (!old_bufs.empty()) {
          at::_foreach_mul_(old_bufs, o.momentum());
          at::_foreach_add_(old_bufs, old_dp, 1 - o.dampening());
        }
        d_p = o.nesterov() ? at::_foreach_add(d_p, bufs, o.momentum()) : bufs;
      }
      std::vector<at::Tensor> data;
      for (auto& p : params) data.push_back(p.data());
      at::_foreach_add_(data, d_p, -1 * o.lr());
    }
  });
}

}  // namespace cairn
