// Run checkpoint: the layout of the dictionary a cairn checkpoint file holds.
// This header is the one place that names its keys; Loop::make_checkpoint()
// and Loop::load_checkpoint() (run_checkpoint.cpp) write and read it, and
// everything else (weights-only files, `cairn inspect`, `cairn report`) goes
// through the helpers below.
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

}  // namespace run_checkpoint
}  // namespace cairn
