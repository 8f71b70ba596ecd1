// Model weights in and out of the Value tree: a module's state_dict, loading
// one (strict or not, every mismatch named), and starting from a weights file
// (a torch.save state_dict or a cairn checkpoint). Declared in cairn/loop.h.
#include "cairn/checkpoint_file.h"
#include "cairn/loop.h"

#include <torch/torch.h>

#include <sstream>

namespace cairn {

Value model_state(const torch::nn::Module& model) {
  Value d = Value::dict();
  for (const auto& p : model.named_parameters(true)) d.set(p.key(), p.value().detach());
  for (const auto& b : model.named_buffers(true)) d.set(b.key(), b.value().detach());
  return d;
}

void load_model_state(torch::nn::Module& model, const Value& state_dict, bool strict) {
  std::vector<std::string> missing, mismatched;
  std::vector<std::pair<std::string, at::Tensor>> targets;
  for (const auto& p : model.named_parameters(true)) targets.emplace_back(p.key(), p.value());
  for (const auto& b : model.named_buffers(true)) targets.emplace_back(b.key(), b.value());
  for (const auto& t : targets) {
    const Value* v = state_dict.find(t.first);
    if (!v || !v->is_tensor()) {
      missing.push_back(t.first);
    } else if (v->to_tensor().sizes() != t.second.sizes()) {
      std::ostringstream os;
      os << t.first << " (checkpoint " << v->to_tensor().sizes() << ", model " << t.second.sizes() << ")";
      mismatched.push_back(os.str());
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& k : state_dict.keys()) {
    const std::string name = k.is_string() ? k.to_string() : std::to_string(k.to_int());
    bool known = false;
    for (const auto& t : targets) known = known || t.first == name;
    if (!known) unexpected.push_back(name);
  }
  if (!mismatched.empty() || (strict && (!missing.empty() || !unexpected.empty()))) {
    std::ostringstream os;
    os << "the weights do not match the model:";
    auto list = [&os](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      os << "\n  " << what << ":";
      for (const auto& n : names) os << "\n    " << n;
    };
    list("missing in the checkpoint", missing);
    list("unexpected in the checkpoint", unexpected);
    list("shape mismatch", mismatched);
    throw CheckpointMismatch(os.str());
  }
  torch::NoGradGuard no_grad;
  for (auto& t : targets) {
    if (const Value* v = state_dict.find(t.first)) {
      if (v->is_tensor()) t.second.copy_(v->to_tensor());
    }
  }
}

void load_weights(torch::nn::Module& model, const std::string& path, bool strict) {
  ReadOptions ro;
  ro.require_checksum = false;
  Value v = read_checkpoint(path, ro);
  if (!v.is_dict()) throw CheckpointError(path + " does not hold a dict of tensors");
  if (const Value* sd = v.find("state_dict")) {
    if (sd->is_dict()) {
      Value inner = *sd;  // copy first: *sd lives inside v
      v = std::move(inner);
    }
  }
  load_model_state(model, v, strict);
}

}  // namespace cairn
