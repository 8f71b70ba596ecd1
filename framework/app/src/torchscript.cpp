// `model: {name: torchscript, path: model.pt}`: a TorchScript module trained
// through an nn::Module that mirrors its hierarchy. The mirror registers the
// very tensors of the script module (not copies), so the optimizer, device
// moves, checkpoints and the scripted forward all see one set of weights.
#include "cairn/models.h"

#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/script.h>

#include <stdexcept>

namespace cairn {

namespace {

class ScriptModel : public torch::nn::Module {
 public:
  explicit ScriptModel(torch::jit::Module module) : Module("TorchScript"), script_(std::move(module)) {
    mirror(script_, *this);
  }

  at::Tensor forward(const at::Tensor& x) {
    auto out = script_.forward({x});
    if (!out.isTensor()) {
      throw std::runtime_error("the TorchScript module's forward returned " + out.tagKind() + ", not a tensor");
    }
    return out.toTensor();
  }

  void train(bool on) override {
    script_.train(on);
    torch::nn::Module::train(on);
  }

 private:
  static void mirror(const torch::jit::Module& from, torch::nn::Module& to) {
    for (const auto& p : from.named_parameters(/*recurse=*/false)) {
      to.register_parameter(p.name, p.value, p.value.requires_grad());
    }
    for (const auto& b : from.named_buffers(/*recurse=*/false)) {
      if (b.value.defined()) to.register_buffer(b.name, b.value);
    }
    for (const auto& c : from.named_children()) {
      auto child = std::make_shared<torch::nn::Module>(c.value.type()->name() ? c.value.type()->name()->name() : c.name);
      mirror(c.value, *child);
      to.register_module(c.name, child);
    }
  }

  torch::jit::Module script_;
};

}  // namespace

Model load_torchscript(const std::string& path) {
  torch::jit::Module m;
  try {
    m = torch::jit::load(path, torch::kCPU);
  } catch (const std::exception& e) {
    std::string what = e.what();
    if (const auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    throw std::invalid_argument("cannot load the TorchScript module " + path + ": " + what +
                             " (save it in Python with torch.jit.script(module).save(path))");
  }
  // The profiling executor re-optimises graphs after a few calls; a resumed
  // process would run different graphs at different steps. Plain execution
  // keeps every step's arithmetic the same across restarts.
  torch::jit::setGraphExecutorOptimize(false);
  auto model = std::make_shared<ScriptModel>(std::move(m));
  Model out;
  out.module = model;
  out.forward = [model](const at::Tensor& x) { return model->forward(x); };
  return out;
}

}  // namespace cairn
