#include "cairn/callbacks/averaging.h"

#include "cairn/loop.h"

#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <c10/util/Optional.h>
#include <stdexcept>

namespace cairn {

namespace {
std::vector<at::Tensor> parameters_of(const Loop& loop) {
  if (!loop.model()) throw std::logic_error("weight averaging needs a tracked model (loop.track(model))");
  std::vector<at::Tensor> out;
  for (const auto& p : loop.model()->parameters()) out.push_back(p);
  return out;
}

std::vector<std::string> parameter_names(const Loop& loop) {
  std::vector<std::string> out;
  for (const auto& kv : loop.model()->named_parameters()) out.push_back(kv.key());
  return out;
}

//! Parameters, then buffers: the tensors AveragedModel(use_buffers=True) averages.
std::vector<at::Tensor> weights_of(const Loop& loop) {
  std::vector<at::Tensor> out = parameters_of(loop);
  for (const auto& b : loop.model()->buffers()) out.push_back(b);
  return out;
}

std::vector<std::string> weight_names(const Loop& loop) {
  std::vector<std::string> out = parameter_names(loop);
  for (const auto& kv : loop.model()->named_buffers()) out.push_back(kv.key());
  return out;
}

std::vector<at::Tensor> clones(const std::vector<at::Tensor>& ts) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.detach().clone());
  return out;
}

void copy_into(const std::vector<at::Tensor>& to, const std::vector<at::Tensor>& from) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i]);
}

//! name -> tensor, as Python's state_dict() names them (parameters, then
//! buffers when `ts` holds them too).
Value as_state_dict(const Loop& loop, const std::vector<at::Tensor>& ts) {
  Value d = Value::dict();
  const auto names = weight_names(loop);
  for (size_t i = 0; i < ts.size(); ++i) d.set(names[i], ts[i]);
  return d;
}

//! The tensors of `key` in the checkpoint being loaded, in the order of
//! `names`/`now` (empty if absent). A name from `optional_from` on (the
//! buffers of an EMA saved before buffers were averaged) that the file lacks
//! takes the model's own tensor, as such a file's evaluation did.
std::vector<at::Tensor> from_checkpoint(const Loop& loop, const std::string& key, const std::vector<std::string>& names,
                                        const std::vector<at::Tensor>& now, size_t optional_from) {
  std::vector<at::Tensor> out;
  const Value* c = loop.loaded_checkpoint();
  const Value* d = c ? c->find(key) : nullptr;
  if (!d) return out;
  if (!d->is_dict()) throw CheckpointMismatch("the checkpoint's '" + key + "' is a " + d->kind_name() + ", not a dict of tensors");
  const auto& params = now;
  for (size_t i = 0; i < names.size(); ++i) {
    const Value* t = d->find(names[i]);
    if (!t && i >= optional_from) {
      out.push_back(params[i].detach().clone());
      continue;
    }
    if (!t || !t->is_tensor() || t->to_tensor().sizes() != params[i].sizes()) {
      throw CheckpointMismatch("the checkpoint's '" + key + "' does not match the model at '" + names[i] + "'");
    }
    if (t->to_tensor().is_floating_point() != params[i].is_floating_point()) {
      throw CheckpointMismatch("the checkpoint's '" + key + "' holds a " + std::string(c10::toString(t->to_tensor().scalar_type())) +
                               " tensor at '" + names[i] + "'; the model's is " +
                               std::string(c10::toString(params[i].scalar_type())));
    }
    out.push_back(t->to_tensor().to(params[i].device(), params[i].scalar_type()).clone());
  }
  return out;
}
}  // namespace

// --- EMA -----------------------------------------------------------------------

