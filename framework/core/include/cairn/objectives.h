// Losses and metrics: what a step minimises and what a split measures.
//
// A Loss maps (model output, target) to the scalar to backpropagate. A Metric
// keeps running statistics that add up exactly over batches of any size and
// over ranks (true-positive counts, sums of squares, ...), and turns them into
// one value at the end of a split's pass. The statistics live on the model's
// device (an update reads nothing back to the host), go into checkpoints
// (`loop.metric_states`) and are rolled back with the loop, so a resume in the
// middle of an epoch ends with the same epoch value as a run never stopped.
//
//   trainer.set_loss(std::make_shared<cairn::MseLoss>());
//   trainer.add_metric(std::make_shared<cairn::R2Score>());
//
// In a hand-written loop, the Loop keeps them:
//   loop.declare_metric("valid/f1_macro", std::make_shared<cairn::F1Score>(10, cairn::F1Score::macro));
//   loop.update_metric("valid/f1_macro", logits, y);   // per batch; logged at validation_end
//
// Which targets each takes (N examples; C classes or L labels or D outputs):
//   cross_entropy, nll   output [N, C, ...], targets [N, ...] class indices (int64)
//   bce_with_logits      output and targets the same shape, targets 0..1 (float)
//   mse, l1, smooth_l1   output and targets the same shape (float)
//   accuracy             class targets (argmax of dim 1), or float targets (output > 0 vs target > 0.5)
//   top_k_accuracy       class targets
//   f1                   class targets (argmax), or multi-label float targets (output > 0)
//   auroc                binary: output [N] or [N, 1] (a score or logit) or [N, 2] (logits), targets 0/1
//   mae, rmse, r2        float targets the shape of the output (r2: per output column, then averaged)
//   perplexity           as cross_entropy: exp(mean negative log-likelihood per target)
#pragma once

#include <ATen/Tensor.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace cairn {

//! An output/target pair a loss or metric cannot take. The message names the
//! loss or metric and both shapes.
class ShapeMismatch : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

//! "[64, 10]"
std::string shape_text(const at::Tensor& t);

class Loss {
 public:
  virtual ~Loss() = default;
  //! The YAML name ("cross_entropy").
  virtual std::string name() const = 0;
  //! The loss of one batch, a scalar (the mean over what the loss averages).
  virtual at::Tensor operator()(const at::Tensor& output, const at::Tensor& target) const = 0;
  //! Throws ShapeMismatch when `output` and `target` cannot go together.
  virtual void check(const at::Tensor& output, const at::Tensor& target) const = 0;
  //! The class target this loss ignores (cross_entropy and nll; -100, PyTorch's
  //! default, elsewhere): the classification metrics ignore it too.
  virtual int64_t ignore_index() const { return -100; }
  //! Whether targets are class indices (int64) rather than floats.
  virtual bool class_targets() const = 0;
};

struct ClassLossOptions {
  double label_smoothing = 0.0;  //!< cross_entropy only
  std::vector<double> weight;    //!< per-class weight (empty: none)
  int64_t ignore_index = -100;   //!< targets equal to it count for nothing
};

class CrossEntropyLoss : public Loss {
 public:
  explicit CrossEntropyLoss(ClassLossOptions o = {}) : o_(std::move(o)) {}
  std::string name() const override { return "cross_entropy"; }
  at::Tensor operator()(const at::Tensor& output, const at::Tensor& target) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;
  bool class_targets() const override { return true; }
  int64_t ignore_index() const override { return o_.ignore_index; }

 protected:
  at::Tensor weight_on(const at::Tensor& like) const;
  ClassLossOptions o_;
  mutable at::Tensor weight_;  //!< o_.weight on the last device used
};

//! Negative log-likelihood of log-probabilities (a model ending in log_softmax).
class NllLoss : public CrossEntropyLoss {
 public:
  explicit NllLoss(ClassLossOptions o = {}) : CrossEntropyLoss(std::move(o)) {}
  std::string name() const override { return "nll"; }
  at::Tensor operator()(const at::Tensor& output, const at::Tensor& target) const override;
};

