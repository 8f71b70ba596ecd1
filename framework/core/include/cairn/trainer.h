// Trainer: drives a Loop over a DataModule. Subclass it like a LightningModule.
//
//   struct MyTrainer : cairn::Trainer {
//     using cairn::Trainer::Trainer;
//     at::Tensor training_step(const cairn::Batch& b) override {
//       auto loss = torch::nll_loss(torch::log_softmax(forward(b.x), 1), b.y);
//       loop().log_step("train/loss", loss.item<double>(), b.size());
//       return loss;  // also becomes loop().state().batch_loss
//     }
//   };
//   MyTrainer t(cairn::TrainerOptions().max_epochs(5));
//   t.set_model(cairn::Model::wrap(net));
//   t.set_data(std::make_shared<cairn::SyntheticData>(cairn::SyntheticOptions{}));
//   t.fit();
#pragma once

#include "cairn/data.h"
#include "cairn/loop.h"
#include "cairn/model.h"
#include "cairn/objectives.h"
#include "cairn/precision.h"

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cairn {

class Scheduler;
class ProcessGroup;
class GradientSync;
namespace detail {
struct GraphedStep;
}

/// Trainer options. `Trainer(TrainerOptions().max_epochs(10).threads(1))`
struct TrainerOptions {
  //! Epochs to train.
  TORCH_ARG(int64_t, max_epochs) = 10;
  //! Optimizer steps to train (0: no limit): the run stops after that step
  //! (at max_epochs if that comes first). A stop in the middle of an epoch
  //! skips that epoch's validation; resumed with a larger max_steps (or
  //! none), the run continues at that batch.
  TORCH_ARG(int64_t, max_steps) = 0;
  //! Validation inside an epoch as well as at its end (0: at the end only):
  //! every N training batches (an integer >= 1), or every that fraction of the
  //! epoch's batches (val_check_fraction). A resume at such a point runs the
  //! validation it had not run yet first, so the metric history is the same.
  TORCH_ARG(double, val_check_interval) = 0;
  TORCH_ARG(bool, val_check_fraction) = false;
  //! fit() handles SIGTERM and SIGINT while it runs (signals::Scope): the
  //! first one stops at the next batch boundary, the checkpoint callbacks
  //! save, and fit returns with `interrupted` set (exit with 128 + signal); a
  //! second SIGINT exits at once. false: the program's own handlers stay.
  TORCH_ARG(bool, handle_signals) = true;
  //! Intra-op threads (torch::set_num_threads). 1 is fastest for small models
  //! on small machines; results are bitwise reproducible only with the same
  //! value. 0 leaves LibTorch's default.
  TORCH_ARG(int64_t, threads) = 1;
  //! "auto" (CUDA when the build and the machine have it), "cpu" or "cuda[:N]".
  TORCH_ARG(std::string, device) = "auto";
  //! "32", "bf16-mixed" (autocast to bfloat16; CPU and CUDA) or "16-mixed"
  //! (float16 with a GradScaler; CUDA, and the CPU on LibTorch 2.x). Autocast
  //! covers the forward pass and the loss (training_step, validation_step,
  //! test_step, predict); the scaler's state is saved as `grad_scaler`.
  TORCH_ARG(std::string, precision) = "32";
  //! Step metrics (`train/loss_step`) are logged every N training steps.
  TORCH_ARG(int64_t, log_every_n_steps) = 50;
  //! Validate every N epochs (when the data has a validation split).
  TORCH_ARG(int64_t, check_val_every_n_epoch) = 1;
  //! Run the test split after fit (when the data has one).
  TORCH_ARG(bool, run_test) = true;
  //! Which weights fit()'s test pass uses: "best" (the best checkpoint a
  //! monitoring callback kept, when there is one; else the final weights) or
  //! "last" (the final weights). It says which file it used; the run's state
  //! (and so last.ckpt) keeps the final weights either way.
  TORCH_ARG(std::string, test_ckpt) = "best";
  //! Clip gradients before each optimizer step (0: off).
  TORCH_ARG(double, gradient_clip_val) = 0.0;
  //! "norm" (total 2-norm of all gradients) or "value" (each element).
  TORCH_ARG(std::string, gradient_clip_algorithm) = "norm";
  //! Sum gradients over N batches per optimizer step (the loss is divided by
  //! N). global_step counts optimizer steps; saves and stops happen only at
  //! the end of a cycle, so resume stays exact.
  TORCH_ARG(int64_t, accumulate_grad_batches) = 1;
  //! Where the data sets live while training (`data.device` in YAML):
  //! "auto": on the model's CUDA device when train+valid+test fit in half of
  //! its free memory (said in one line), else on the CPU (evaluate, test and
  //! predict on a trainer that did not fit keep them there); "cuda": on the
  //! model's CUDA device, or std::invalid_argument naming the sizes; "cpu".
  //! Batches of data on the model's device are gathered there (the epoch's
  //! order goes to the device once per epoch): no copy and no host wait per step.
  TORCH_ARG(std::string, data_device) = "auto";
  //! Prepare the next training batch on a helper thread while the step runs
  //! (`data.prefetch`): "auto" (whenever batches are gathered on the host:
  //! always on the CPU; for a CUDA model, data that stays on the CPU, whose
  //! batches are gathered into pinned memory and copied without blocking),
  //! "true", "false". The helper thread only gathers rows; to_device() runs
  //! on the training thread. The batches and their order are the same either way.
  TORCH_ARG(std::string, prefetch) = "auto";
  //! Worker threads that read, decode and transform batches ahead of the step
  //! (`data.workers`): 0 reads them on the training thread (or the one
  //! data.prefetch helper); N > 0 keeps N batches in flight ahead of the step. Every
  //! example's randomness is seeded by (seed, epoch, index): the batches are
  //! the same bits for any number of workers, also across a resume.
  TORCH_ARG(int64_t, workers) = 0;
  //! Capture the training step's forward pass, loss and backward pass in a
  //! CUDA graph and replay it for every batch of the captured shape
  //! (`trainer.cuda_graphs`): one launch instead of one per op. The optimizer
  //! step, gradient clipping, metrics and callbacks run uncaptured after each
  //! replay, so step counts, learning rates and checkpoints are as without.
  //! The first full batch after the run's first step is run uncaptured, then
  //! captured and replayed from the same state: the replay must equal it bit
  //! for bit (loss, gradients, buffers), else the run trains uncaptured. A
  //! step that waits for the device (a host read), fails to capture, or a run
  //! that cannot be captured (no CUDA, precision other than 32, gradient
  //! accumulation, several processes) trains uncaptured, with one warning
  //! that says why. Batches of another shape (the epoch's last) run
  //! uncaptured. A replay repeats device work only: training_step() must not
  //! depend on host values that change between steps or change host state;
  //! what it logs through the Loop (log_step_tensor, update_metric) is
  //! applied after every replay. Parameters replaced, frozen or unfrozen, or a
  //! module's mode switched: the step is captured again.
  TORCH_ARG(bool, cuda_graphs) = false;

  // --- more than one process (when the environment names a job: RANK,
  // WORLD_SIZE, MASTER_ADDR, MASTER_PORT as set by `cairn fit --nproc`,
  // torchrun or srun; see distributed.h) ---
  //! "auto" (NCCL for a CUDA model where this build has it, else Gloo),
  //! "gloo" or "nccl" (CUDA builds with NCCL only; see choose_backend()).
  TORCH_ARG(std::string, dist_backend) = "auto";
  //! Seconds to wait for the other processes, at start and in every collective.
  TORCH_ARG(double, dist_timeout) = 300.0;
  //! Gradient buckets of about this many MB are averaged while backward runs.
  TORCH_ARG(double, bucket_cap_mb) = 25.0;
};

//! How fit() ended.
struct FitResult {
  bool interrupted = false;      //!< stopped by a signal: resumable
  int signal = 0;                //!< the signal, when interrupted
  bool already_finished = false; //!< resumed a finished run: nothing was done
  std::string stop_reason;       //!< why a callback stopped the run early ("" if it ran to max_epochs)
  int64_t epochs_completed = 0;
  int64_t global_step = 0;
  //! Non-empty when the run's last save failed: what it reached is not on disk.
  //! The message names the newest durable checkpoint. (`cairn fit` exits 5.)
  std::string save_error;
};

class Trainer {
 public:
  explicit Trainer(TrainerOptions options = TrainerOptions());
  virtual ~Trainer();

  Loop& loop() { return loop_; }
  const TrainerOptions& options() const { return options_; }
  Trainer& add_callback(std::shared_ptr<Callback> cb);
  Trainer& set_model(Model model);
  Trainer& set_data(std::shared_ptr<DataModule> data);
  Trainer& set_optimizer(std::shared_ptr<torch::optim::Optimizer> optimizer);
  Trainer& set_scheduler(std::shared_ptr<Scheduler> scheduler);
  //! The loss the default steps minimise (default: cross-entropy).
  Trainer& set_loss(std::shared_ptr<Loss> loss);
  //! Adds a metric that every split measures: logged as `train/<name>`,
  //! `valid/<name>`, `test/<name>` from exact running statistics (see
  //! objectives.h). Without any, a classification loss gets Accuracy ("acc").
  Trainer& add_metric(std::shared_ptr<Metric> metric);
  //! Replaces the metrics (an empty list: the loss alone).
  Trainer& set_metrics(std::vector<std::shared_ptr<Metric>> metrics);
  const std::shared_ptr<Loss>& loss() const { return loss_; }
  const std::vector<std::shared_ptr<Metric>>& metrics() const { return metrics_; }
  //! Resume from a checkpoint file or directory at fit() ("" = fresh start).
  Trainer& resume_from(std::string path);
  //! Trains as one rank of `group` (data parallel). Without it, fit() joins
  //! the job the environment names, if any. data.batch_size is per process:
  //! each optimizer step consumes batch_size x processes examples, a slice of
  //! the epoch's (seed, epoch) order per rank; gradients are averaged as DDP
  //! does; validation and test are split over the ranks and their metrics
  //! reduced; rank 0 writes checkpoints and logs.
  Trainer& set_process_group(std::shared_ptr<ProcessGroup> group);
  const std::shared_ptr<ProcessGroup>& process_group() const { return group_; }

  //! Trains: configure_optimizers(), resume (if asked), then epochs of
  //! training and validation, a test pass, and fit_end. Exceptions from steps
  //! emit `exception` (the checkpoint callback saves) and are rethrown.
  FitResult fit();
  //! Evaluates on the test split and logs `test/loss`, `test/acc`; returns test/acc.
  double test();
  //! Evaluates `split` ("valid" or "test") with the weights of checkpoint
  //! `ckpt` (a file; "" = the model's current weights) and returns the
  //! split's metrics by name ("test/loss" -> ...). A checkpoint whose
  //! weights do not fit the model is a CheckpointMismatch naming every key
  //! and shape. Nothing is written: callbacks see the split's events as usual.
  std::map<std::string, double> evaluate(const std::string& split, const std::string& ckpt = "");
  std::map<std::string, double> test(const std::string& ckpt) { return evaluate("test", ckpt); }
  std::map<std::string, double> validate(const std::string& ckpt = "") { return evaluate("valid", ckpt); }
  //! The model's outputs for every row of `data`, in order (on the CPU), with
  //! the weights of `ckpt` ("" = current); `data.y` is not needed.
  at::Tensor predict(const Dataset& data, const std::string& ckpt = "");
  //! Loads the weights (state_dict) of checkpoint file `path` into the model.
  void load_model_weights(const std::string& path);
  //! What fit's final test measured, in words ("the best checkpoint P: the
  //! SWA average (state_dict)", "the final weights"); "" before one ran.
  const std::string& tested() const { return tested_; }

  Model& model() { return model_; }
  DataModule& data();
  torch::Device device() const { return device_; }
  torch::optim::Optimizer& optimizer();
  Scheduler* scheduler() { return scheduler_.get(); }
  //! The loss scaler of 16-mixed (nullptr otherwise); set up by fit().
  GradScaler* grad_scaler() { return scaler_.get(); }
  const ResumeInfo& resume_info() const { return resume_info_; }

 protected:
  //! The model's forward pass (default: Model::forward).
  virtual at::Tensor forward(const at::Tensor& x);
  //! One training batch: returns the loss to backpropagate. The default
  //! applies loss() to the model's output and the targets, logging
  //! train/loss and updating the metrics (train/acc by default).
  virtual at::Tensor training_step(const Batch& batch);
  //! One validation batch: the default logs valid/loss and the metrics.
  virtual void validation_step(const Batch& batch);
  //! One test batch: the default logs test/loss and the metrics.
  virtual void test_step(const Batch& batch);
  //! Creates the optimizer (and scheduler) unless set_optimizer() was called.
  //! The default is Adam(lr=1e-3) over the model's parameters.
  virtual void configure_optimizers();
  //! Moves a batch to device() (from pinned memory without blocking when the
  //! data stays on the CPU for a CUDA model). Called on the training thread,
  //! in step order, also when the next batch's rows are gathered ahead on the
  //! helper thread (data.prefetch): an override may draw random numbers.
  virtual Batch to_device(const Batch& batch);

  //! What the default steps share: the loss of `output` against batch.y,
  //! logged as `<split>/loss` (per step for training, with the batch size as
  //! weight), and every metric updated; returns the loss. The first call
  //! checks the shapes (ShapeMismatch names the loss or metric and both shapes).
  at::Tensor measure(const std::string& split, const at::Tensor& output, const Batch& batch, bool per_step);
  //! The name measure() had before losses and metrics could be chosen.
  at::Tensor classification_metrics(const std::string& split, const at::Tensor& logits, const Batch& batch,
                                    bool per_step) {
    return measure(split, logits, batch, per_step);
  }

 private:
  //! Everything fit() needs; `training` false for evaluate/test/predict on a
  //! fresh trainer: data.device auto then leaves the data sets on the CPU
  //! (only a split or two is read once) and nothing about captured steps is said.
  void setup(bool training = true);
  void run_validation();
  void run_test();
  //! One pass over the valid or test split (shared by both): returns the
  //! names of the metrics it logged.
  //! Refuses a monitor (a callback's, the scheduler's) this run cannot log:
  //! before training, a valid/ metric without validation data; after the
  //! first epoch that validated, any monitor still without a value.
  void check_monitors(bool after_validation);
  //! The batches between validations inside an epoch of `n` batches (0: none).
  int64_t val_check_batches(int64_t n);
  std::string tested_;          //!< what fit's final test measured, in words
  std::string loaded_weights_;  //!< what load_model_weights last loaded, in words
  bool monitors_checked_ = false;
  std::vector<std::string> run_eval(const std::string& split);
  //! fit()'s test pass, with the weights options().test_ckpt() asks for.
  void final_test();
  void train_epoch(EpochSampler& sampler);
  void clip_gradients();
  //! This rank's contiguous share [begin, end) of `n` items.
  std::pair<int64_t, int64_t> shard(int64_t n) const;
  //! Moves the data sets to the model's device when options().data_device()
  //! asks (or auto chooses) and decides whether batches are prefetched.
  void place_data(bool training);
  //! The training rows `indices` gathered (into pinned memory when batches
  //! are copied to a CUDA device); to_device() then moves them.
  Batch training_batch(const at::Tensor& indices);
  //! The batches of the current epoch when they are made example by example
  //! (a Dataset of one's own, a transform, data.skip_bad): set by train_epoch.
  std::optional<BatchMaker> train_maker_;
  int64_t skipped_ = 0;  //!< bad examples skipped (data.skip_bad) by this process's batches
  //! The epoch's order as indices on the device (for data kept there).
  at::Tensor device_order(EpochSampler& sampler, int64_t epoch);
  //! trainer.cuda_graphs (trainer_graphs.cpp): decides at setup whether the
  //! step can be captured (else warns why not), ...
  void setup_cuda_graphs();
  //! ... and runs this batch's forward, loss and backward as a replay (or
  //! captures it first); false: the caller runs the step uncaptured.
  bool graphed_step(const Batch& batch);
  bool capture_step(const Batch& batch);

  TrainerOptions options_;
  Loop loop_;
  Model model_;
  std::shared_ptr<DataModule> data_;
  std::shared_ptr<torch::optim::Optimizer> optimizer_;
  std::shared_ptr<Scheduler> scheduler_;
  std::shared_ptr<Loss> loss_;
  Precision precision_ = Precision::fp32;
  std::unique_ptr<GradScaler> scaler_;
  std::vector<std::shared_ptr<Metric>> metrics_;
  bool set_up_ = false;          //!< setup() ran (evaluate/predict run it when fit() did not)
  bool metrics_set_ = false;     //!< set_metrics/add_metric was called (else the default)
  bool shapes_checked_ = false;  //!< measure() checked the loss and metrics against a batch
  torch::Device device_{torch::kCPU};
  std::string resume_path_;
  ResumeInfo resume_info_;
  std::shared_ptr<ProcessGroup> group_;
  std::unique_ptr<GradientSync> sync_;
  bool first_step_done_ = false;  //!< the run's first training step ran (its failure is explained with shapes)
  bool data_on_device_ = false;   //!< the data sets were moved to a CUDA device_ (place_data)
  bool pin_batches_ = false;      //!< batches are gathered into pinned host memory, copied without blocking
  bool prefetch_ = false;         //!< the next training batch is prepared on a helper thread
  at::Tensor device_order_;       //!< device_order()'s cache, for epoch device_order_epoch_
  int64_t device_order_epoch_ = -1;
  std::unique_ptr<detail::GraphedStep> graphed_;  //!< trainer.cuda_graphs' captured step, when it may be used
};

//! Resolves "auto" / "cpu" / "cuda" / "cuda:N" to a device; throws
//! std::invalid_argument for CUDA when this build or machine has none.
torch::Device resolve_device(const std::string& spec);
//! An exception's message in one line: the cause line of a TorchScript error
//! (not its two tracebacks), else the first line.
std::string short_error(const std::string& what);
//! Sets intra-op threads for LibTorch and, where present, OpenBLAS.
void set_threads(int64_t threads);
//! Free and total bytes of a CUDA device's memory (cudaMemGetInfo), or
//! nullopt where there is no CUDA runtime to ask.
std::optional<std::pair<int64_t, int64_t>> cuda_memory(const torch::Device& device);
//! Why `d` cannot be placed as data.device `want` ("auto", "cpu", "cuda")
//! says with the model on `model_device` (naming the sizes), or "".
std::string data_device_problem(const DataModule& d, const torch::Device& model_device, const std::string& want);
//! "47.0 MB", "1.25 GB": sizes in messages.
std::string format_bytes(int64_t bytes);

}  // namespace cairn
