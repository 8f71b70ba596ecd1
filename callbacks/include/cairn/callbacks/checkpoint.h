// Checkpoint: saves the whole run (model, optimizers, schedulers, RNG, metric
// log, callback states, user values, config) so it can resume exactly.
//
//   loop.add(std::make_shared<cairn::Checkpoint>(
//       cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max).save_top_k(2)));
//
// Files: `<dirpath>/last.ckpt` (the newest state, when save_last), the top-k
// files named by `filename`, and `last.prev.ckpt` (the previous last, kept as
// a hard link so a damaged last.ckpt always has a fallback; only a last.ckpt
// known to be good is rotated there). Every write is atomic (see
// checkpoint_file.h); top-k bookkeeping changes only after the file is
// durable, and the best and the newest files are never deleted.
//
// Only clean states are saved: at a batch boundary or after validation. When
// a step throws, the loop rolls back to the last boundary if it can and that
// state is saved; otherwise nothing is written and the newest durable file
// stays the resume point (both are reported). Retention (retention.h) deletes
// a file only once its replacement is durable: when the disk is full the save
// fails loudly and every file stays. If the run's last save fails,
// LoopState::final_save_error says so. The folder is locked for this process
// while it trains (RunLock); a process that never got the lock (refused at
// fit_begin) writes nothing there, not even after an exception.
#pragma once

#include "cairn/async_writer.h"
#include "cairn/callback.h"
#include "cairn/callbacks/retention.h"
#include "cairn/metrics.h"

#include <torch/arg.h>

#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <string>

namespace cairn {

struct CheckpointOptions {
  CheckpointOptions() = default;
  explicit CheckpointOptions(std::string dirpath) : dirpath_(std::move(dirpath)) {}
  //! Folder for the files; "" means `<run dir>/checkpoints`.
  TORCH_ARG(std::string, dirpath) = "";
  //! Metric ranking the top-k files, e.g. "valid/acc"; "" keeps the newest files.
  TORCH_ARG(std::string, monitor) = "";
  //! Whether a smaller (min) or larger (max) monitored value is better.
  TORCH_ARG(Mode, mode) = Mode::min;
  //! A value must beat the k-th best by more than this to enter the top k.
  TORCH_ARG(double, min_delta) = 0.0;
  //! Files to keep: k best (or k newest without a monitor); 0 none; -1 all.
  TORCH_ARG(int64_t, save_top_k) = 1;
  //! Also write last.ckpt on every save.
  TORCH_ARG(bool, save_last) = true;
  //! Save every N training steps (0: off).
  TORCH_ARG(int64_t, every_n_train_steps) = 0;
  //! Save every N epochs, after validation (0: off).
  TORCH_ARG(int64_t, every_n_epochs) = 1;
  //! Save when this many seconds passed since the last save (0: off).
  TORCH_ARG(double, train_time_interval) = 0.0;
  //! File name template: {epoch}, {step} and {metric[:fmt]} (e.g. {valid/acc:.4f});
  //! "" picks epoch={epoch}-step={step}[-<monitor>={<monitor>:.4f}]. '/' becomes '_'.
  TORCH_ARG(std::string, filename) = "";
  //! Save only the model weights (such files cannot resume a run).
  TORCH_ARG(bool, save_weights_only) = false;
  //! Save last.ckpt when a step throws.
  TORCH_ARG(bool, save_on_exception) = true;
  //! When a write fails: "warn" (keep training) or "stop" (stop the run).
  TORCH_ARG(std::string, on_error) = "warn";
  //! Two-phase saving: a short blocking copy of the state into host memory,
  //! then the write on a background thread (YAML `async`).
  TORCH_ARG(bool, async_save) = true;
  //! A save that comes due while one is still being written: "wait" for it,
  //! or "skip" the new one with a warning.
  TORCH_ARG(std::string, on_busy) = "wait";
};

//! The file name template a Checkpoint uses when CheckpointOptions::filename is
//! empty: "epoch={epoch}-step={step}", plus "-valid_acc={valid/acc:.4f}" when
//! it monitors valid/acc.
std::string default_checkpoint_filename(const std::string& monitor);

class Checkpoint : public Callback {
 public:
  explicit Checkpoint(CheckpointOptions options = CheckpointOptions());
  ~Checkpoint() override;  //!< waits for a save in flight

  //! "Checkpoint{monitor=M,mode=X}": cadence options are not part of it.
  std::string key() const override;
  std::vector<std::string> monitors() const override {
    return options_.monitor().empty() ? std::vector<std::string>{} : std::vector<std::string>{options_.monitor()};
  }
  bool claims(const std::string& saved_key) const override;
  std::string best_checkpoint(Loop& loop) override;
  Order order() const override { return Order::saver; }

  void on_fit_begin(Loop& loop) override;
  bool needs_batch_loss(const Loop& loop) const override;
  void on_batch_end(Loop& loop) override;
  //! A validation inside an epoch (trainer.val_check_interval) with a
  //! monitor: its score is ranked and saved as at an epoch's end.
  void on_validation_end(Loop& loop) override;
  void on_epoch_end(Loop& loop) override;
  void on_fit_end(Loop& loop) override;
  void on_exception(Loop& loop) override;

