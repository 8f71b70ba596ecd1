// Checkpoint store: which checkpoint of a folder a run resumes from, and
// which one `cairn inspect` and `cairn report` read (the same file).
//
// Files are ordered by the position they hold (global step, then epoch and
// batch, a finished run after an unfinished one; `last.ckpt` wins ties),
// never by modification time, and verified in full in that order; a damaged
// newer file is skipped (and set aside as NAME.corrupt by a resume). The
// run layer on top of this (which file a resume or a reader takes, the resume
// itself, locks) is cairn/run_dir.h.
//
//   cairn::CheckpointChoice c = cairn::newest_checkpoint("runs/x/checkpoints");
//   if (c.found) std::cout << c.path << " at step " << cairn::run_checkpoint::View(c.checkpoint).global_step();
#pragma once

#include "cairn/value.h"

#include <string>
#include <utility>
#include <vector>

namespace cairn {

//! The newest checkpoint of a folder that verifies, chosen by the position it
//! holds (global step, then epoch and batch, a finished run after an unfinished
//! one; `last.ckpt` wins ties), never by modification time: a folder copied
//! with `cp -r` resumes the right file. Weights-only files are not candidates.
struct CheckpointChoice {
  bool found = false;
  std::string path;   //!< the file chosen
  Value checkpoint;   //!< its whole content, verified (see choose() for when it is left empty)
  std::string why;    //!< when not found: what was asked and what exists
  //! Newer candidates that failed verification: (path, reason).
  std::vector<std::pair<std::string, std::string>> rejected;
};
//! `weights_only_too`: weights-only files are candidates too (for readers
//! that evaluate a run: test, validate, predict).
CheckpointChoice newest_checkpoint(const std::string& dir, bool weights_only_too = false);

//! True when `dir` holds checkpoints and every one whose header reads holds
//! weights only (save_weights_only): there is nothing to resume, and a fit
//! that started over would silently replace the run.
bool holds_weights_only(const std::string& dir);

//! One timeline per folder: moves every checkpoint of `dir` that holds a
//! later position than the file `from` (the abandoned future of a run
//! resumed from `from`) into `dir`/abandoned/<UTC time>/, where no choice
//! looks; `from` itself stays. Returns the files moved (their new paths) and
//! sets `into` to the folder. Throws CheckpointWriteError on a failed move or
//! fsync (with the errno's text); what was moved before stays moved.
std::vector<std::string> abandon_after(const std::string& dir, const std::string& from, std::string* into = nullptr);

//! The checkpoint a reader of a run wants (`cairn report`, `cairn inspect`):
//! `target` is a checkpoint file, a folder of checkpoints, or a run directory
//! (its `checkpoints/` folder). For folders, the newest file that verifies
//! (newest_checkpoint); newer damaged files are in `rejected`. Throws
//! CheckpointError when there is none.
CheckpointChoice open_checkpoint(const std::string& target);

//! Every *.ckpt file in `dir`, newest first by the position each holds (see
//! newest_checkpoint); files whose header cannot be read come last.
std::vector<std::string> list_checkpoints(const std::string& dir);

}  // namespace cairn
