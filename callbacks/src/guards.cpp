#include "cairn/callbacks/guards.h"

#include "cairn/loop.h"
#include "cairn/trainer.h"

#include <torch/optim/optimizer.h>

#include <cmath>
#include <iostream>
#include <sstream>

namespace cairn {

void TerminateOnNaN::on_batch_end(Loop& loop) {
  auto& st = loop.state();
  if (std::isfinite(st.batch_loss)) return;
  std::ostringstream why;
  why << "terminate on NaN: the training loss is " << st.batch_loss << " at step " << st.global_step;
  st.invalid_state = true;
  st.request_stop(why.str());
}

void TerminateOnNaN::on_epoch_end(Loop& loop) {
  auto& st = loop.state();
  const bool seen = loop.nonfinite_loss_since_check();
  const auto mean = loop.metrics().last("train/loss");
  const bool bad_mean = mean && !std::isfinite(*mean);
  if (!seen && !bad_mean) return;
  std::ostringstream why;
  why << "terminate on NaN: a training loss of epoch " << st.epoch + 1 << " was NaN or infinite (it is read every "
      << loop.log_every_n_steps() << " steps and at epoch end)";
  // Invalid even when another callback already asked to stop (early
  // stopping at this epoch's validation): its epoch-end save must not happen.
  st.invalid_state = true;
  st.request_stop(why.str());
}

void TerminateOnNaN::check_unread(Loop& loop) {
  auto& st = loop.state();
  if (st.invalid_state) return;
  bool bad = false;
  try {
    bad = loop.unread_loss_nonfinite();
  } catch (const std::exception& e) {
    // The device cannot be read (a failed kernel leaves CUDA in an error
    // state): its state cannot be checked, so it is not saved either. The
    // original exception stays the one fit() reports.
    st.invalid_state = true;
    std::cerr << "cairn: warning: the training losses could not be read to check them (" << short_error(e.what())
              << "); the state is not saved\n";
    return;
  }
  if (!bad) return;
  std::ostringstream why;
  why << "terminate on NaN: a training loss before step " << st.global_step + 1
      << " was NaN or infinite (found when the run ended; losses are read every " << loop.log_every_n_steps()
      << " steps and at epoch end)";
  st.invalid_state = true;
  if (st.stop.reason.empty()) st.stop.reason = why.str();
  std::cerr << "cairn: " << why.str() << "\n";
}

Timer::Timer(TimerOptions options) : options_(options) {
  if (options_.max_time <= 0) throw std::invalid_argument("max_time must be > 0 seconds");
  start_ = std::chrono::steady_clock::now();
}

void Timer::on_fit_begin(Loop&) { start_ = std::chrono::steady_clock::now(); }

double Timer::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Timer::check(Loop& loop) {
  if (loop.state().stop.requested || elapsed() < options_.max_time) return;
  std::ostringstream why;
  why << "max_time of " << options_.max_time << " s reached";
  // Not finished: the run resumes from the checkpoint saved at this point.
  loop.state().request_interrupt(0, why.str());
}

LearningRateMonitor::LearningRateMonitor(LearningRateMonitorOptions options) : options_(std::move(options)) {
  if (options_.logging_interval != "step" && options_.logging_interval != "epoch") {
    throw std::invalid_argument("logging_interval must be 'step' or 'epoch'");
  }
}

void LearningRateMonitor::log(Loop& loop) {
  size_t groups = 0;
  for (auto* opt : loop.optimizers()) groups += opt->param_groups().size();
  size_t g = 0;
  for (auto* opt : loop.optimizers()) {
    for (auto& group : opt->param_groups()) {
      const double lr = group.options().get_lr();
      if (g == 0) loop.log("train/lr", lr);
      if (groups > 1) loop.log("train/lr/pg" + std::to_string(g), lr);
      ++g;
    }
  }
}

void LearningRateMonitor::on_batch_begin(Loop& loop) {
  // The lr used by the batch about to run, at the step the loop will count for it.
  const int64_t every = std::max<int64_t>(1, loop.log_every_n_steps());
  // accumulating still describes the previous batch here: false means this batch starts a cycle.
  if (options_.logging_interval == "step" && !loop.state().accumulating && loop.state().global_step % every == 0) {
    log(loop);
  }
}

void LearningRateMonitor::on_epoch_begin(Loop& loop) {
  if (options_.logging_interval == "epoch" && loop.state().batch_in_epoch == 0) log(loop);
}

}  // namespace cairn
