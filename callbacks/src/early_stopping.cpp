#include "cairn/callbacks/early_stopping.h"

#include "cairn/loop.h"
#include "cairn/run_checkpoint.h"

#include <cmath>
#include <sstream>

namespace cairn {

EarlyStopping::EarlyStopping(EarlyStoppingOptions options)
    : options_(std::move(options)), best_(options_.mode(), options_.min_delta()) {
  if (options_.patience() < 0) throw std::invalid_argument("patience must be >= 0");
}

std::string EarlyStopping::key() const {
  return "EarlyStopping{monitor=" + options_.monitor() + ",mode=" + mode_name(options_.mode()) + "}";
}

void EarlyStopping::on_fit_begin(Loop& loop) {
  if (!reason_.empty()) loop.state().request_stop(reason_);
}

void EarlyStopping::on_validation_end(Loop& loop) {
  const auto& st = loop.state();
  if (st.batches_per_epoch > 0 && st.batch_in_epoch > 0 && st.batch_in_epoch < st.batches_per_epoch && !st.epoch_finished) {
    on_epoch_end(loop);
  }
}

void EarlyStopping::on_epoch_end(Loop& loop) {
  const auto n = static_cast<int64_t>(loop.metrics().count(options_.monitor()));
  if (n <= seen_) return;  // no new value: nothing to judge
  seen_ = n;
  const double v = *loop.metrics().last(options_.monitor());
  const bool lower_better = options_.mode() == Mode::min;
  std::ostringstream why;
  why.precision(6);
  if (options_.check_finite() && !std::isfinite(v)) {
    why << "early stopping: " << options_.monitor() << " is " << v;
  } else if (options_.stopping_threshold() &&
             (lower_better ? v <= *options_.stopping_threshold() : v >= *options_.stopping_threshold())) {
    why << "early stopping: " << options_.monitor() << " = " << v << " reached the stopping threshold "
        << *options_.stopping_threshold();
  } else if (options_.divergence_threshold() &&
             (lower_better ? v > *options_.divergence_threshold() : v < *options_.divergence_threshold())) {
    why << "early stopping: " << options_.monitor() << " = " << v << " passed the divergence threshold "
        << *options_.divergence_threshold();
  } else if (best_.update(v, loop.state().epoch, loop.state().global_step)) {
    wait_ = 0;
  } else if (++wait_ >= options_.patience()) {
    why << "early stopping: " << options_.monitor() << " did not improve for " << wait_
        << " validation checks (best " << best_.best().value_or(NAN) << " at epoch " << best_.best_epoch() + 1 << ")";
  }
  if (!why.str().empty()) {
    reason_ = why.str();
    stopped_epoch_ = loop.state().epoch;
    loop.state().request_stop(reason_);
  }
}

Value EarlyStopping::state_dict() const {
  Value d = best_.state_dict();
  d.set("monitor", options_.monitor());
  d.set("wait_count", wait_);
  d.set("seen", seen_);
  d.set("stopped_epoch", stopped_epoch_);
  d.set("stop_reason", reason_);
  d.set("patience", options_.patience());
  d.set("summary", run_checkpoint::summary(options_.monitor(), mode_name(options_.mode()), best_.best(), ""));
  return d;
}

void EarlyStopping::load_state_dict(const Value& s) {
  best_.load_state_dict(s);
  wait_ = s.at("wait_count").to_int();
  seen_ = s.at("seen").to_int();
  stopped_epoch_ = s.at("stopped_epoch").to_int();
  reason_ = s.at("stop_reason").to_string();
}

}  // namespace cairn
