// The autocast switches, whose C++ names differ between LibTorch up to 2.3 (a
// function pair per device) and 2.4 on (functions taking the device type):
// autocast_torch1.cpp or autocast_torch2.cpp implements them, chosen by CMake
// from CAIRN_TORCH_VERSION (no #if), as c10d/group_torch<N>.cpp.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace cairn::amp {

bool enabled(c10::DeviceType device);
void set_enabled(c10::DeviceType device, bool on);
at::ScalarType dtype(c10::DeviceType device);
void set_dtype(c10::DeviceType device, at::ScalarType t);
bool supported(c10::DeviceType device, at::ScalarType t);
//! Nesting of autocast regions; leaving the outermost clears the cast cache.
int enter();
void leave();

}  // namespace cairn::amp
