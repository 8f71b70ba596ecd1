// Health and time guards.
//
// TerminateOnNaN: stops the run with a clear reason when the training loss is
// NaN or infinite, and marks the state invalid so no checkpoint of it replaces
// the last good one.
//
// Timer: stops the run after `max_time` seconds of this process's wall-clock
// time (e.g. before a spot machine's deadline); the checkpoint callback saves
// where it stopped and the next `cairn fit` continues from there.
//
// LearningRateMonitor: logs `train/lr` (and `train/lr/pgN` for each param
// group when there are several) every `log_every_n_steps` steps or per epoch.
#pragma once

#include "cairn/callback.h"

#include <chrono>
#include <string>

namespace cairn {

//! The batch loss is read from the device every log_every_n_steps steps (and
//! on the steps a checkpoint is saved), so a NaN is seen at the next of those
//! points, and in the epoch's mean train/loss at epoch end; no checkpoint of
//! a NaN state is written in between.
class TerminateOnNaN : public Callback {
 public:
  std::string key() const override { return "TerminateOnNaN"; }
  Order order() const override { return Order::monitor; }
  void on_batch_end(Loop& loop) override;
  void on_epoch_end(Loop& loop) override;
  //! A run stopped by a signal, a Timer or an exception saves at its end:
  //! the losses not yet read are checked first (one host read), so a state
  //! that went NaN between log points is not saved over the last good one.
  void on_fit_end(Loop& loop) override { check_unread(loop); }
  void on_exception(Loop& loop) override { check_unread(loop); }

 private:
  void check_unread(Loop& loop);
};

struct TimerOptions {
  double max_time = 0.0;  //!< seconds (> 0)
};

class Timer : public Callback {
 public:
  explicit Timer(TimerOptions options);
  std::string key() const override { return "Timer"; }
  Order order() const override { return Order::monitor; }
  void on_fit_begin(Loop& loop) override;
  void on_batch_end(Loop& loop) override { check(loop); }
  void on_epoch_end(Loop& loop) override { check(loop); }
  double elapsed() const;

 private:
  void check(Loop& loop);
  TimerOptions options_;
  std::chrono::steady_clock::time_point start_;
};

struct LearningRateMonitorOptions {
  std::string logging_interval = "step";  //!< "step" or "epoch"
};

class LearningRateMonitor : public Callback {
 public:
  explicit LearningRateMonitor(LearningRateMonitorOptions options = {});
  std::string key() const override { return "LearningRateMonitor"; }
  Order order() const override { return Order::producer; }
  void on_batch_begin(Loop& loop) override;
  void on_epoch_begin(Loop& loop) override;

 private:
  void log(Loop& loop);
  LearningRateMonitorOptions options_;
};

}  // namespace cairn