Ema::Ema(EmaOptions options) : options_(std::move(options)) {
  if (!(options_.decay > 0.0 && options_.decay < 1.0)) throw std::invalid_argument("decay must be in (0, 1)");
  if (options_.every_n_steps < 1) throw std::invalid_argument("every_n_steps must be >= 1");
  if (options_.validate_with != "ema" && options_.validate_with != "model") {
    throw std::invalid_argument("validate_with must be 'ema' or 'model'");
  }
}

void Ema::ensure(Loop& loop) {
  if (average_.empty()) average_ = clones(weights_of(loop));
}

void Ema::on_fit_begin(Loop& loop) { ensure(loop); }

void Ema::on_batch_end(Loop& loop) {
  const auto& st = loop.state();
  if (st.accumulating || st.global_step % options_.every_n_steps != 0) return;
  ensure(loop);
  torch::NoGradGuard no_grad;
  const auto now = weights_of(loop);
  if (updates_ == 0 && !options_.warmup) {
    // AveragedModel: the first update copies the weights (and buffers).
    copy_into(average_, now);
  } else {
    const double d = options_.warmup ? std::min(options_.decay, (1.0 + static_cast<double>(updates_)) /
                                                                    (10.0 + static_cast<double>(updates_)))
                                     : options_.decay;
    // get_ema_multi_avg_fn: lerp towards the weights by 1 - decay; a
    // non-float buffer (num_batches_tracked) as ema * decay + now * (1 - decay).
    for (size_t i = 0; i < now.size(); ++i) {
      if (average_[i].is_floating_point()) {
        average_[i].lerp_(now[i].detach(), 1.0 - d);
      } else {
        average_[i].copy_(average_[i] * d + now[i].detach() * (1.0 - d));
      }
    }
  }
  ++updates_;
}

void Ema::swap_in(Loop& loop) {
  if (options_.validate_with != "ema" || swapped_ || average_.empty() || loop.evaluating_loaded_weights()) return;
  const auto now = weights_of(loop);
  backup_ = clones(now);
  copy_into(now, average_);
  swapped_ = true;
}

void Ema::swap_out(Loop& loop) {
  if (!swapped_) return;
  copy_into(weights_of(loop), backup_);
  backup_.clear();
  swapped_ = false;
}

void Ema::on_validation_begin(Loop& loop) { swap_in(loop); }
void Ema::on_validation_end(Loop& loop) { swap_out(loop); }
void Ema::on_test_begin(Loop& loop) { swap_in(loop); }
void Ema::on_test_end(Loop& loop) { swap_out(loop); }
// A validation that threw must not leave the average in place of the weights.
void Ema::on_exception(Loop& loop) { swap_out(loop); }

void Ema::on_save_checkpoint(Loop& loop) {
  if (average_.empty()) return;
  Value& c = loop.pending_checkpoint();
  c.set("ema_state_dict", as_state_dict(loop, average_));
  if (options_.validate_with == "ema") c.set("evaluate_with", "ema_state_dict");
}

void Ema::on_load_checkpoint(Loop& loop) {
  auto loaded = from_checkpoint(loop, "ema_state_dict", weight_names(loop), weights_of(loop),
                                parameter_names(loop).size());
  if (!loaded.empty()) average_ = std::move(loaded);
}

Value Ema::state_dict() const {
  Value d = Value::dict();
  d.set("decay", options_.decay);
  d.set("warmup", options_.warmup);
  d.set("every_n_steps", options_.every_n_steps);
  d.set("validate_with", options_.validate_with);
  d.set("updates", updates_);
  return d;
}

void Ema::load_state_dict(const Value& state) {
  updates_ = state.at("updates").to_int();
  if (updates_ < 0) throw CheckpointMismatch("callbacks['" + key() + "'].updates is " + std::to_string(updates_));
}

// --- SWA -----------------------------------------------------------------------

