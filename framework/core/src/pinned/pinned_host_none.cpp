// Page-locked pieces where LibTorch has no CUDA (see pinned_host.h).
#include "pinned_host.h"

#include <ATen/ATen.h>

namespace cairn::detail {

at::Tensor pinned_host_tensor(const std::vector<int64_t>&, c10::ScalarType, int, std::string* why) {
  *why = "this LibTorch was built without CUDA";
  return {};
}

void copy_to_pinned(at::Tensor& dst, const at::Tensor& src) { dst.copy_(src); }

}  // namespace cairn::detail
