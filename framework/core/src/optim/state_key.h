// LibTorch keys optimizer state by the parameter's TensorImpl: a string in
// 1.13, a pointer in 2.x. state_key builds whichever the installed version uses.
#pragma once

#include <ATen/Tensor.h>

#include <sstream>
#include <string>
#include <type_traits>

namespace cairn::detail {

template <class Map>
typename Map::key_type state_key(const Map&, const at::Tensor& p) {
  using K = typename Map::key_type;
  if constexpr (std::is_same_v<K, std::string>) {
    std::ostringstream os;
    os << p.unsafeGetTensorImpl();
    return os.str();
  } else {
    return reinterpret_cast<K>(p.unsafeGetTensorImpl());
  }
}

}  // namespace cairn::detail
