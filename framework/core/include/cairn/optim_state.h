// Optimizer state <-> PyTorch's `optimizer.state_dict()` layout.
//
// {"state": {param_index: {...}}, "param_groups": [{"lr": ..., ..., "params": [i...]}]}
// Group options are saved and restored too: LibTorch 1.13's own
// `torch::load(optimizer)` silently drops them. Supported: SGD, Adam, AdamW,
// RMSprop, Adagrad.
#pragma once

#include "cairn/value.h"
#include "cairn/torch_fwd.h"

namespace cairn {

Value optimizer_state_dict(torch::optim::Optimizer& optimizer);
//! Throws std::runtime_error naming the mismatch (optimizer type, group count, shapes).
void load_optimizer_state_dict(torch::optim::Optimizer& optimizer, const Value& state);
//! "adam", "adamw", "sgd", "rmsprop", "adagrad" or "unknown".
std::string optimizer_kind(torch::optim::Optimizer& optimizer);

}  // namespace cairn
