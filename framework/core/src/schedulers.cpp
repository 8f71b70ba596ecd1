#include "cairn/schedulers.h"

#include <torch/optim.h>

#include <algorithm>
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

MultiStepLR::MultiStepLR(torch::optim::Optimizer& o, std::vector<int64_t> m, double g, Interval i)
    : Scheduler(o, i), milestones(std::move(m)), gamma(g) {
  std::sort(milestones.begin(), milestones.end());
  apply();
}

double MultiStepLR::lr_at(int64_t step, double base) const {
  const auto n = std::upper_bound(milestones.begin(), milestones.end(), step) - milestones.begin();
  return base * std::pow(gamma, static_cast<double>(n));
}

ExponentialLR::ExponentialLR(torch::optim::Optimizer& o, double g, Interval i) : Scheduler(o, i), gamma(g) { apply(); }

double ExponentialLR::lr_at(int64_t step, double base) const { return base * std::pow(gamma, static_cast<double>(step)); }

LinearWarmupLR::LinearWarmupLR(torch::optim::Optimizer& o, int64_t w, double s, double e, Interval i)
    : Scheduler(o, i), warmup_steps(w), start_factor(s), end_factor(e) {
  if (warmup_steps <= 0) throw std::invalid_argument("warmup_steps must be > 0");
  apply();
}

double LinearWarmupLR::lr_at(int64_t step, double base) const {
  const double t = static_cast<double>(std::min(step, warmup_steps));
  return base * (start_factor + (end_factor - start_factor) * t / static_cast<double>(warmup_steps));
}

OneCycleLR::OneCycleLR(torch::optim::Optimizer& o, int64_t total, double max, double pct, double div, double final_div,
                       Interval i)
    : Scheduler(o, i), total_steps(total), max_lr(max), pct_start(pct), div_factor(div), final_div_factor(final_div) {
  if (total_steps <= 1) throw std::invalid_argument("one_cycle needs total_steps > 1");
  if (pct_start <= 0 || pct_start >= 1) throw std::invalid_argument("pct_start must be in (0, 1)");
  if (max_lr > 0) {
    for (auto& b : base_lrs_) b = max_lr;
  }
  apply();
}

double OneCycleLR::lr_at(int64_t step, double max) const {
  const double initial = max / div_factor;
  const double min_lr = initial / final_div_factor;
  const double up_end = pct_start * static_cast<double>(total_steps) - 1.0;
  const double down_end = static_cast<double>(total_steps) - 1.0;
  const double t = static_cast<double>(step);
  auto cos_anneal = [](double start, double end, double pct) { return end + (start - end) / 2.0 * (std::cos(M_PI * pct) + 1.0); };
  if (t <= up_end) return cos_anneal(initial, max, t / up_end);
  return cos_anneal(max, min_lr, (t - up_end) / (down_end - up_end));
}

ReduceLROnPlateau::ReduceLROnPlateau(torch::optim::Optimizer& o, Options options)
    : Scheduler(o, Interval::epoch), options_(std::move(options)) {
  if (options_.factor >= 1.0 || options_.factor <= 0) throw std::invalid_argument("factor must be in (0, 1)");
  best_ = options_.mode == Mode::min ? INFINITY : -INFINITY;
}

bool ReduceLROnPlateau::is_better(double a) const {
  return better_than(options_.mode, a, best_, options_.threshold, options_.relative);
}

void ReduceLROnPlateau::step_with_metric(double metric) {
  ++step_count_;
  if (is_better(metric)) {
    best_ = metric;
    num_bad_ = 0;
  } else {
    ++num_bad_;
  }
  if (cooldown_left_ > 0) {
    --cooldown_left_;
    num_bad_ = 0;
  }
  if (num_bad_ > options_.patience) {
    for (auto& g : optimizer_.param_groups()) {
      const double old_lr = g.options().get_lr();
      const double new_lr = std::max(old_lr * options_.factor, options_.min_lr);
      if (old_lr - new_lr > options_.eps) g.options().set_lr(new_lr);
    }
    cooldown_left_ = options_.cooldown;
    num_bad_ = 0;
  }
}

Value ReduceLROnPlateau::state_dict() const {
  Value d = Scheduler::state_dict();
  d.set("best", best_);
  d.set("num_bad_epochs", num_bad_);
  d.set("cooldown_counter", cooldown_left_);
  return d;
}

void ReduceLROnPlateau::load_state_dict(const Value& state) {
  if (state.at("name").to_string() != name()) {
    throw std::runtime_error("the checkpoint's scheduler is '" + state.at("name").to_string() + "' but this run uses 'plateau'");
  }
  step_count_ = state.at("step_count").to_int();
  base_lrs_ = state.at("base_lrs").to_double_list();
  best_ = state.at("best").to_double();
  num_bad_ = state.at("num_bad_epochs").to_int();
  cooldown_left_ = state.at("cooldown_counter").to_int();
  // The lrs themselves come back with the optimizer's param groups.
}

}  // namespace cairn
