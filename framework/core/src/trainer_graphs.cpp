// trainer.cuda_graphs: the training step's forward pass, loss and backward
// pass captured once in a CUDA graph and replayed for every batch of the same
// shape (TrainerOptions::cuda_graphs says what the user sees).
//
// What is captured, and why only that:
//   - forward, loss, backward: the many small launches of a small model;
//   - not the optimizer step: LibTorch's optimizers keep step counts and
//     learning rates on the host, which a graph would freeze (a scheduler
//     changes the rate every step); with optimizer.foreach or fused it is a
//     handful of launches anyway, and checkpoints stay exactly as without;
//   - not the metrics: their statistics are new tensors each step (so a
//     snapshot holds old ones without a copy), which a graph cannot make. The
//     Loop records what the step logs (Loop::record_step_logs) and the
//     records are applied after each replay to the step's outputs.
// Exactness: dropout draws from the device's generator, whose state is the
// checkpoint's; a replay advances its offset as the uncaptured kernels would.
// The capture is checked rather than assumed: the first full batch runs
// uncaptured from a saved state (random generator, buffers), then the
// capture replays from the same state, and the loss, every gradient and
// every buffer must be equal bit for bit, else the run trains uncaptured.
// CUDA's sync debug mode (process-wide) is on during that uncaptured run: a
// host read in the step throws there instead of breaking the capture; no
// other cairn thread waits for the device meanwhile (the prefetcher only
// gathers rows, the checkpoint writer works on host copies).
// What training_step must not do: depend on host values that change between
// steps (global_step, an annealing factor: the capture freezes them), change
// host state, or log through MetricLog directly (the Loop's log_step_tensor
// and update_metric are recorded; log_step and log are refused), or replace
// tensors it reads that are neither parameters nor buffers (plain members:
// the graph would read their old memory).
#include "cairn/trainer.h"

#include "graph/graphed_step.h"

#include <torch/torch.h>

#include <iostream>
#include <mutex>
#include <set>
#include <sstream>

namespace cairn {

namespace {
//! What a captured graph is bound to: where each parameter and buffer lives,
//! which parameters take gradients, which modules are in training mode. A
//! change (a parameter replaced or frozen, a submodule put in eval mode) means
//! the graph would train something else: capture again.
std::vector<uintptr_t> binding_of(torch::nn::Module& m) {
  std::vector<uintptr_t> out;
  for (const auto& p : m.parameters()) {
    out.push_back(p.defined() ? reinterpret_cast<uintptr_t>(p.data_ptr()) : 0);
    out.push_back(p.defined() ? static_cast<uintptr_t>(p.numel()) : 0);
    out.push_back(p.defined() && p.requires_grad() ? 1 : 0);
  }
  for (const auto& b : m.buffers()) {
    out.push_back(b.defined() ? reinterpret_cast<uintptr_t>(b.data_ptr()) : 0);
    out.push_back(b.defined() ? static_cast<uintptr_t>(b.numel()) : 0);
  }
  out.push_back(m.is_training() ? 1 : 0);
  for (const auto& sub : m.modules(/*include_self=*/false)) out.push_back(sub->is_training() ? 1 : 0);
  return out;
}

bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && a.device() == b.device();
}

//! Bit-for-bit equality (NaNs compare by their bits too).
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (!same_layout(a, b)) return false;
  if (a.is_floating_point()) {
    const auto as_int = [](const at::Tensor& t) {
      switch (t.element_size()) {
        case 8: return t.contiguous().view(at::kLong);
        case 4: return t.contiguous().view(at::kInt);
        case 2: return t.contiguous().view(at::kShort);
        default: return t.contiguous().view(at::kByte);
      }
    };
    return torch::equal(as_int(a), as_int(b));
  }
  return torch::equal(a, b);
}

std::string shape(const at::Tensor& t) {
  std::ostringstream os;
  if (t.defined()) os << t.sizes();
  return os.str();
}
}  // namespace

void Trainer::setup_cuda_graphs() {
  graphed_.reset();
  if (!options_.cuda_graphs()) return;
  std::string why;
  if (!detail::CudaGraph::built()) {
    why = detail::CudaGraph::why_not_built();
  } else if (!device_.is_cuda()) {
    why = "the model is on " + device_.str() + " and CUDA graphs need a CUDA device";
  } else if (precision_ != Precision::fp32) {
    why = "precision " + options_.precision() + " is not captured (autocast's cast cache and the loss scale live on the host)";
  } else if (options_.accumulate_grad_batches() > 1) {
    why = "accumulate_grad_batches " + std::to_string(options_.accumulate_grad_batches()) +
          " adds gradients over batches, which a replay would overwrite";
  } else if (group_) {
    why = "in a job of several processes the gradient all-reduce runs inside backward";
  }
  if (!why.empty()) {
    if (loop_.is_rank_zero()) std::cerr << "cairn: warning: trainer.cuda_graphs: " << why << "; training uncaptured\n";
    return;
  }
  graphed_ = std::make_unique<detail::GraphedStep>();
}

