// Models: a module plus its forward function, and the built-in `mlp` and `cnn`.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

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

struct MlpOptions {
  std::vector<int64_t> input_shape{1, 28, 28};
  std::vector<int64_t> hidden{256, 128};
  int64_t num_classes = 10;
  double dropout = 0.0;
};
//! Flatten -> [Linear -> ReLU -> Dropout]* -> Linear.
torch::nn::Sequential make_mlp(const MlpOptions& o);

struct CnnOptions {
  std::vector<int64_t> input_shape{1, 28, 28};
  std::vector<int64_t> channels{32, 64};
  int64_t hidden = 128;
  int64_t num_classes = 10;
  double dropout = 0.0;
};
//! [Conv3x3 -> ReLU -> MaxPool2]* -> Flatten -> Linear -> ReLU -> Dropout -> Linear.
torch::nn::Sequential make_cnn(const CnnOptions& o);

//! "1,234 parameters (1,234 trainable)" and one line per layer.
std::string model_summary(torch::nn::Module& module);

}  // namespace cairn