Swa::Swa(SwaOptions options) : options_(std::move(options)) {
  if (options_.swa_lrs.empty()) throw std::invalid_argument("swa_lrs is required (one value, or one per parameter group)");
  for (double lr : options_.swa_lrs) {
    if (!(lr > 0)) throw std::invalid_argument("swa_lrs must be > 0");
  }
  if (!(options_.swa_epoch_start > 0)) throw std::invalid_argument("swa_epoch_start must be > 0");
  if (options_.swa_epoch_start >= 1 && options_.swa_epoch_start != std::floor(options_.swa_epoch_start)) {
    throw std::invalid_argument("swa_epoch_start must be an epoch (an integer >= 1) or a fraction in (0, 1)");
  }
  if (options_.annealing_epochs < 0) throw std::invalid_argument("annealing_epochs must be >= 0");
  if (options_.annealing_strategy != "cos" && options_.annealing_strategy != "linear") {
    throw std::invalid_argument("annealing_strategy must be 'cos' or 'linear'");
  }
}

int64_t Swa::start_epoch(int64_t max_epochs) const {
  if (options_.swa_epoch_start < 1) return static_cast<int64_t>(options_.swa_epoch_start * static_cast<double>(max_epochs));
  return static_cast<int64_t>(options_.swa_epoch_start);
}

void Swa::on_fit_begin(Loop& loop) {
  fitting_ = true;
  const int64_t max_epochs = loop.state().max_epochs;
  if (max_epochs > 0 && start_epoch(max_epochs) >= max_epochs) {
    throw std::invalid_argument("swa starts at epoch " + std::to_string(start_epoch(max_epochs)) +
                                " (0-based), but the run has " + std::to_string(max_epochs) + " epochs");
  }
  if (loop.optimizers().empty()) throw std::logic_error("SWA needs a tracked optimizer");
  const size_t groups = loop.optimizers().front()->param_groups().size();
  if (options_.swa_lrs.size() != 1 && options_.swa_lrs.size() != groups) {
    throw std::invalid_argument("swa_lrs has " + std::to_string(options_.swa_lrs.size()) + " values for " +
                                std::to_string(groups) + " parameter groups");
  }
  // A resumed state of another optimizer: said before anything trains (or is saved again).
  if (!start_lrs_.empty() && start_lrs_.size() != groups) {
    throw CheckpointMismatch("callbacks['" + key() + "'].start_lrs holds " + std::to_string(start_lrs_.size()) +
                             " learning rate(s); the optimizer has " + std::to_string(groups) +
                             " parameter group(s)");
  }
}

void Swa::on_epoch_begin(Loop& loop) {
  if (loop.state().epoch < start_epoch(loop.state().max_epochs) || applied_) return;
  if (start_lrs_.empty()) {
    for (auto& g : loop.optimizers().front()->param_groups()) start_lrs_.push_back(g.options().get_lr());
  }
  set_lrs(loop);
}

void Swa::on_batch_begin(Loop& loop) {
  // Over any scheduler's step of the previous batch.
  if (!start_lrs_.empty() && !applied_) set_lrs(loop);
}

double swalr_lr(double start_lr, double swa_lr, int64_t annealing_epochs, const std::string& strategy, int64_t k) {
  // SWALR's get_lr() step by step: each value is computed from the one
  // before (it recovers the initial lr from the current one), so the same
  // float64 operations in the same order give the same bits.
  const auto anneal = [&](double t) { return strategy == "cos" ? (1.0 - std::cos(M_PI * t)) / 2.0 : t; };
  const double span = static_cast<double>(std::max<int64_t>(1, annealing_epochs));
  double lr = start_lr;
  for (int64_t s = 0; s <= k; ++s) {
    const int64_t step = annealing_epochs == 0 ? std::max<int64_t>(1, s) : s;
    const double prev_alpha = anneal(std::max(0.0, std::min(1.0, static_cast<double>(step - 1) / span)));
    const double initial = prev_alpha == 1.0 ? swa_lr : (lr - prev_alpha * swa_lr) / (1.0 - prev_alpha);
    const double alpha = anneal(std::max(0.0, std::min(1.0, static_cast<double>(step) / span)));
    lr = swa_lr * alpha + initial * (1.0 - alpha);
  }
  return lr;
}