bool Trainer::graphed_step(const Batch& batch) {
  // The run's first step runs uncaptured: a model that cannot take the data
  // is explained there, and its lazy set-up happens outside any capture.
  if (!graphed_ || graphed_->given_up || !first_step_done_) return false;
  detail::GraphedStep& g = *graphed_;
  torch::nn::Module& model = *model_.module;
  // Only full batches are captured; the epoch's last, smaller one runs uncaptured.
  if (batch.size() != data().batch_size) return false;
  if (g.captured) {
    if (!same_layout(batch.x, g.static_x) || !same_layout(batch.y, g.static_y)) {
      if (!g.warned_shape) {
        std::cerr << "cairn: warning: trainer.cuda_graphs: a batch shaped " << shape(batch.x) << " (captured: "
                  << shape(g.static_x) << ") runs uncaptured; so will every batch of another shape\n";
        g.warned_shape = true;
      }
      return false;
    }
    if (binding_of(model) != g.binding) {
      // Parameters or buffers replaced, frozen or unfrozen, a submodule's
      // mode changed (a callback's doing): the graph would train what it
      // captured. Capture again.
      if (!g.warned_moved && loop_.is_rank_zero()) {
        std::cerr << "cairn: warning: trainer.cuda_graphs: the model's parameters, buffers or modes changed since the "
                     "capture; capturing the step again\n";
      }
      const bool warned_shape = g.warned_shape;
      const int recaptures = g.recaptures + 1;
      g = detail::GraphedStep{};
      g.warned_moved = true;
      g.warned_shape = warned_shape;
      g.recaptures = recaptures;
      if (recaptures > 3) {
        // Something changes the model over and over: each capture costs an
        // uncaptured check step and a new memory pool.
        g.given_up = true;
        for (auto& p : model.parameters()) p.mutable_grad() = at::Tensor();
        if (loop_.is_rank_zero()) {
          std::cerr << "cairn: warning: trainer.cuda_graphs: the model changed after 3 captures; training uncaptured\n";
        }
        return false;
      }
      return capture_step(batch);
    }
    g.static_x.copy_(batch.x, /*non_blocking=*/true);
    if (batch.y.defined()) g.static_y.copy_(batch.y, /*non_blocking=*/true);
    // An uncaptured step in between (the last batch) made gradients of its own.
    for (size_t i = 0; i < g.params.size(); ++i) g.params[i].mutable_grad() = g.grads[i];
    g.graph->replay();
    for (const auto& apply : g.logs) apply();
    loop_.note_step_loss(g.static_loss);
    return true;
  }
  return capture_step(batch);
}

