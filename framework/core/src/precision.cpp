#include "cairn/precision.h"

#include "cairn/host_sync.h"

#include "amp/autocast.h"

#include <torch/torch.h>

#include <cmath>
#include <stdexcept>

namespace cairn {

Precision parse_precision(const std::string& text) {
  if (text == "32" || text == "32-true") return Precision::fp32;
  if (text == "bf16-mixed") return Precision::bf16_mixed;
  if (text == "16-mixed") return Precision::fp16_mixed;
  throw std::invalid_argument("precision must be 32, bf16-mixed or 16-mixed, got '" + text + "'");
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::fp32: return "32";
    case Precision::bf16_mixed: return "bf16-mixed";
    case Precision::fp16_mixed: return "16-mixed";
  }
  return "?";
}

namespace {
at::ScalarType dtype_of(Precision p) { return p == Precision::bf16_mixed ? at::kBFloat16 : at::kHalf; }
}  // namespace

bool autocast_supported(c10::DeviceType device, at::ScalarType dtype) { return amp::supported(device, dtype); }

void check_precision(Precision p, c10::DeviceType device) {
  if (p == Precision::fp32) return;
  const std::string where = device == c10::DeviceType::CUDA ? "CUDA" : "the CPU";
  std::string can = "32";
  for (Precision q : {Precision::bf16_mixed, Precision::fp16_mixed}) {
    if (amp::supported(device, dtype_of(q))) can += std::string(", ") + precision_name(q);
  }
  if (!amp::supported(device, dtype_of(p))) {
    throw std::invalid_argument(std::string(precision_name(p)) + " is not supported on " + where +
                                " with this LibTorch " + TORCH_VERSION + "; supported here: " + can);
  }
}

AutocastGuard::AutocastGuard(Precision p, c10::DeviceType device) : device_(device) {
  if (p == Precision::fp32) return;
  prev_enabled_ = amp::enabled(device);
  prev_dtype_ = amp::dtype(device);
  amp::set_dtype(device, dtype_of(p));
  amp::set_enabled(device, true);
  amp::enter();
  active_ = true;
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  amp::leave();
  amp::set_enabled(device_, prev_enabled_);
  amp::set_dtype(device_, prev_dtype_);
}

GradScaler::GradScaler(GradScalerOptions options) : o_(options), scale_(static_cast<float>(options.init_scale)) {
  if (!(o_.init_scale > 0) || !(o_.growth_factor > 1.0) || !(o_.backoff_factor > 0 && o_.backoff_factor < 1.0) ||
      o_.growth_interval < 1) {
    throw std::invalid_argument("grad scaler: init_scale > 0, growth_factor > 1, backoff_factor in (0, 1), growth_interval >= 1");
  }
}

at::Tensor GradScaler::scale(const at::Tensor& loss) const {
  return loss * at::scalar_tensor(scale_, loss.options().dtype(at::kFloat));
}

void GradScaler::unscale_(torch::optim::Optimizer& optimizer) {
  if (unscaled_) throw std::logic_error("GradScaler::unscale_ called twice in one step");
  // As PyTorch: the reciprocal in float64, rounded to float32; every gradient
  // multiplied by it; inf/NaN anywhere marks the step. No host read here.
  const float inv = static_cast<float>(1.0 / static_cast<double>(scale_));
  at::Tensor found;
  for (auto& group : optimizer.param_groups()) {
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      at::Tensor g = p.mutable_grad();
      const at::Tensor bad = g.isfinite().logical_not().any();
      found = found.defined() ? found.logical_or(bad) : bad;
      g.mul_(at::scalar_tensor(inv, g.options().dtype(at::kFloat)));
    }
  }
  found_inf_ = found.defined() && read_bool(found);
  unscaled_ = true;
}

bool GradScaler::step(torch::optim::Optimizer& optimizer) {
  if (!unscaled_) unscale_(optimizer);
  stepped_this_step_ = !found_inf_;
  if (stepped_this_step_) {
    optimizer.step();
  } else {
    ++skipped_;
  }
  return stepped_this_step_;
}

void GradScaler::update() {
  if (!unscaled_) return;  // nothing was measured this step
  // torch._amp_update_scale_: the float32 scale times the (double) factor,
  // stored as float32; a growth that would overflow keeps the old scale.
  if (found_inf_) {
    scale_ = static_cast<float>(static_cast<double>(scale_) * o_.backoff_factor);
    growth_tracker_ = 0;
  } else if (++growth_tracker_ == o_.growth_interval) {
    const float grown = static_cast<float>(static_cast<double>(scale_) * o_.growth_factor);
    if (std::isfinite(grown)) scale_ = grown;
    growth_tracker_ = 0;
  }
  unscaled_ = false;
  found_inf_ = false;
}

Value GradScaler::state_dict() const {
  Value d = Value::dict();
  d.set("scale", static_cast<double>(scale_));
  d.set("growth_factor", o_.growth_factor);
  d.set("backoff_factor", o_.backoff_factor);
  d.set("growth_interval", o_.growth_interval);
  d.set("_growth_tracker", growth_tracker_);
  return d;
}

void GradScaler::load_state_dict(const Value& state) {
  scale_ = static_cast<float>(state.at("scale").to_double());
  o_.growth_factor = state.at("growth_factor").to_double();
  o_.backoff_factor = state.at("backoff_factor").to_double();
  o_.growth_interval = state.at("growth_interval").to_int();
  growth_tracker_ = state.at("_growth_tracker").to_int();
  unscaled_ = found_inf_ = false;
}

}  // namespace cairn
