// The built-in models of YAML experiments (application layer): `mlp`, `cnn`
// and `torchscript` (a module scripted or traced in Python).
#pragma once

#include "cairn/model.h"

#include <torch/nn/modules/container/sequential.h>

#include <string>
#include <vector>

namespace cairn {

struct MlpOptions {
  std::vector<int64_t> input_shape{1, 28, 28};
  std::vector<int64_t> hidden{256, 128};
  int64_t num_classes = 10;
  double dropout = 0.0;
};
//! Flatten -> [Linear -> ReLU -> Dropout]* -> Linear.
torch::nn::Sequential make_mlp(const MlpOptions& o);

struct CnnOptions {
  std::vector<int64_t> input_shape{1, 28, 28};
  std::vector<int64_t> channels{32, 64};
  int64_t hidden = 128;
  int64_t num_classes = 10;
  double dropout = 0.0;
};
//! [Conv3x3 -> ReLU -> MaxPool2]* -> Flatten -> Linear -> ReLU -> Dropout -> Linear.
torch::nn::Sequential make_cnn(const CnnOptions& o);

//! A module from Python, saved with torch.jit.script(m).save(path) or
//! torch.jit.trace(m, example).save(path), as a Model. Its parameters and
//! buffers appear under the Python module's own names ("conv.weight",
//! "bn.running_mean"), so checkpoints load back with
//! `module.load_state_dict(torch.load(ckpt)["state_dict"])`; train()/eval()
//! reach the scripted code (Dropout, BatchNorm). A traced module keeps the
//! control flow of its trace: prefer torch.jit.script for models whose
//! behaviour changes between training and evaluation.
//! The graph executor's optimisations are turned off process-wide, so that a
//! resumed process runs the same kernels as the one it continues (exact resume).
//! Throws std::invalid_argument naming the file when it cannot be loaded.
Model load_torchscript(const std::string& path);

}  // namespace cairn
