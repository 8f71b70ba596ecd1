// Loop: the event bus, the loop state, the metric log and everything a
// checkpoint must save, without any opinion on how the loop is written.
//
// The Trainer drives a Loop; a hand-written LibTorch loop can drive one too:
//
//   cairn::Loop loop;
//   loop.track(*model);
//   loop.track(optimizer);
//   loop.add(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions("runs/x/checkpoints")));
//   cairn::resume(loop, "runs/x/checkpoints");    // cairn/run_dir.h; no-op when there is nothing to resume
//   loop.fit_begin();
//   for (; loop.state().epoch < epochs && !loop.should_stop();) {
//     loop.epoch_begin();
//     for (int64_t k = loop.state().batch_in_epoch; k < n && !loop.should_stop(); ++k) {
//       loop.batch_begin();
//       ... forward, backward ...
//       loop.before_optimizer_step();               // then optimizer.step()
//       loop.log_step("train/loss", loss.item<double>());  // also sets state().batch_loss
//       loop.batch_end();
//     }
//     if (loop.should_stop()) break;
//     loop.validation_begin(); ... loop.validation_end();
//     loop.epoch_end();
//   }
//   loop.fit_end();
#pragma once

#include "cairn/callback.h"
#include "cairn/events.h"
#include "cairn/metrics.h"
#include "cairn/state.h"
#include "cairn/value.h"
#include "cairn/torch_fwd.h"

#include <ATen/core/Generator.h>

#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cairn {

class Scheduler;
class ProcessGroup;

//! When a filtered slot runs (as Ignite's event filters). The count an event
//! is compared with is the loop's own: global_step for batch events, completed
//! epochs (epoch + 1) for epoch and validation events. Counts come from the
//! loop state, so filters behave the same after a resume.
//!   loop.on(Event::batch_end, cairn::every(100), log_something);
//!   loop.on(Event::epoch_end, cairn::once(3), [](cairn::Loop&) { ... });
//!   loop.on(Event::batch_end, cairn::when([](const cairn::Loop& l) { return l.state().batch_loss > 10; }), warn);
struct EventFilter {
  std::function<bool(const Loop&, int64_t count)> accept;
};
EventFilter every(int64_t n);
EventFilter once(int64_t n);
EventFilter when(std::function<bool(const Loop&)> predicate);
//! The count `filter`s see for event `e` in the loop's current state.
int64_t event_count(const Loop& loop, Event e);

//! The user's own key-values, saved with the run: numbers, strings, lists, tensors.
//!   loop.values().set("n_classes", 1000);  loop.values().get<int64_t>("n_classes");
class UserValues {
 public:
  template <class T>
  void set(const std::string& key, T v) { dict_.set(key, Value(std::move(v))); }
  template <class T>
  T get(const std::string& key) const;
  bool contains(const std::string& key) const { return dict_.contains(key); }
  const Value& raw() const { return dict_; }
  void load(const Value& d) { dict_ = d; }

 private:
  Value dict_ = Value::dict();
};

template <> inline Value UserValues::get<Value>(const std::string& k) const { return dict_.at(k); }
template <> inline int64_t UserValues::get<int64_t>(const std::string& k) const { return dict_.at(k).to_int(); }
template <> inline int UserValues::get<int>(const std::string& k) const { return static_cast<int>(dict_.at(k).to_int()); }
template <> inline double UserValues::get<double>(const std::string& k) const { return dict_.at(k).to_double(); }
template <> inline bool UserValues::get<bool>(const std::string& k) const { return dict_.at(k).to_bool(); }
template <> inline std::string UserValues::get<std::string>(const std::string& k) const { return dict_.at(k).to_string(); }
template <> inline at::Tensor UserValues::get<at::Tensor>(const std::string& k) const { return dict_.at(k).to_tensor(); }
template <> inline std::vector<double> UserValues::get<std::vector<double>>(const std::string& k) const { return dict_.at(k).to_double_list(); }
template <> inline std::vector<int64_t> UserValues::get<std::vector<int64_t>>(const std::string& k) const { return dict_.at(k).to_int_list(); }

