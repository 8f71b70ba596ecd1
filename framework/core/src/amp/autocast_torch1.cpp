// Autocast switches of LibTorch 1.13 to 2.3: one function pair per device.
// (CMake compiles this file or autocast_torch2.cpp, as for c10d.)
#include "autocast.h"

#include <ATen/autocast_mode.h>

namespace cairn::amp {

bool enabled(c10::DeviceType device) {
  return device == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}

void set_enabled(c10::DeviceType device, bool on) {
  if (device == c10::DeviceType::CUDA) {
    at::autocast::set_enabled(on);
  } else {
    at::autocast::set_cpu_enabled(on);
  }
}

at::ScalarType dtype(c10::DeviceType device) {
  return device == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}

void set_dtype(c10::DeviceType device, at::ScalarType t) {
  if (device == c10::DeviceType::CUDA) {
    at::autocast::set_autocast_gpu_dtype(t);
  } else {
    at::autocast::set_autocast_cpu_dtype(t);
  }
}

// CPU autocast to bfloat16 only (1.13 has no float16 there; 2.0-2.3 are kept to the same).
bool supported(c10::DeviceType device, at::ScalarType t) {
  if (device == c10::DeviceType::CUDA) return t == at::kHalf || t == at::kBFloat16;
  return device == c10::DeviceType::CPU && t == at::kBFloat16;
}

int enter() { return at::autocast::increment_nesting(); }
void leave() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

}  // namespace cairn::amp
