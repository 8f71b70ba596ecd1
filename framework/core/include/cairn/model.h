// Model: what the Trainer trains (a module plus its forward function).
// The built-in models of YAML experiments are in cairn/models.h.
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <vector>

namespace cairn {

//! What the Trainer trains: a module (for parameters, train/eval, device
//! moves) and how to call it. Wrap any module holder with Model::wrap():
//!   auto net = torch::nn::Linear(10, 2);
//!   cairn::Model model = cairn::Model::wrap(net);
struct Model {
  std::shared_ptr<torch::nn::Module> module;
  std::function<at::Tensor(const at::Tensor&)> forward;

  template <class Holder>
  static Model wrap(Holder holder) {
    Model m;
    m.module = holder.ptr();
    m.forward = [holder](const at::Tensor& x) mutable { return holder->forward(x); };
    return m;
  }
  explicit operator bool() const { return module != nullptr; }
};

//! "1,234 parameters (1,234 trainable)" and one line per layer.
std::string model_summary(torch::nn::Module& module);

}  // namespace cairn
