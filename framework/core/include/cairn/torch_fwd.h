// Forward declarations of the LibTorch types that cairn's headers only name
// (by reference or pointer), so those headers need not pull in the heavy
// torch/optim and torch/nn headers.
#pragma once

namespace torch {
namespace nn {
class Module;
}  // namespace nn
namespace optim {
class Optimizer;
}  // namespace optim
}  // namespace torch
