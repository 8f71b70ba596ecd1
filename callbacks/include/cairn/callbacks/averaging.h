// Weight averaging: an exponential moving average of the weights (EMA) and
// stochastic weight averaging (SWA). Both keep their state in every
// checkpoint, so a resumed run ends with the same averages, bit for bit.
//
// EMA (as Lightning's EMAWeightAveraging: torch.optim.swa_utils'
// AveragedModel with get_ema_multi_avg_fn(decay) and use_buffers=True): the
// first update copies the weights, then after every `every_n_steps`
// optimizer steps avg = lerp(avg, weights, 1 - decay), parameters and
// buffers alike (BatchNorm statistics are averaged too). With `warmup`
// (timm's), the decay of update n is min(decay, (1 + n) / (10 + n)) from the
// first update on.
// With validate_with: ema, validation (and fit's test pass on the final
// weights) measures the averaged weights; the training weights come back
// after. Checkpoints hold the average as the top-level key `ema_state_dict`
// (parameter name -> tensor, as Python's module.state_dict() names them;
// buffers are the model's own) and, when validation measured it,
// `evaluate_with: "ema_state_dict"`, which `cairn test/validate/predict` and
// fit's test of the best checkpoint follow.
//
// SWA (torch.optim.swa_utils: AveragedModel, SWALR, update_bn): from epoch
// `swa_epoch_start` (0-based; a fraction in (0, 1) means that part of
// max_epochs), the learning rate of each parameter group follows SWALR
// from its value then to `swa_lrs` over `annealing_epochs` epochs (cos or
// linear; the epoch's value is set at every batch, over any scheduler), and
// each epoch's weights join the average when its training part ends:
// avg += (weights - avg) / (n_averaged + 1). At the last epoch the average
// replaces the weights and BatchNorm statistics are recomputed over the
// training data *before* that epoch's validation, so the scores logged and
// ranked for the last epoch are the average's. A run that stops early keeps
// its trained weights (Lightning's rule). Checkpoints hold the average as
// `swa_state_dict`; the callback's state holds n_averaged and the phase.
#pragma once

#include "cairn/callback.h"
#include "cairn/torch_fwd.h"

#include <ATen/Tensor.h>

#include <functional>
#include <string>
#include <vector>

namespace cairn {

struct EmaOptions {
  double decay = 0.999;                 //!< in (0, 1)
  bool warmup = false;                  //!< decay_n = min(decay, (1 + n) / (10 + n))
  int64_t every_n_steps = 1;            //!< update after every N optimizer steps
  std::string validate_with = "ema";    //!< "ema" or "model"
};

class Ema : public Callback {
 public:
  explicit Ema(EmaOptions options = {});
  std::string key() const override { return "EMA"; }
  Order order() const override { return Order::producer; }
  void on_fit_begin(Loop& loop) override;
  void on_batch_end(Loop& loop) override;
  void on_validation_begin(Loop& loop) override;
  void on_validation_end(Loop& loop) override;
  void on_test_begin(Loop& loop) override;
  void on_test_end(Loop& loop) override;
  void on_exception(Loop& loop) override;
  void on_save_checkpoint(Loop& loop) override;
  void on_load_checkpoint(Loop& loop) override;
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

  int64_t updates() const { return updates_; }
  //! Validation (and fit's test of the final weights) measures the average.
  bool validates_average() const { return options_.validate_with == "ema"; }
  //! The averaged parameters, in the model's parameter order.
  const std::vector<at::Tensor>& average() const { return average_; }

 private:
  void ensure(Loop& loop);
  void swap_in(Loop& loop);
  void swap_out(Loop& loop);
  EmaOptions options_;
  std::vector<at::Tensor> average_;
  std::vector<at::Tensor> backup_;  //!< the training weights while the average is swapped in
  int64_t updates_ = 0;
  bool swapped_ = false;
};

struct SwaOptions {
  std::vector<double> swa_lrs;          //!< one value for every group, or one per group (required)
  double swa_epoch_start = 0.8;         //!< an epoch (>= 1: 0-based index) or a fraction of max_epochs in (0, 1)
  int64_t annealing_epochs = 10;        //!< epochs to reach swa_lrs (0: at once)
  std::string annealing_strategy = "cos";  //!< "cos" or "linear"
};

class Swa : public Callback {
 public:
  explicit Swa(SwaOptions options);
  std::string key() const override { return "SWA"; }
  //! Before producers: at a validation's start the average is taken (and put
  //! in place) before an EMA swaps its own weights in.
  Order order() const override { return Order::weights; }
  void on_fit_begin(Loop& loop) override;
  void on_epoch_begin(Loop& loop) override;
  void on_batch_begin(Loop& loop) override;
  void on_validation_begin(Loop& loop) override;
  void on_epoch_end(Loop& loop) override;
  void on_fit_end(Loop& loop) override;
  void on_exception(Loop& loop) override;
  void on_save_checkpoint(Loop& loop) override;
  void on_load_checkpoint(Loop& loop) override;
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

  //! The epoch (0-based) averaging starts at, for a run of `max_epochs`.
  int64_t start_epoch(int64_t max_epochs) const;
  int64_t n_averaged() const { return n_averaged_; }
  //! The average replaced the weights and nothing trained since.
  bool applied() const { return applied_ && applied_step_ >= 0; }

 private:
  void set_lrs(Loop& loop);
  void average(Loop& loop);
  void apply(Loop& loop);
  SwaOptions options_;
  std::vector<at::Tensor> average_;
  std::vector<double> start_lrs_;  //!< each group's lr when averaging started
  int64_t n_averaged_ = 0;
  bool applied_ = false;           //!< the average replaced the weights
  int64_t averaged_epoch_ = -1;    //!< the epoch whose weights joined the average last
  int64_t applied_step_ = -1;      //!< the global step the average was applied at (-1: not, or in a file of an older cairn)
  bool fitting_ = false;           //!< between fit_begin and fit_end (validate/test alone never average)
};

//! torch.optim.swa_utils.SWALR's learning rate at its k-th value (k = 0 when
//! it is made, at the first SWA epoch; +1 per epoch), computed as its
//! get_lr() does from the value before: equal to PyTorch's, bit for bit.
double swalr_lr(double start_lr, double swa_lr, int64_t annealing_epochs, const std::string& strategy, int64_t k);

//! Recomputes BatchNorm running statistics of `model` (the C++ API's
//! BatchNorm1d/2d/3d) as the cumulative average over `batches` (forward
//! passes run by the caller), as torch.optim.swa_utils.update_bn. Returns the
//! number of BatchNorm layers found.
int64_t update_batchnorm(torch::nn::Module& model, const std::function<void()>& forward_all);

}  // namespace cairn