void Swa::set_lrs(Loop& loop) {
  const int64_t into = loop.state().epoch - start_epoch(loop.state().max_epochs);
  auto& groups = loop.optimizers().front()->param_groups();
  for (size_t i = 0; i < groups.size(); ++i) {
    const double swa = options_.swa_lrs.size() == 1 ? options_.swa_lrs[0] : options_.swa_lrs[i];
    groups[i].options().set_lr(
        swalr_lr(start_lrs_[i], swa, options_.annealing_epochs, options_.annealing_strategy, into));
  }
}

void Swa::on_validation_begin(Loop& loop) {
  // Fit's validation after an epoch's training part (the Trainer's; a
  // hand-written loop that sets state().batches_per_epoch too): the epoch's
  // weights join the average first, so the last epoch's validation measures
  // the average that then stays in place, and every checkpoint's score is
  // the score of the weights it holds.
  const auto& st = loop.state();
  if (!fitting_ || st.batches_per_epoch <= 0 || st.batch_in_epoch < st.batches_per_epoch) return;
  average(loop);
}

void Swa::on_epoch_end(Loop& loop) { average(loop); }

void Swa::average(Loop& loop) {
  const auto& st = loop.state();
  if (st.epoch < start_epoch(st.max_epochs) || applied_ || averaged_epoch_ == st.epoch) return;
  // Before the epoch's end: a roll-back to the end of the training part
  // cannot undo this (an exception keeps the last checkpoint file instead).
  loop.mark_stepped();
  // AveragedModel: a running mean over epoch ends (the first copies).
  const auto params = parameters_of(loop);
  torch::NoGradGuard no_grad;
  if (average_.empty() || n_averaged_ == 0) {
    average_ = clones(params);
  } else {
    const double n = static_cast<double>(n_averaged_);
    for (size_t i = 0; i < params.size(); ++i) average_[i].add_((params[i].detach() - average_[i]) / (n + 1.0));
  }
  ++n_averaged_;
  averaged_epoch_ = st.epoch;
  if (st.epoch + 1 == st.max_epochs) apply(loop);
}

void Swa::on_fit_end(Loop& loop) {
  fitting_ = false;
  // A run that ended early (a callback's stop, not an interruption) keeps
  // the weights its validation measured, as Lightning does; the average is
  // in the checkpoints for whoever wants it.
  if (!applied_ && n_averaged_ > 0 && !loop.state().stop.interrupt && loop.is_rank_zero()) {
    std::cout << "cairn: SWA: the run stopped before its last epoch; the model keeps its trained (validated) "
                 "weights, and the average of "
              << n_averaged_ << " epoch(s) is kept in each checkpoint's swa_state_dict\n";
  }
}

void Swa::on_exception(Loop&) { fitting_ = false; }

void Swa::apply(Loop& loop) {
  copy_into(parameters_of(loop), average_);
  applied_ = true;
  applied_step_ = loop.state().global_step;
  if (loop.train_pass()) {
    update_batchnorm(*loop.model(), loop.train_pass());
  } else if (update_batchnorm(*loop.model(), nullptr) > 0) {
    std::cerr << "cairn: warning: SWA: no training pass to recompute BatchNorm statistics with (a hand-written "
                 "loop: call cairn::update_batchnorm)\n";
  }
}

void Swa::on_save_checkpoint(Loop& loop) {
  if (!average_.empty()) loop.pending_checkpoint().set("swa_state_dict", as_state_dict(loop, average_));
  // state_dict is the average until a run resumed with more epochs trains on
  // from it: what its scores measured (View::evaluated_kind).
  if (applied_ && applied_step_ >= 0 && loop.state().global_step == applied_step_) {
    loop.pending_checkpoint().set("model_weights", "swa");
  }
}