  Value state_dict() const override;
  void load_state_dict(const Value& state) override;
  std::string checkpoint_dir(const Loop& loop) const override;

  //! Saves now (as a step- or epoch-triggered save would). Returns false when
  //! the write failed (synchronous saves) or a due save was skipped.
  bool save(Loop& loop, bool force_last_only = false);
  //! Waits for the background write in flight, if any, and settles its
  //! bookkeeping. Returns false when that write failed.
  bool wait_for_pending(Loop& loop);

  const CheckpointOptions& options() const { return options_; }
  std::string dirpath() const { return dirpath_; }
  const std::string& best_model_path() const { return book_.best_path; }
  std::optional<double> best_model_score() const { return book_.best_score; }
  const std::map<std::string, double>& best_k_models() const { return book_.best_k; }
  const std::string& last_model_path() const { return book_.last_path; }
  //! Seconds spent in the last completed write (background part included), and its size.
  double last_save_seconds() const { return last_save_seconds_; }
  uint64_t last_save_bytes() const { return last_save_bytes_; }
  //! Seconds the training thread was blocked by the last save (assembly + snapshot, or the whole write).
  double last_blocking_seconds() const { return last_blocking_seconds_; }
  //! Saves skipped because one was in flight (on_busy: skip).
  int64_t skipped_saves() const { return skipped_saves_; }
  //! The newest file known to be on disk and verified or written by this
  //! process ("" when none), and the global step it holds.
  const std::string& durable_path() const { return durable_path_; }
  int64_t durable_step() const { return durable_step_; }
  //! "the newest durable checkpoint is ... (step N)" or "there is no durable checkpoint yet".
  std::string durable_text() const;

  //! Renders the filename template (without ".ckpt") for the loop's state.
  std::string format_filename(const Loop& loop) const;
  //! Makes the book's names (as loaded) paths in this run's checkpoint folder
  //! when the resumed file lay in it (`own_folder`); else empties the list.
  void rebase_book(bool own_folder);

 private:
  //! The save schedule part of on_batch_end (every N steps, every T seconds).
  void on_batch_end_due(Loop& loop);
  void resolve_dir(const Loop& loop);
  //! Bookkeeping that a save changes; restored when its write fails.
  using Book = RetentionBook;
  //! Distributed: every rank takes rank 0's book and last-save marks before a
  //! save decides anything (a write fails on rank 0 alone: without this the
  //! ranks' books diverged and their next saves ran different collectives).
  void agree_on_book(Loop& loop);
  //! The file work of one save: link last.prev, write, link last, delete dropped files.
  void write_files(const Value& ckpt, const std::string& primary, bool keep_last,
                   const std::vector<std::string>& to_delete);
  void settle(Loop& loop, std::exception_ptr error);
  void report_failure(Loop& loop, const std::string& what);

  CheckpointOptions options_;
  std::string dirpath_;                          //!< resolved folder
  std::string saved_dirpath_;                    //!< dirpath_ as the state saves it (relative to the run folder)
  std::string loaded_dirpath_;                   //!< the resumed state's `dirpath`
  Book book_;                                    //!< what is kept: top-k files, the best, the newest
  int64_t last_saved_step_ = -1;                 //!< global step of the last save
  bool due_ = false;                             //!< a step save came due mid-accumulation
  //! needs_batch_loss()'s train_time_interval decision, for the step it was
  //! made at: the save then happens exactly on steps whose loss was read.
  mutable int64_t time_decided_step_ = -1;
  mutable bool time_decided_due_ = false;
  bool warned_invalid_ = false;                  //!< the invalid-state warning was printed
  bool last_saved_epoch_end_ = false;            //!< whether that save was at an epoch's end
  std::chrono::steady_clock::time_point last_save_time_;
  double last_save_seconds_ = 0.0;
  uint64_t last_save_bytes_ = 0;
  double last_blocking_seconds_ = 0.0;
  int64_t skipped_saves_ = 0;
  std::string last_error_;             //!< why the latest save failed ("" when it did not)
  std::string durable_path_;           //!< newest file known durable
  int64_t durable_step_ = -1;          //!< its global step
  std::string pending_path_;           //!< the file of the write in flight
  int64_t pending_step_ = -1;          //!< its global step
  std::atomic<bool> last_good_{false}; //!< last.ckpt was verified or written by this process
  Book before_pending_;                //!< bookkeeping to restore if the write in flight fails
  double pending_write_seconds_ = 0;   //!< set by the writer thread
  uint64_t pending_write_bytes_ = 0;   //!< set by the writer thread
  StateSnapshot snapshot_;             //!< reused host buffers
  bool reserved_ = false;              //!< snapshot buffers were allocated ahead of the first save
  bool owns_dir_ = false;              //!< this process holds the folder's lock (set at fit_begin)
  bool job_is_save_ = false;           //!< the background job is a save (not the buffer reservation)
  BackgroundWriter writer_;            //!< at most one write in flight
};

}  // namespace cairn
