#include "cairn/rng.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/cuda.h>

#include <mutex>

namespace cairn {

namespace {
at::Tensor get_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
void set_state(at::Generator gen, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state.to(at::kCPU).contiguous().clone());
}
}  // namespace

Value capture_rng_states(const std::map<std::string, at::Generator>& extra) {
  Value d = Value::dict();
  d.set("cpu", get_state(at::detail::getDefaultCPUGenerator()));
  if (torch::cuda::is_available()) {
    Value cuda = Value::list();
    const auto n = static_cast<int>(torch::cuda::device_count());
    for (int i = 0; i < n; ++i) {
      cuda.push_back(get_state(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, i))));
    }
    d.set("cuda", std::move(cuda));
  }
  for (const auto& kv : extra) d.set(kv.first, get_state(kv.second));
  return d;
}

void restore_rng_states(const Value& states, const std::map<std::string, at::Generator>& extra) {
  set_state(at::detail::getDefaultCPUGenerator(), states.at("cpu").to_tensor());
  if (const Value* cuda = states.find("cuda")) {
    if (torch::cuda::is_available()) {
      const auto n = static_cast<size_t>(torch::cuda::device_count());
      for (size_t i = 0; i < std::min(n, cuda->size()); ++i) {
        set_state(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<int>(i))),
                  cuda->items()[i].to_tensor());
      }
    }
  }
  for (const auto& kv : extra) {
    if (const Value* s = states.find(kv.first)) set_state(kv.second, s->to_tensor());
  }
}

}  // namespace cairn