bool Trainer::capture_step(const Batch& batch) {
  detail::GraphedStep& g = *graphed_;
  torch::nn::Module& model = *model_.module;
  std::vector<at::Tensor> params = model.parameters();
  std::vector<at::Tensor> buffers = model.buffers();
  at::Generator gen = at::globalContext().defaultGenerator(device_);
  auto rng_state = [&] {
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state();
  };
  auto clone_all = [](const std::vector<at::Tensor>& v) {
    std::vector<at::Tensor> out;
    for (const auto& t : v) out.push_back(t.defined() ? t.detach().clone() : at::Tensor());
    return out;
  };
  auto clear_grads = [&] {
    for (auto& p : params) p.mutable_grad() = at::Tensor();
  };
  const std::vector<uintptr_t> binding = binding_of(model);
  const at::Tensor rng0 = rng_state();
  const std::vector<at::Tensor> buffers0 = clone_all(buffers);
  // Back to the state before this step: the step is then run (again) by the caller or by a replay.
  auto restore = [&] {
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(rng0);
    }
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < buffers.size(); ++i) {
      if (buffers[i].defined()) buffers[i].copy_(buffers0[i]);
    }
  };
  auto give_up = [&](const std::string& why) {
    loop_.record_step_logs(nullptr);
    restore();
    clear_grads();
    g = detail::GraphedStep{};
    g.given_up = true;
    if (loop_.is_rank_zero()) std::cerr << "cairn: warning: trainer.cuda_graphs: " << why << "; training uncaptured\n";
    return false;
  };

  // The optimizer may train tensors the model does not hold (a learnable loss
  // weight added in configure_optimizers): their gradients would be left
  // out of the check and accumulate over replays. Not captured.
  {
    std::set<const c10::TensorImpl*> held;
    for (const auto& p : params) held.insert(p.unsafeGetTensorImpl());
    for (const auto& group : optimizer_->param_groups()) {
      for (const auto& p : group.params()) {
        if (!held.count(p.unsafeGetTensorImpl())) {
          return give_up("the optimizer trains tensors that are not the model's parameters");
        }
      }
    }
  }
  try {
    g.graph = std::make_unique<detail::CudaGraph>(device_);
  } catch (const std::exception& e) {
    return give_up(short_error(e.what()));
  }
  // 1. The step uncaptured, on the capture's stream (its warm-up), with host
  //    waits forbidden: the reference the replay must equal.
  std::vector<std::function<void()>> discarded;
  at::Tensor ref_loss;
  clear_grads();
  try {
    g.graph->on_side_stream(
        [&] {
          loop_.record_step_logs(&discarded);
          ref_loss = training_step(batch);
          loop_.record_step_logs(nullptr);
          ref_loss.backward();
        },
        /*forbid_sync=*/true);
  } catch (const std::exception& e) {
    const std::string what = short_error(e.what());
    if (what.find("inside a captured training step") != std::string::npos) return give_up(what);
    if (what.find("synchroniz") != std::string::npos) {
      return give_up("the training step waits for the device (a host read or a pageable copy), which a capture cannot "
                     "hold (" + what + ")");
    }
    // Not about capturing at all: the step runs uncaptured next and fails there as it would without graphs.
    return give_up("the training step failed before it could be captured (" + what + ")");
  }
  if (binding_of(model) != binding) {
    return give_up("the training step replaces parameters or buffers or changes the model's modes, which a replay "
                   "cannot repeat");
  }
  const at::Tensor ref = ref_loss.detach().clone();
  ref_loss = at::Tensor();
  std::vector<at::Tensor> ref_grads;
  for (const auto& p : params) ref_grads.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
  const std::vector<at::Tensor> ref_buffers = clone_all(buffers);
  restore();
  clear_grads();

  // 2. The capture: nothing runs. Gradients are unset, so backward makes
  //    them in the graph's memory, where every replay writes them.
  g.static_x = batch.x.clone();
  g.static_y = batch.y.defined() ? batch.y.clone() : at::Tensor();
  const Batch fixed{g.static_x, g.static_y};
  std::vector<std::function<void()>> logs;
  at::Tensor loss;
  try {
    g.graph->capture([&] {
      loop_.record_step_logs(&logs);
      loss = training_step(fixed);
      loop_.record_step_logs(nullptr);
      loss.backward();
    });
  } catch (const std::exception& e) {
    return give_up("the training step could not be captured (" + short_error(e.what()) + ")");
  }
  if (binding_of(model) != binding) {
    return give_up("the training step replaces parameters or buffers or changes the model's modes, which a replay "
                   "cannot repeat");
  }
  g.static_loss = loss.detach();
  loss = at::Tensor();
  g.params = params;
  for (const auto& p : params) g.grads.push_back(p.grad());

  // 3. A replay from the same state must give the reference bit for bit.
  restore();
  g.graph->replay();
  std::string differs;
  if (!same_bits(g.static_loss, ref)) differs = "the loss";
  for (size_t i = 0; differs.empty() && i < params.size(); ++i) {
    if (!same_bits(g.grads[i], ref_grads[i])) differs = "the gradient of parameter " + std::to_string(i);
  }
  for (size_t i = 0; differs.empty() && i < buffers.size(); ++i) {
    if (!same_bits(buffers[i], ref_buffers[i])) differs = "buffer " + std::to_string(i);
  }
  if (!differs.empty()) {
    return give_up("a replay of the captured step differs from the step run uncaptured in " + differs +
                   " (a kernel that is not deterministic, such as one adding with atomics, or host state in "
                   "training_step)");
  }
  g.logs = std::move(logs);
  g.binding = binding;
  g.captured = true;
  for (const auto& apply : g.logs) apply();
  loop_.note_step_loss(g.static_loss);
  if (loop_.is_rank_zero()) {
    std::cout << "cairn: trainer.cuda_graphs: training step captured for batches shaped " << shape(g.static_x)
              << "; its replay equals the uncaptured step bit for bit\n";
  }
  return true;
}

}  // namespace cairn
