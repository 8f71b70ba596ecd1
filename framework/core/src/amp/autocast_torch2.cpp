// Autocast switches of LibTorch 2.4 and later: functions taking the device type.
// (CMake compiles this file or autocast_torch1.cpp, as for c10d.)
#include "autocast.h"

#include <ATen/autocast_mode.h>

namespace cairn::amp {

bool enabled(c10::DeviceType device) { return at::autocast::is_autocast_enabled(device); }
void set_enabled(c10::DeviceType device, bool on) { at::autocast::set_autocast_enabled(device, on); }
at::ScalarType dtype(c10::DeviceType device) { return at::autocast::get_autocast_dtype(device); }
void set_dtype(c10::DeviceType device, at::ScalarType t) { at::autocast::set_autocast_dtype(device, t); }

// 2.x's CPU autocast casts to bfloat16 and float16.
bool supported(c10::DeviceType device, at::ScalarType t) {
  if (device == c10::DeviceType::CUDA || device == c10::DeviceType::CPU) return t == at::kHalf || t == at::kBFloat16;
  return false;
}

int enter() { return at::autocast::increment_nesting(); }
void leave() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

}  // namespace cairn::amp
