#include "cairn/schedulers.h"

#include <torch/optim.h>

#include <cmath>
#include <stdexcept>

namespace cairn {

Scheduler::Scheduler(torch::optim::Optimizer& optimizer, Interval interval)
    : optimizer_(optimizer), interval_(interval) {
  for (auto& g : optimizer_.param_groups()) base_lrs_.push_back(g.options().get_lr());
}

void Scheduler::apply() {
  auto& groups = optimizer_.param_groups();
  for (size_t i = 0; i < groups.size() && i < base_lrs_.size(); ++i) {
    groups[i].options().set_lr(lr_at(step_count_, base_lrs_[i]));
  }
}

void Scheduler::step() {
  ++step_count_;
  apply();
}

std::vector<double> Scheduler::current_lrs() const {
  std::vector<double> out;
  for (auto& g : optimizer_.param_groups()) out.push_back(g.options().get_lr());
  return out;
}

Value Scheduler::state_dict() const {
  Value d = Value::dict();
  d.set("name", name());
  d.set("interval", interval_ == Interval::step ? "step" : "epoch");
  d.set("step_count", step_count_);
  d.set("base_lrs", Value(base_lrs_));
  d.set("last_lrs", Value(current_lrs()));
  return d;
}

void Scheduler::load_state_dict(const Value& state) {
  if (state.at("name").to_string() != name()) {
    throw std::runtime_error("the checkpoint's scheduler is '" + state.at("name").to_string() +
                             "' but this run uses '" + name() + "'");
  }
  step_count_ = state.at("step_count").to_int();
  base_lrs_ = state.at("base_lrs").to_double_list();
  apply();
}

StepLR::StepLR(torch::optim::Optimizer& o, int64_t step_size_, double gamma_, Interval i)
    : Scheduler(o, i), step_size(step_size_), gamma(gamma_) {
  if (step_size <= 0) throw std::invalid_argument("step_size must be > 0");
  apply();
}

double StepLR::lr_at(int64_t step, double base) const {
  return base * std::pow(gamma, static_cast<double>(step / step_size));
}

CosineLR::CosineLR(torch::optim::Optimizer& o, int64_t total, int64_t warmup, double min_lr_, Interval i)
    : Scheduler(o, i), total_steps(total), warmup_steps(warmup), min_lr(min_lr_) {
  if (total_steps <= 0) throw std::invalid_argument("total_steps must be > 0");
  if (warmup_steps < 0) throw std::invalid_argument("warmup_steps must be >= 0");
  apply();
}

double CosineLR::lr_at(int64_t step, double base) const {
  if (step < warmup_steps) return base * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / span);
  return min_lr + (base - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

}  // namespace cairn
