// The Trainer's captured training step (trainer.cuda_graphs): what a replay
// reads and writes, and what is applied after it. (Trainer internals; the
// logic is in trainer_graphs.cpp.)
#pragma once

#include "cuda_graph.h"

#include <ATen/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace cairn::detail {

struct GraphedStep {
  std::unique_ptr<CudaGraph> graph;
  bool captured = false;
  bool given_up = false;       //!< warned once; the run trains uncaptured
  bool warned_shape = false;   //!< said once that a batch of another shape runs uncaptured
  bool warned_moved = false;   //!< said once that the model changed and the step was captured again
  int recaptures = 0;          //!< captures after the model changed; past 3 the run trains uncaptured
  at::Tensor static_x, static_y;  //!< the replay's inputs: each batch is copied into them
  at::Tensor static_loss;         //!< the replay's loss (detached)
  std::vector<at::Tensor> params;  //!< the model's parameters, in order
  std::vector<at::Tensor> grads;   //!< their gradients, rewritten by every replay
  std::vector<uintptr_t> binding;   //!< binding_of() the model at capture: changed means capture again
  std::vector<std::function<void()>> logs;  //!< what the step logs through the Loop, applied after each replay
};

}  // namespace cairn::detail
