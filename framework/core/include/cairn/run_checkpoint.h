// Run checkpoint: the layout of the dictionary a cairn checkpoint file holds.
// This header is the one place that names its keys; Loop::make_checkpoint()
// and Loop::load_checkpoint() (run_checkpoint.cpp) write and read it, and
// every other reader (the checkpoint store, `cairn inspect`, `cairn report`,
// the drift check, the Trainer's weight loading) goes through View below
// (checkpoint_view.cpp; tests/test_layout.cpp keeps it that way).
//
// Top level (a Contract: Lightning's .ckpt keys, loadable by Python's
// `torch.load(path)`, weights_only included):
//   format_version    int     the layout's version (kFormatVersion; 2: metric series are tensors)
//   section_versions  dict    each section's own version (kSectionVersions), so a
//                             new field in one section never needs a guess on load
//   cairn_version     str
//   epoch, global_step, batch_in_epoch   int   the position a resume continues at
//   state_dict        dict    parameter/buffer name -> tensor
//   optimizer_states  list    PyTorch's optimizer.state_dict() layout, per optimizer
//   lr_schedulers     list    each scheduler's state
//   rng_states        dict    cpu, cuda (per device), named generators; ranks (a job's, by rank)
//   metrics           dict    "split/name" -> {epoch, step, value, seq}: 1-D tensors
//   values            dict    the user's own key-values
//   callbacks         dict    callback key -> its state; a monitoring callback's
//                             state holds a `summary` (MonitorSummary's fields)
//   hyper_parameters  dict    the resolved config
//   loop              dict    finished, stop_reason, threads, world_size,
//                             global_batch_size, samples_in_epoch, accumulators,
//                             resumes, resume_warnings, objects (Loop::track(key, obj))
//   weights_only      bool    only in files written with save_weights_only
#pragma once

#include "cairn/value.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cairn {
namespace run_checkpoint {

constexpr int64_t kFormatVersion = 2;
//! Versions of the sections that carry structure of their own.
constexpr int64_t kLoopSectionVersion = 1;
constexpr int64_t kMetricsSectionVersion = 2;
constexpr int64_t kCallbacksSectionVersion = 2;  //!< 2: monitoring callbacks write a `summary`

//! What a monitoring callback says about its metric, in its state's `summary`.
struct MonitorSummary {
  std::string callback;   //!< its key
  std::string monitor;    //!< e.g. valid/acc
  std::string mode;       //!< min or max
  std::optional<double> best;
  std::string best_path;  //!< the file of the best value ("" when it keeps none)
};
//! The `summary` a monitoring callback writes into its state.
Value summary(const std::string& monitor, const std::string& mode, std::optional<double> best,
              const std::string& best_path);
//! Every monitoring callback's summary in `checkpoint` (files written before
//! summaries existed are read from the Checkpoint and EarlyStopping callbacks'
//! own keys, here and nowhere else). A run keeps its files by name; given the
//! checkpoint's own path `file`, best_path is that name in the file's folder.
std::vector<MonitorSummary> monitor_summaries(const Value& checkpoint, const std::string& file = "");

//! The weights-only form of `checkpoint` (position, weights, config, values).
Value weights_only(const Value& checkpoint);
bool is_weights_only(const Value& checkpoint);

//! A read-only view of a checkpoint's keys: how every reader outside the
//! Loop (the checkpoint store, the CLI's inspect/report/fit, the Trainer's
//! weight loading) reads one. It works on a whole checkpoint or on a header
//! (read_checkpoint with header_only). A key that must be there and is not,
//! or has the wrong type, throws CheckpointError naming it: never a crash.
//!
//!   const run_checkpoint::View v(c);
//!   std::cout << "epoch " << v.epoch() << " step " << v.global_step() << (v.finished() ? " (finished)" : "");
class View {
 public:
  explicit View(const Value& checkpoint, std::string file = "");
  const Value& value() const { return *c_; }
  const std::string& file() const { return file_; }

  //! The position a resume continues at.
  int64_t epoch() const;
  int64_t global_step() const;
  int64_t batch_in_epoch() const;
  //! The run had completed (loop.finished).
  bool finished() const;
  int64_t format_version() const;
  bool weights_only() const { return is_weights_only(*c_); }
  //! The experiment's name (hyper_parameters.name), "" when none.
  std::string name() const;
  //! The resolved config (hyper_parameters), nullptr when none.
  const Value* config() const;
  //! The job's processes and global batch when saved (0 when not recorded).
  int64_t world_size() const;
  int64_t global_batch_size() const;

  //! The model's weights (state_dict), with the weight set the checkpoint's
  //! scores were measured with (`evaluate_with`, e.g. an EMA's parameters)
  //! laid over them when it names one. Throws when either is missing.
  Value evaluated_weights() const;
  //! state_dict with the weight set `key` ("ema_state_dict", "swa_state_dict")
  //! laid over it, a whole state_dict; `key` "state_dict" is the model's own.
  //! Throws CheckpointError naming what is missing.
  Value weights(const std::string& key) const;
  //! Whether the checkpoint holds the weight set `key`.
  bool holds(const std::string& key) const;
  //! The name of that weight set ("state_dict" when the model's own).
  std::string evaluated_with() const;
  //! What those weights are, the one rule for "the model" of a checkpoint:
  //! "ema" (an EMA's average measured by validation: `ema_state_dict`),
  //! "swa" (the SWA average, in place in `state_dict`: key `model_weights`),
  //! else "model" (the trained weights, `state_dict`).
  std::string evaluated_kind() const;
  //! The same in words, for the console: "the EMA average (ema_state_dict)".
  std::string describe_evaluated() const;

  //! One metric series (metrics["split/name"]).
  struct Series {
    std::string name;
    std::vector<int64_t> epoch, step;
    std::vector<double> value;
  };
  std::vector<Series> series() const;
  //! (epoch, global_step) of every resume the run went through.
  std::vector<std::pair<int64_t, int64_t>> resumes() const;
  //! Every monitoring callback's summary; best_path in the folder of file().
  std::vector<MonitorSummary> monitors() const { return monitor_summaries(*c_, file_); }

 private:
  const Value& need(const char* key) const;
  const Value* loop_section() const;
  const Value* c_;
  std::string file_;
};

}  // namespace run_checkpoint
}  // namespace cairn
