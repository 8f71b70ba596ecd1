// Learning-rate schedulers with state.
//
// Each scheduler computes the learning rate in closed form from its step count
// and the base learning rates, so its state is small ({"step_count", "base_lrs"}
// plus any plateau state) and a resumed run continues the same curve.
// `interval` says whether the trainer steps it after every optimizer step or
// every epoch.
#pragma once

#include "cairn/stateful.h"

#include <memory>
#include <string>
#include <vector>

namespace torch {
namespace optim {
class Optimizer;
}
}  // namespace torch

namespace cairn {

enum class Interval { step, epoch };

class Scheduler : public Stateful {
 public:
  explicit Scheduler(torch::optim::Optimizer& optimizer, Interval interval = Interval::epoch);
  ~Scheduler() override = default;

  //! Advances one interval and sets the optimizer's learning rates.
  virtual void step();
  //! For schedulers driven by a metric (plateau); others ignore the value.
  virtual void step_with_metric(double metric) { (void)metric; step(); }
  //! The metric this scheduler watches ("" for none).
  virtual std::string monitor() const { return ""; }

  Interval interval() const { return interval_; }
  int64_t step_count() const { return step_count_; }
  std::vector<double> current_lrs() const;
  virtual std::string name() const = 0;

  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 protected:
  //! The learning rate after `step` intervals for a group whose initial lr is `base`.
  virtual double lr_at(int64_t step, double base) const = 0;
  void apply();

  torch::optim::Optimizer& optimizer_;
  Interval interval_;
  int64_t step_count_ = 0;        //!< intervals completed
  std::vector<double> base_lrs_;  //!< each param group's initial lr
};

/// lr = base * gamma^floor(step / step_size)
struct StepLR : Scheduler {
  StepLR(torch::optim::Optimizer& o, int64_t step_size, double gamma, Interval i = Interval::epoch);
  std::string name() const override { return "step"; }
  double lr_at(int64_t step, double base) const override;
  int64_t step_size;
  double gamma;
};

/// Linear warmup over `warmup_steps` (from base/warmup_steps to base), then
/// cosine annealing from base to `min_lr` at `total_steps`.
struct CosineLR : Scheduler {
  CosineLR(torch::optim::Optimizer& o, int64_t total_steps, int64_t warmup_steps, double min_lr,
           Interval i = Interval::step);
  std::string name() const override { return "cosine"; }
  double lr_at(int64_t step, double base) const override;
  int64_t total_steps;
  int64_t warmup_steps;
  double min_lr;
};

}  // namespace cairn
