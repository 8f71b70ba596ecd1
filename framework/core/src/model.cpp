#include "cairn/model.h"

#include <torch/torch.h>

#include <sstream>

namespace cairn {

namespace nn = torch::nn;

namespace {
std::string grouped(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}
}  // namespace

std::string model_summary(nn::Module& module) {
  std::ostringstream os;
  int64_t total = 0, trainable = 0;
  for (const auto& child : module.named_children()) {
    int64_t n = 0;
    for (const auto& p : child.value()->parameters()) n += p.numel();
    std::ostringstream name;
    child.value()->pretty_print(name);
    os << "  " << child.key() << "  " << name.str();
    if (n) os << "  " << grouped(n) << " params";
    os << "\n";
  }
  for (const auto& p : module.parameters()) {
    total += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  os << "  " << grouped(total) << " parameters (" << grouped(trainable) << " trainable, "
     << grouped(total - trainable) << " frozen)\n";
  return os.str();
}

}  // namespace cairn