//! Sigmoid plus binary cross-entropy, per element (multi-label, binary).
class BceWithLogitsLoss : public Loss {
 public:
  explicit BceWithLogitsLoss(std::vector<double> pos_weight = {}) : pos_weight_(std::move(pos_weight)) {}
  std::string name() const override { return "bce_with_logits"; }
  at::Tensor operator()(const at::Tensor& output, const at::Tensor& target) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;
  bool class_targets() const override { return false; }

 private:
  std::vector<double> pos_weight_;
  mutable at::Tensor pos_weight_t_;
};

//! mse, l1 and smooth_l1 (beta): element-wise regression losses, averaged.
class RegressionLoss : public Loss {
 public:
  enum Kind { mse, l1, smooth_l1 };
  explicit RegressionLoss(Kind kind, double beta = 1.0) : kind_(kind), beta_(beta) {}
  std::string name() const override;
  at::Tensor operator()(const at::Tensor& output, const at::Tensor& target) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;
  bool class_targets() const override { return false; }

 private:
  Kind kind_;
  double beta_;
};

//! A metric's running statistics: `sums` add up over batches and ranks;
//! `rows` (for metrics that need every example, as exact AUROC) are
//! concatenated. Both are float64 on the model's device, undefined until the
//! first update. Counts the host knows without asking the device (batch
//! sizes) go in `count`, which saves a device operation per update.
struct MetricStats {
  at::Tensor sums;  //!< 1-D
  at::Tensor rows;  //!< 2-D [examples, columns]
  double count = 0;  //!< a count known on the host (examples, weights): summed like `sums`, kept off the device
};

class Metric {
 public:
  virtual ~Metric() = default;
  //! The name logged after the split: "acc" is logged as "valid/acc".
  virtual std::string name() const = 0;
  //! Adds one batch (no host reads). `output` is detached by the caller.
  virtual void update(MetricStats& stats, const at::Tensor& output, const at::Tensor& target) const = 0;
  //! The value of the statistics so far (NaN when there is nothing to measure).
  virtual double compute(const MetricStats& stats) const = 0;
  //! Throws ShapeMismatch when `output` and `target` cannot be measured.
  virtual void check(const at::Tensor& output, const at::Tensor& target) const = 0;
  //! Takes a running mean kept on the host by checkpoints written before
  //! metrics were statistics (sum of batch value x batch size, total size)
  //! into `stats`, when this metric can; returns whether it did.
  virtual bool fold_host_mean(MetricStats& stats, double sum, double weight) const {
    (void)stats, (void)sum, (void)weight;
    return false;
  }
  //! Why statistics read from a checkpoint cannot be this metric's ("" when
  //! they can): their sizes, shapes and dtypes are checked before any update
  //! or compute reads them, so a file whose bytes verify but whose contents do
  //! not fit is an error naming the key, never a crash.
  virtual std::string check_state(const MetricStats& stats) const;
};

//! Why `stats` read from a checkpoint do not have a metric's layout ("" when
//! they do): sums of `exact` float64 values (or a positive multiple of
//! `multiple`; any count when both are 0), rows of `width` columns (0: none
//! kept; -1: any width), a finite count >= 0. For Metric::check_state.
std::string metric_state_shape(const MetricStats& stats, int64_t exact, int64_t multiple, int64_t width);

//! Fraction of correct predictions (see the table above). Logged as "acc".
//! Class targets equal to `ignore_index` count for nothing (as the loss's).
class Accuracy : public Metric {
 public:
  explicit Accuracy(int64_t ignore_index = -100) : ignore_index_(ignore_index) {}
  std::string name() const override { return "acc"; }
  void update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const override;
  double compute(const MetricStats& s) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;
  std::string check_state(const MetricStats& stats) const override;
  //! The old host mean of batch accuracies weighted by batch size is the
  //! count of correct predictions over the examples: exactly these statistics.
  bool fold_host_mean(MetricStats& stats, double sum, double weight) const override;