//! A checkpoint that does not match what this run tracks (model names or
//! shapes, optimizer kind). what() lists every difference.
class CheckpointMismatch : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! A checkpoint holds callback state that no callback of this run claims (a
//! callback removed, or its identity changed): resuming would drop it at the
//! next save. what() names the keys. Loop::set_allow_unclaimed_state(true)
//! (the CLI's --allow-config-change) drops it with a warning instead. The CLI
//! exits 2, as for any refused config change.
class UnclaimedState : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

//! What resume() found.
struct ResumeInfo {
  bool resumed = false;              //!< false: nothing to resume, fresh start
  std::string path;                  //!< the checkpoint used
  std::vector<std::string> skipped;  //!< newer files that did not verify, with reasons
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;
  int64_t global_step = 0;
  bool finished = false;             //!< the checkpoint's run had already completed
  std::vector<std::string> set_aside;  //!< damaged files renamed to NAME.corrupt
};


class Loop {
 public:
  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // --- events and callbacks ------------------------------------------------
  Connection on(Event e, std::function<void(Loop&)> fn, Order order = Order::normal);
  //! `fn` runs only when `filter` accepts the event's count (see EventFilter).
  Connection on(Event e, EventFilter filter, std::function<void(Loop&)> fn, Order order = Order::normal);
  EventBus& bus() { return bus_; }
  //! Connects every hook of `cb` in its order group; its state goes into checkpoints
  //! under cb->key(). Adding two callbacks with the same key is an error.
  void add(std::shared_ptr<Callback> cb);
  const std::vector<std::shared_ptr<Callback>>& callbacks() const { return callbacks_; }
  template <class T>
  std::shared_ptr<T> find_callback() const {
    for (const auto& c : callbacks_) {
      if (auto p = std::dynamic_pointer_cast<T>(c)) return p;
    }
    return nullptr;
  }

  LoopState& state() { return state_; }
  const LoopState& state() const { return state_; }
  MetricLog& metrics() { return metrics_; }
  const MetricLog& metrics() const { return metrics_; }
  UserValues& values() { return values_; }

  // --- what checkpoints save -----------------------------------------------
  void track(torch::nn::Module& model);
  void track(const std::shared_ptr<torch::nn::Module>& model) { track(*model); }
  //! Throws std::invalid_argument naming the optimizer when cairn cannot save
  //! its state (see optim_state.h for the supported kinds).
  void track(torch::optim::Optimizer& optimizer);
  void track(const std::shared_ptr<torch::optim::Optimizer>& optimizer) { track(*optimizer); }
  void track(Scheduler& scheduler);
  void track(const std::shared_ptr<Scheduler>& scheduler) { track(*scheduler); }
  //! Any other object with state, saved under `objects[key]`.
  void track(const std::string& key, Stateful& object);
  //! State saved under its own top-level checkpoint key (`grad_scaler`, ...),
  //! for Python readers. A checkpoint without the key leaves `object` as it
  //! is, with a resume warning. Reserved keys (state_dict, loop, ...) are refused.
  void track_section(const std::string& key, Stateful& object);
  //! A random generator of the user's, saved under `rng_states[name]`.
  void track_generator(const std::string& name, at::Generator generator);
  torch::nn::Module* model() const { return model_; }
  const std::vector<torch::optim::Optimizer*>& optimizers() const { return optimizers_; }
  const std::vector<Scheduler*>& schedulers() const { return schedulers_; }

  //! A forward pass over the training data in a fixed order, without
  //! gradients (the Trainer sets it): what SWA's BatchNorm update runs.
  void set_train_pass(std::function<void()> pass) { train_pass_ = std::move(pass); }
  const std::function<void()>& train_pass() const { return train_pass_; }
  //! The evaluation under way uses weights loaded from a checkpoint file (the
  //! Trainer's test of the best checkpoint, `cairn test`): weight-averaging
  //! callbacks leave them alone.
  void set_evaluating_loaded_weights(bool on) { evaluating_loaded_weights_ = on; }
  bool evaluating_loaded_weights() const { return evaluating_loaded_weights_; }

  //! The resolved experiment config, saved as `hyper_parameters`.
  void set_hyper_parameters(Value hp) { hyper_parameters_ = std::move(hp); }
  const Value& hyper_parameters() const { return hyper_parameters_; }
  //! The run directory ("" when there is none); callbacks put files there.
  void set_run_dir(std::string dir) { run_dir_ = std::move(dir); }
  const std::string& run_dir() const { return run_dir_; }

  // --- logging ---------------------------------------------------------------
  //! Logs one point at the current (epoch, global_step).
  void log(const std::string& name, double value);
  //! A per-batch value: averaged over the epoch (weighted) into `name`, and
  //! logged as a point `name + "_step"` every log_every_n_steps training steps.
  //! Logging the loss metric (`train/loss`, see set_loss_metric) during
  //! training also sets state().batch_loss, which TerminateOnNaN and the
  //! progress bar read: a hand-written loop needs nothing else.
  void log_step(const std::string& name, double value, double weight = 1.0);
  //! Declares the Metric behind `name` ("valid/f1_macro"; see objectives.h).
  //! Declare before resume(), so a checkpoint's running statistics find it.
  void declare_metric(const std::string& name, std::shared_ptr<const Metric> metric);
  //! Adds a batch to `name`'s running statistics (on the output's device, no
  //! host read). They are logged as one value when the split ends: train at
  //! epoch_end, valid at validation_end, test at test_end. In a distributed
  //! run, training statistics are summed over the ranks at batch_end (so the
  //! checkpoint rank 0 writes holds everyone's), valid/test at their end.
  void update_metric(const std::string& name, const at::Tensor& output, const at::Tensor& target);
  //! log_step() without a host read: `value` (a one-element tensor, on any
  //! device) joins the epoch's weighted mean of `name` on the device, and is
  //! read only at log_every_n_steps points (logged as `name + "_step"`; for
  //! the loss metric it also sets state().batch_loss, which the progress bar
  //! and TerminateOnNaN then see). In a distributed run it is read at once
  //! and reduced with the other step values.
  void log_step_tensor(const std::string& name, const at::Tensor& value, double weight = 1.0);
  //! The loss of this training step, as a tensor: state().batch_loss is read
  //! from it at log points when nothing logged the loss metric (the Trainer
  //! passes what training_step returned).
  void note_step_loss(const at::Tensor& loss);
  //! While `sink` is set, log_step_tensor(), update_metric() and
  //! note_step_loss() are recorded into it instead of applied, and log_step()
  //! and log() throw std::logic_error (a host value). The Trainer records what
  //! a captured training step logs (trainer.cuda_graphs) and applies it after
  //! every replay, to the step's outputs as they then are. nullptr: apply again.
  void record_step_logs(std::vector<std::function<void()>>* sink) { recording_ = sink; }
  bool recording_step_logs() const { return recording_ != nullptr; }
  //! Whether a training loss given to note_step_loss() or log_step_tensor()
  //! was inf or NaN since the last call (one host read; TerminateOnNaN asks
  //! at every epoch end, so a NaN between log points is still caught).
  bool nonfinite_loss_since_check();
  //! Whether a training loss not yet read on the host was inf or NaN: this
  //! epoch's running sum of the loss metric and the losses note_step_loss()
  //! watched (one host read; nothing is reset). For decisions outside the
  //! step path: TerminateOnNaN asks at fit_end and on an exception, so a
  //! state that went NaN between log points is never saved.
  bool unread_loss_nonfinite();
  //! Declares `name` a weighted mean kept on the device, so all ranks reduce
  //! it and a resume finds it: the Trainer declares `<split>/loss`.
  void declare_mean(const std::string& name);
  //! The metric whose log_step() sets the batch loss ("train/loss").
  void set_loss_metric(std::string name) { loss_metric_ = std::move(name); }
  void set_log_every_n_steps(int64_t n) { log_every_n_steps_ = n; }
  int64_t log_every_n_steps() const { return log_every_n_steps_; }

  // --- the lifecycle (the Trainer calls these; so can a hand-written loop) ---
  void fit_begin();
  void epoch_begin();
  void batch_begin();
  void after_backward();
  void before_optimizer_step();
  //! Counts the batch (batch_in_epoch; global_step unless state().accumulating),
  //! logs step metrics, emits batch_end and turns a pending SIGTERM/SIGINT into
  //! a stop request.
  void batch_end();
  void validation_begin();
  void validation_batch_end();
  //! Logs the means of this validation's `valid/*` values, then emits.
  void validation_end();
  //! Logs the epoch means of `train/*`, emits epoch_end, then moves to the next epoch.
  //! From its start until the epoch counter moves, an exception cannot be
  //! rolled back (an epoch scheduler has stepped): checkpoints keep the last file.
  void epoch_end();
  //! Says that state a roll-back cannot undo has changed (an optimizer or
  //! scheduler step outside before_optimizer_step()): an exception before the
  //! next boundary leaves state().dirty set. The Trainer calls it before an
  //! epoch scheduler steps.
  void mark_stepped();
  //! Declares that this loop's driver calls before_optimizer_step() before
  //! every optimizer step (the Trainer does): then an exception before the
  //! run's first step can be rolled back too. (Without it, a hand-written
  //! loop's steps count as visible only once the hook was seen.)
  void declare_optimizer_hook() { optimizer_hook_seen_ = true; }
  void test_begin();
  void test_batch_end();
  void test_end();
  //! Marks the run finished unless it was interrupted, then emits fit_end.
  void fit_end();
  //! A step threw. When the loop can put its state back to the last batch
  //! boundary (nothing was changed by an optimizer step since), it does so
  //! (RNG, metric accumulators and journal, counters, model buffers) and the
  //! state may be saved; otherwise state().dirty is set and checkpoints keep
  //! the newest clean file. Then emits `exception`; current_exception() holds it.
  //! Hand-written loops get the roll-back by calling before_optimizer_step().
  void exception(std::exception_ptr e);
  std::exception_ptr current_exception() const { return current_exception_; }
  //! Whether the loop should end at this batch boundary. In a distributed run
  //! this is the ranks' common decision: a stop requested on any rank (a
  //! callback, a signal, a failed save) holds on every rank from the same
  //! agreement point on (the end of batch_end, validation_end, epoch_end).
  bool should_stop() const { return group_ ? agreed_stop_ : state_.stop.requested; }

  // --- more than one process ---------------------------------------------------
  //! Makes this loop one rank of a data-parallel job (the Trainer does this
  //! itself). Then: stop requests are agreed on by all ranks; per-batch
  //! `log_step` values, the batch loss and validation/test accumulators are
  //! reduced (sums and weights) so every rank logs the same values; callbacks
  //! with rank_zero_only() run on rank 0 only; checkpoints hold every rank's RNG
  //! state (`rng_states.ranks`) and are written by rank 0; resume reads the file
  //! rank 0 chose. Every rank must call the same lifecycle methods in the same order.
  void set_process_group(std::shared_ptr<ProcessGroup> group);
  const std::shared_ptr<ProcessGroup>& process_group() const { return group_; }
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  bool is_rank_zero() const { return rank_ == 0; }
  //! Rank 0's `local` on every rank (a broadcast); `local` itself in one
  //! process. For decisions that depend on a clock or on rank 0's writer.
  bool rank_zero_decides(bool local);

  // --- checkpoints -----------------------------------------------------------
  //! Assembles the full checkpoint dict, with references to the live tensors
  //! (then emits save_checkpoint, so callbacks can amend pending_checkpoint()).
  Value make_checkpoint(bool emit_event = true);
  Value& pending_checkpoint() { return pending_; }
  //! Restores everything from a checkpoint dict. Throws CheckpointMismatch.
  void load_checkpoint(const Value& checkpoint, const std::string& source = "");
  //! The checkpoint being restored, while `load_checkpoint` callbacks run
  //! (nullptr otherwise): keys added through pending_checkpoint() read back here.
  const Value* loaded_checkpoint() const { return loaded_; }
  //! Called by resume() with the chosen checkpoint before anything is loaded
  //! or written; throwing refuses the resume (the CLI checks config drift here).
  void set_resume_check(std::function<void(const Value& checkpoint, const std::string& path)> check) {
    resume_check_ = std::move(check);
  }
  //! Whether load_checkpoint() may drop callback state nothing claims (see
  //! UnclaimedState); default false.
  void set_allow_unclaimed_state(bool allow) { allow_unclaimed_state_ = allow; }
  //! Records a warning in the checkpoint's resume history (`loop.resume_warnings`).
  void add_resume_warning(const std::string& text);
  const std::vector<std::string>& resume_warnings() const { return resume_warnings_; }
  //! What the last resume (cairn::resume in cairn/run_dir.h) found.
  const ResumeInfo& resume_info() const { return resume_info_; }
  //! Keeps `resource` (a run folder's lock) alive until fit_end() or
  //! exception(): the run layer decides what a fit holds, the Loop only how long.
  void hold_until_fit_end(std::shared_ptr<void> resource) { held_.push_back(std::move(resource)); }
  //! Lets go of what hold_until_fit_end() kept, for a fit that ends without
  //! fit_end() (a finished run that has nothing to do).
  void release_held() { held_.clear(); }
  //! Deprecated: cairn::resume(loop, path) in cairn/run_dir.h.
  [[deprecated("use cairn::resume(loop, path) from cairn/run_dir.h")]] ResumeInfo resume(const std::string& path);
  //! Deprecated: cairn::lock_for_fit(loop, dir) in cairn/run_dir.h.
  [[deprecated("use cairn::lock_for_fit(loop, dir) from cairn/run_dir.h")]] void lock_directory(const std::string& dir);
  //! The check set_resume_check() installed (empty when none).
  const std::function<void(const Value&, const std::string&)>& resume_check() const { return resume_check_; }
  //! Where this run resumed before: (epoch, global_step) pairs.
  const std::vector<std::pair<int64_t, int64_t>>& resume_points() const { return resume_points_; }

 private:
  void emit(Event e);
  void check_signals();
  //! Distributed: the common stop decision (see should_stop()).
  void agree_on_stop();
  //! Distributed, once a stop is agreed: a signal that reached only some ranks
  //! turns the stop into an interrupt on every rank.
  void agree_on_late_interrupt();
  //! Distributed: this batch's log_step values and batch loss, averaged over the ranks.
  void reduce_step_values();
  //! Distributed: the accumulators of `split` summed over the ranks.
  void reduce_accumulators(const std::string& split);
  //! Distributed: the running statistics `names` of `from`, summed (sums) and
  //! concatenated in rank order (rows) over the ranks, into `into`.
  void reduce_stats(MetricLog& from, const std::vector<std::string>& names, MetricLog& into, bool add);
  //! Remembers the current state as the point exception() can roll back to.
  void mark_boundary();
  //! Puts the state back to the last boundary; false when that is not safe.
  bool roll_back_to_boundary();

  //! The state at the last batch boundary (see exception()).
  struct Boundary {
    bool valid = false;
    int64_t epoch = 0, global_step = 0, batch_in_epoch = 0;
    bool epoch_finished = false;
    Stage stage = Stage::idle;
    Value rng, accumulators, values;
    std::vector<std::pair<std::string, MetricStats>> stats;
    size_t metric_rows = 0;
    std::vector<at::Tensor> buffers;
  };
  //! Where the loop is relative to the boundary: at it, past it without an
  //! optimizer step (can roll back), or past an optimizer step (cannot).
  enum class Phase { at_boundary, in_step, stepped };

  EventBus bus_;
  LoopState state_;
  MetricLog metrics_;
  UserValues values_;
  std::vector<std::shared_ptr<Callback>> callbacks_;
  torch::nn::Module* model_ = nullptr;
  std::vector<torch::optim::Optimizer*> optimizers_;
  std::vector<Scheduler*> schedulers_;
  std::map<std::string, Stateful*> objects_;
  std::map<std::string, Stateful*> sections_;  //!< top-level checkpoint keys
  std::function<void()> train_pass_;
  bool evaluating_loaded_weights_ = false;
  std::map<std::string, at::Generator> generators_;
  Value hyper_parameters_;
  std::string run_dir_;
  int64_t log_every_n_steps_ = 50;
  struct StepValue {
    std::string name;
    double value, weight;
  };
  std::vector<StepValue> step_values_;  //!< this batch's log_step() values
  MetricLog step_stats_;  //!< distributed training: this batch's metric statistics, before the ranks' sum
  struct StepTensor {
    std::string name;
    at::Tensor value;
  };
  std::vector<StepTensor> step_tensors_;  //!< this batch's log_step_tensor() values, read at log points only
  std::vector<std::function<void()>>* recording_ = nullptr;  //!< record_step_logs()'s sink
  void refuse_host_value_while_recording(const std::string& name) const;
  at::Tensor loss_nonfinite_;  //!< on the device: a training loss since the last check was inf/NaN
  void watch_loss(const at::Tensor& loss);
  std::shared_ptr<ProcessGroup> group_;
  int rank_ = 0, world_size_ = 1;
  bool agreed_stop_ = false;
  std::vector<std::pair<int64_t, int64_t>> resume_points_;
  std::exception_ptr current_exception_;
  Value pending_;
  const Value* loaded_ = nullptr;
  std::function<void(const Value&, const std::string&)> resume_check_;
  bool allow_unclaimed_state_ = false;
  std::vector<std::string> resume_warnings_;
  std::vector<std::string> pending_warnings_;  //!< added by a resume check, stamped once loaded
  void flush_resume_warnings();
  friend ResumeInfo resume(Loop& loop, const std::string& path);  // run_dir.cpp sets resume_info_
  ResumeInfo resume_info_;
  std::vector<std::shared_ptr<void>> held_;
  std::string loss_metric_ = "train/loss";
  Boundary boundary_;
  Phase phase_ = Phase::at_boundary;
  bool optimizer_hook_seen_ = false;  //!< before_optimizer_step() was called: steps are visible
};


//! Copies a state_dict (name -> tensor) into `model`'s parameters and buffers.
//! With `strict`, missing, unexpected and mis-shaped names are an error listing all of them.
void load_model_state(torch::nn::Module& model, const Value& state_dict, bool strict = true);
//! The model's parameters and buffers by name (the tensors themselves, not copies).
Value model_state(const torch::nn::Module& model);
//! Initialises `model` from a file saved by Python's torch.save(model.state_dict())
//! or from a cairn checkpoint (its `state_dict`). Throws CheckpointMismatch / CheckpointError.
void load_weights(torch::nn::Module& model, const std::string& path, bool strict = true);

}  // namespace cairn
