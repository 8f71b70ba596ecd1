// Mixed precision: autocast around the forward pass and the loss, and a
// gradient scaler with the semantics of PyTorch's torch.amp.GradScaler.
//
//   precision: 32          float32 everywhere (the default)
//   precision: bf16-mixed  autocast to bfloat16 (CPU and CUDA): no scaler needed
//   precision: 16-mixed    autocast to float16 (CUDA) with a GradScaler
//
// A hand-written loop uses the same pieces:
//   cairn::GradScaler scaler;                      // 16-mixed
//   loop.track("grad_scaler", scaler) ... (the Trainer saves it as the checkpoint's `grad_scaler`)
//   { cairn::AutocastGuard autocast(cairn::Precision::fp16_mixed, device.type()); loss = ...; }
//   scaler.scale(loss).backward();
//   scaler.unscale_(optimizer);                    // before clipping, if any
//   if (scaler.step(optimizer)) scheduler.step();  // a skipped step leaves the schedule alone
//   scaler.update();
#pragma once

#include "cairn/stateful.h"

#include <ATen/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace torch {
namespace optim {
class Optimizer;
}
}  // namespace torch

namespace cairn {

enum class Precision { fp32, bf16_mixed, fp16_mixed };

//! "32" (also "32-true"), "bf16-mixed", "16-mixed"; throws std::invalid_argument.
Precision parse_precision(const std::string& text);
const char* precision_name(Precision p);
//! Throws std::invalid_argument (exit 2 from the CLI) when `p` cannot run on
//! `device` with this build, naming what can.
void check_precision(Precision p, c10::DeviceType device);
//! Whether autocast to `dtype` exists on `device` in this LibTorch.
bool autocast_supported(c10::DeviceType device, at::ScalarType dtype);

//! Autocast on `device` to the precision's dtype for the guard's lifetime
//! (nothing for fp32); the previous state comes back on destruction.
class AutocastGuard {
 public:
  AutocastGuard(Precision p, c10::DeviceType device);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType device_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

struct GradScalerOptions {
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

//! Loss scaling for float16 training, as torch.amp.GradScaler: scale the
//! loss, unscale the gradients (once per step, before clipping), skip the
//! optimizer step when a gradient is inf or NaN, then grow the scale after
//! growth_interval clean steps or back it off after a bad one. Its
//! state_dict() has GradScaler.state_dict()'s keys (scale, growth_factor,
//! backoff_factor, growth_interval, _growth_tracker), so Python's
//! `torch.amp.GradScaler().load_state_dict(ckpt["grad_scaler"])` takes it.
class GradScaler : public Stateful {
 public:
  explicit GradScaler(GradScalerOptions options = {});
  //! loss * scale (the scale in float32, as PyTorch keeps it).
  at::Tensor scale(const at::Tensor& loss) const;
  //! Divides the gradients of `optimizer`'s parameters by the scale, in
  //! place, and records whether any is inf or NaN. Once per step.
  void unscale_(torch::optim::Optimizer& optimizer);
  //! Steps the optimizer unless a gradient was inf/NaN (unscaling first if
  //! unscale_ was not called); returns whether it stepped. One host read.
  bool step(torch::optim::Optimizer& optimizer);
  //! Grows or backs off the scale from this step's result; readies the next step.
  void update();
  double get_scale() const { return scale_; }
  int64_t growth_tracker() const { return growth_tracker_; }
  //! Steps skipped so far because of inf/NaN gradients (not saved).
  int64_t skipped_steps() const { return skipped_; }

  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 private:
  GradScalerOptions o_;
  float scale_;
  int64_t growth_tracker_ = 0;
  bool unscaled_ = false;
  bool found_inf_ = false;
  bool stepped_this_step_ = false;
  int64_t skipped_ = 0;
};

}  // namespace cairn