 protected:
  int64_t ignore_index_;
};

//! A target among the k largest outputs. Logged as "top{k}_acc".
class TopKAccuracy : public Accuracy {
 public:
  explicit TopKAccuracy(int64_t k, int64_t ignore_index = -100) : Accuracy(ignore_index), k_(k) {}
  std::string name() const override { return "top" + std::to_string(k_) + "_acc"; }
  void update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;

 private:
  int64_t k_;
};

//! F1 as scikit-learn's f1_score and torchmetrics define it. Class targets
//! (`classes` > 0): macro averages the per-class F1 over the classes present
//! or predicted (a class neither present nor predicted is left out), weighted
//! weighs each by its support, micro pools the counts (= accuracy); targets
//! equal to `ignore_index` count for nothing. Float targets (`classes` 0): one
//! column (or [N]) is a binary task of two classes, 0 and 1, averaged the same
//! way; several columns are labels, each counted (an absent label's F1 is 0).
//! Logged as "f1_macro" / "f1_micro" / "f1_weighted".
class F1Score : public Metric {
 public:
  enum Average { macro, micro, weighted };
  F1Score(int64_t classes, Average average, int64_t ignore_index = -100)
      : classes_(classes), average_(average), ignore_index_(ignore_index) {}
  std::string name() const override {
    return average_ == macro ? "f1_macro" : average_ == micro ? "f1_micro" : "f1_weighted";
  }
  void update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const override;
  double compute(const MetricStats& s) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;
  std::string check_state(const MetricStats& stats) const override;

 private:
  int64_t classes_;
  Average average_;
  int64_t ignore_index_;
};

//! Area under the ROC curve of a binary task, exact (ties share their rank,
//! as scikit-learn's roc_auc_score): it keeps every score. Logged as "auroc".
class BinaryAuroc : public Metric {
 public:
  std::string name() const override { return "auroc"; }
  void update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const override;
  double compute(const MetricStats& s) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;
  std::string check_state(const MetricStats& stats) const override;
};

//! mae (mean absolute error) and rmse (root of the mean squared error, over
//! every element) of a regression.
class ErrorMetric : public Metric {
 public:
  enum Kind { mae, rmse };
  explicit ErrorMetric(Kind kind) : kind_(kind) {}
  std::string name() const override { return kind_ == mae ? "mae" : "rmse"; }
  void update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const override;
  double compute(const MetricStats& s) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;
  std::string check_state(const MetricStats& stats) const override;

 private:
  Kind kind_;
};

//! Coefficient of determination per output column (the dimensions past the
//! first, flattened), averaged uniformly over the columns (scikit-learn's
//! default): 1 - SSE / sum((y - mean y)^2), the spread taken about the mean
//! (each batch's centred sums, merged pairwise: no cancellation). A constant
//! target column gives NaN (there is no spread to explain), and so does the
//! average. Logged as "r2".
class R2Score : public Metric {
 public:
  std::string name() const override { return "r2"; }
  void update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const override;
  double compute(const MetricStats& s) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;
  std::string check_state(const MetricStats& stats) const override;
};

//! exp(mean cross-entropy per target), over every target that is not
//! `ignore_index` (a language model's tokens). Logged as "perplexity".
class Perplexity : public Metric {
 public:
  explicit Perplexity(int64_t ignore_index = -100) : ignore_index_(ignore_index) {}
  std::string name() const override { return "perplexity"; }
  void update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const override;
  double compute(const MetricStats& s) const override;
  void check(const at::Tensor& output, const at::Tensor& target) const override;
  std::string check_state(const MetricStats& stats) const override;

 private:
  int64_t ignore_index_;
};

}  // namespace cairn