void Swa::on_load_checkpoint(Loop& loop) {
  const auto names = parameter_names(loop);
  auto loaded = from_checkpoint(loop, "swa_state_dict", names, parameters_of(loop), names.size());
  if (!loaded.empty()) average_ = std::move(loaded);
}

Value Swa::state_dict() const {
  Value d = Value::dict();
  d.set("n_averaged", n_averaged_);
  d.set("start_lrs", Value(start_lrs_));
  d.set("applied", applied_);
  d.set("averaged_epoch", averaged_epoch_);
  d.set("applied_step", applied_step_);
  d.set("swa_lrs", Value(options_.swa_lrs));
  d.set("swa_epoch_start", options_.swa_epoch_start);
  d.set("annealing_epochs", options_.annealing_epochs);
  d.set("annealing_strategy", options_.annealing_strategy);
  return d;
}

void Swa::load_state_dict(const Value& state) {
  n_averaged_ = state.at("n_averaged").to_int();
  start_lrs_ = state.at("start_lrs").to_double_list();
  applied_ = state.at("applied").to_bool();
  // Absent in files of an older cairn, which averaged at epoch ends only.
  const Value* averaged = state.find("averaged_epoch");
  averaged_epoch_ = averaged ? averaged->to_int() : -1;
  const Value* at_step = state.find("applied_step");
  applied_step_ = at_step ? at_step->to_int() : -1;
  if (n_averaged_ < 0) throw CheckpointMismatch("callbacks['" + key() + "'].n_averaged is " + std::to_string(n_averaged_));
  for (double lr : start_lrs_) {
    if (!std::isfinite(lr) || lr < 0) {
      throw CheckpointMismatch("callbacks['" + key() + "'].start_lrs holds " + std::to_string(lr));
    }
  }
}

int64_t update_batchnorm(torch::nn::Module& model, const std::function<void()>& forward_all) {
  struct Bn {
    std::function<void(c10::optional<double>)> set_momentum;
    std::function<c10::optional<double>()> momentum;
    std::function<void()> reset;
    torch::nn::Module* module;
  };
  std::vector<Bn> bns;
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto* b = m->as<torch::nn::BatchNorm1d>()) {
      bns.push_back({[b](c10::optional<double> v) { b->options.momentum(v); }, [b] { return b->options.momentum(); },
                     [b] { b->reset_running_stats(); }, b});
    } else if (auto* b2 = m->as<torch::nn::BatchNorm2d>()) {
      bns.push_back({[b2](c10::optional<double> v) { b2->options.momentum(v); }, [b2] { return b2->options.momentum(); },
                     [b2] { b2->reset_running_stats(); }, b2});
    } else if (auto* b3 = m->as<torch::nn::BatchNorm3d>()) {
      bns.push_back({[b3](c10::optional<double> v) { b3->options.momentum(v); }, [b3] { return b3->options.momentum(); },
                     [b3] { b3->reset_running_stats(); }, b3});
    }
  }
  if (bns.empty() || !forward_all) return static_cast<int64_t>(bns.size());
  std::vector<c10::optional<double>> saved;
  for (auto& b : bns) {
    saved.push_back(b.momentum());
    b.reset();
  }
  const bool was_training = model.is_training();
  // Only BatchNorm in training mode: dropout stays off (and draws no random numbers).
  model.eval();
  for (auto& b : bns) b.module->train();
  // No momentum: the cumulative mean over the batches (num_batches_tracked
  // counts them), as PyTorch's momentum=None.
  for (auto& b : bns) b.set_momentum(c10::nullopt);
  {
    torch::NoGradGuard no_grad;
    forward_all();
  }
  for (size_t i = 0; i < bns.size(); ++i) bns[i].set_momentum(saved[i]);
  model.train(was_training);
  return static_cast<int64_t>(bns.size());
}

}  // namespace cairn
