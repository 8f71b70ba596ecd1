// EarlyStopping: stops the run when a monitored metric stops improving.
//
//   loop.add(std::make_shared<cairn::EarlyStopping>(
//       cairn::EarlyStoppingOptions().monitor("valid/loss").patience(3)));
//
// Patience counts validation checks (new values of the monitored metric), not
// epochs. Its wait count and best value are saved, so a resumed run stops at
// the same epoch as an uninterrupted one.
#pragma once

#include "cairn/callback.h"
#include "cairn/metrics.h"

#include <torch/arg.h>

#include <optional>
#include <string>

namespace cairn {

struct EarlyStoppingOptions {
  //! The metric to watch.
  TORCH_ARG(std::string, monitor) = "valid/loss";
  TORCH_ARG(Mode, mode) = Mode::min;
  //! Checks without improvement before stopping.
  TORCH_ARG(int64_t, patience) = 3;
  //! Improvement must exceed this.
  TORCH_ARG(double, min_delta) = 0.0;
  //! Stop as soon as the metric reaches this value (e.g. valid/acc 0.99).
  TORCH_ARG(std::optional<double>, stopping_threshold) = std::nullopt;
  //! Stop as soon as the metric is worse than this (a diverging run).
  TORCH_ARG(std::optional<double>, divergence_threshold) = std::nullopt;
  //! Stop when the metric is NaN or infinite.
  TORCH_ARG(bool, check_finite) = true;
};

class EarlyStopping : public Callback {
 public:
  explicit EarlyStopping(EarlyStoppingOptions options = EarlyStoppingOptions());
  std::string key() const override;
  std::vector<std::string> monitors() const override { return {options_.monitor()}; }
  //! A validation inside an epoch (trainer.val_check_interval) is a check too.
  void on_validation_end(Loop& loop) override;
  //! A stop it decided before the run was saved and killed (before fit_end
  //! recorded it as finished) holds after the resume too.
  void on_fit_begin(Loop& loop) override;
  Order order() const override { return Order::monitor; }
  void on_epoch_end(Loop& loop) override;
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

  int64_t wait_count() const { return wait_; }
  int64_t stopped_epoch() const { return stopped_epoch_; }
  const std::string& stop_reason() const { return reason_; }
  std::optional<double> best() const { return best_.best(); }

 private:
  EarlyStoppingOptions options_;
  Best best_;                  //!< best monitored value so far
  int64_t wait_ = 0;           //!< checks since the last improvement
  int64_t seen_ = 0;           //!< monitor values already judged
  int64_t stopped_epoch_ = -1; //!< epoch at which it asked to stop
  std::string reason_;         //!< why it stopped
};

}  // namespace cairn
