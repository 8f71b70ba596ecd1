// Learning-rate schedulers with state.
//
// Each scheduler computes the learning rate in closed form from its step count
// and the base learning rates, so its state is small ({"step_count", "base_lrs"}
// plus any plateau state) and a resumed run continues the same curve.
// `interval` says whether the trainer steps it after every optimizer step or
// every epoch.
#pragma once

#include "cairn/metrics.h"
#include "cairn/stateful.h"
#include "cairn/torch_fwd.h"

#include <memory>
#include <string>
#include <vector>

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

/// lr = base * gamma^(number of milestones <= step)   (PyTorch MultiStepLR)
struct MultiStepLR : Scheduler {
  MultiStepLR(torch::optim::Optimizer& o, std::vector<int64_t> milestones, double gamma, Interval i = Interval::epoch);
  std::string name() const override { return "multistep"; }
  double lr_at(int64_t step, double base) const override;
  std::vector<int64_t> milestones;
  double gamma;
};

/// lr = base * gamma^step   (PyTorch ExponentialLR)
struct ExponentialLR : Scheduler {
  ExponentialLR(torch::optim::Optimizer& o, double gamma, Interval i = Interval::epoch);
  std::string name() const override { return "exponential"; }
  double lr_at(int64_t step, double base) const override;
  double gamma;
};

/// lr = base * (start + (end - start) * min(step, warmup_steps) / warmup_steps)   (PyTorch LinearLR)
struct LinearWarmupLR : Scheduler {
  LinearWarmupLR(torch::optim::Optimizer& o, int64_t warmup_steps, double start_factor, double end_factor,
                 Interval i = Interval::step);
  std::string name() const override { return "linear_warmup"; }
  double lr_at(int64_t step, double base) const override;
  int64_t warmup_steps;
  double start_factor, end_factor;
};

/// The 1cycle policy (PyTorch OneCycleLR with anneal_strategy 'cos', two
/// phases, no momentum cycling): from max_lr/div_factor up to max_lr over
/// pct_start of total_steps, then down to max_lr/(div_factor*final_div_factor).
/// `max_lr` <= 0 takes each group's lr as its max.
struct OneCycleLR : Scheduler {
  OneCycleLR(torch::optim::Optimizer& o, int64_t total_steps, double max_lr, double pct_start, double div_factor,
             double final_div_factor, Interval i = Interval::step);
  std::string name() const override { return "one_cycle"; }
  double lr_at(int64_t step, double base) const override;
  int64_t total_steps;
  double max_lr, pct_start, div_factor, final_div_factor;
};

/// Reduce the lr by `factor` when a metric stopped improving for `patience`
/// checks (PyTorch ReduceLROnPlateau, threshold_mode 'rel' or 'abs').
class ReduceLROnPlateau : public Scheduler {
 public:
  struct Options {
    std::string monitor = "valid/loss";
    Mode mode = Mode::min;
    double factor = 0.1;
    int64_t patience = 10;
    double threshold = 1e-4;
    bool relative = true;  //!< threshold_mode rel (true) or abs
    int64_t cooldown = 0;
    double min_lr = 0.0;
    double eps = 1e-8;
  };
  ReduceLROnPlateau(torch::optim::Optimizer& o, Options options);
  std::string name() const override { return "plateau"; }
  std::string monitor() const override { return options_.monitor; }
  void step() override {}  // needs a metric
  void step_with_metric(double metric) override;
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 protected:
  double lr_at(int64_t, double base) const override { return base; }

 private:
  bool is_better(double a) const;
  Options options_;
  double best_;                //!< best metric so far
  int64_t num_bad_ = 0;        //!< checks since the last improvement
  int64_t cooldown_left_ = 0;  //!< checks left in the cooldown
};

}  // namespace cairn
