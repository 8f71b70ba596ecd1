// LoopState: where a training loop is, and whether it has been asked to stop.
#pragma once

#include <cstdint>
#include <string>

namespace cairn {

enum class Stage { idle, train, validate, test };
const char* stage_name(Stage s);

//! A request to end the loop at the next batch boundary. Callbacks never throw
//! to stop a run; they call LoopState::request_stop() with a reason.
struct StopRequest {
  bool requested = false;
  std::string reason;     //!< e.g. "early stopping: valid/loss did not improve for 3 checks"
  bool interrupt = false; //!< the run is not finished and will resume (signals, max_time)
  int signal = 0;         //!< the signal number for signal interrupts (SIGTERM, SIGINT); 0 otherwise
};

struct LoopState {
  int64_t epoch = 0;              //!< current epoch, 0-based
  int64_t global_step = 0;        //!< optimizer steps over the whole run (= batches without accumulation)
  int64_t batch_in_epoch = 0;     //!< training batches completed in the current epoch
  int64_t max_epochs = 0;         //!< planned epochs (0: unknown)
  int64_t batches_per_epoch = 0;  //!< training batches per epoch (0: unknown)
  //! Examples per optimizer-step batch over all processes (per-process batch x
  //! processes; 0: unknown). Saved with the position, so that a run resumed
  //! with another split of the same global batch continues at the same sample.
  int64_t global_batch_size = 0;
  int64_t train_samples = 0;      //!< examples in the training split (0: unknown)
  Stage stage = Stage::idle;
  bool epoch_finished = false;    //!< true from validation's end until the next epoch begins
  bool finished = false;          //!< the fit completed (max_epochs, or a callback's stop)
  StopRequest stop;

  //! Set when the current state must never be saved (a non-finite loss):
  //! checkpoint callbacks then keep the last good files.
  bool invalid_state = false;
  //! True while gradients of an accumulation cycle are pending (no optimizer
  //! step yet): the state is not a resume point, so saves and stops wait.
  bool accumulating = false;
  //! Set when a step threw and the loop could not roll back to the last batch
  //! boundary: the state is half a step and must never be saved.
  bool dirty = false;
  //! Set by a checkpoint callback when the run's last save (finish, signal,
  //! timer, exception) failed: what the run reached is not on disk. The
  //! message names the newest durable checkpoint. The CLI exits 5.
  std::string final_save_error;

  double batch_loss = 0.0;        //!< loss of the latest training batch
  int64_t batch_size = 0;         //!< size of the latest batch

  void request_stop(std::string reason) {
    // The first reason wins, except over the step limit's: a callback's stop
    // (early stopping at that step's validation) must not read as max_steps,
    // which a later run with more steps would reopen.
    if (stop.requested && !(stop.reason.rfind("max_steps", 0) == 0 && !stop.interrupt)) return;
    stop.requested = true;
    stop.reason = std::move(reason);
  }
  void request_interrupt(int signal, std::string reason) {
    stop.requested = true;
    stop.interrupt = true;
    stop.signal = signal;
    stop.reason = std::move(reason);
  }

  //! Where a resumed run continues: the epoch and the batches already done in it.
  int64_t resume_epoch() const { return epoch_finished ? epoch + 1 : epoch; }
  int64_t resume_batch() const { return epoch_finished ? 0 : batch_in_epoch; }
};

//! A position in a run as people count epochs (from 1, as the progress bar's
//! "epoch 3/10"), for messages: "in epoch 3 after batch 17 (global step
//! 1705)", "after epoch 2 (global step 1688)". Files and checkpoint keys
//! (`epoch`, metrics.csv, `epoch=2-step=...` names) count from 0, as
//! Lightning's do. `epoch` is the 0-based epoch in progress, `batch` the
//! batches of it done.
inline std::string describe_position(int64_t epoch, int64_t batch, int64_t global_step) {
  const std::string step = " (global step " + std::to_string(global_step) + ")";
  if (batch > 0) return "in epoch " + std::to_string(epoch + 1) + " after batch " + std::to_string(batch) + step;
  if (epoch == 0) return "before the first epoch" + step;
  return "after epoch " + std::to_string(epoch) + step;
}

}  // namespace cairn
