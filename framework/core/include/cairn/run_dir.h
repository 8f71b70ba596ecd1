// The run on disk: where a run's files live (RunDir), which checkpoint a
// resume or a reader takes (choose), and the resume itself (resume). One
// answer for every caller: Trainer::fit and fit's final test, `cairn
// test/validate/predict`, the launcher's restarts and a hand-written loop.
//
// Layers (tests/test_layout.cpp holds them): the checkpoint file
// (checkpoint_file.h: bytes; run_checkpoint.h: the keys and their View) is
// below the store (checkpoint_store.h: a folder of checkpoint files, ordered
// by the position each holds), which is below this header; the Loop knows
// none of them but the keys (it writes and reads the dictionary), and holds
// what a resume locks only until fit_end.
//
//   cairn::Loop loop;  ... loop.track(...); loop.add(...);
//   cairn::ResumeInfo r = cairn::resume(loop, "runs/x/checkpoints");  // nothing there: a fresh start
//   cairn::RunDir run("runs/x");
//   cairn::CheckpointChoice best = cairn::choose(run, "best", cairn::Purpose::evaluate);
#pragma once

#include "cairn/checkpoint_store.h"
#include "cairn/loop.h"

#include <string>

namespace cairn {

//! Where a run's files live. Every path a run keeps is relative to `root`
//! (checkpoints name their files by name only), so a run folder can be copied
//! or moved: `RunDir("runs/copy")` is that copy, wholly.
struct RunDir {
  std::string root;         //!< the run folder ("" is the current directory)
  std::string checkpoints;  //!< its checkpoint folder: root/checkpoints unless a Checkpoint callback's dirpath says otherwise
  RunDir() = default;
  explicit RunDir(std::string root, std::string checkpoints = "");
  //! The run `loop` writes: its run_dir(), and the first callback that keeps
  //! checkpoints names their folder (empty `checkpoints` when none does).
  static RunDir of(const Loop& loop);
  //! A file of the run folder: root/name.
  std::string path(const std::string& name) const;
  std::string config() const { return path("config.yaml"); }   //!< the resolved config the CLI writes
  std::string metrics() const { return path("metrics.csv"); }  //!< the CSV logger's default file
  std::string report() const { return path("report.html"); }  //!< `cairn report`'s default page
};

//! What a choice is for: a resume needs a run state (weights-only files are
//! not candidates, the content is read and verified); evaluating (test,
//! validate, predict, fit's final test) takes any file with weights.
enum class Purpose { resume, evaluate };

//! The one rule for "which checkpoint": `which` is
//!  - "last": the newest file of run.checkpoints that verifies, by the position
//!    it holds (newest_checkpoint; abandoned timelines are never looked at);
//!  - "best": the file a monitoring callback keeps as its best (the newest
//!    file's summary, read in its own folder);
//!  - "auto" (or ""): best when the run keeps one, else last;
//!  - anything else: a checkpoint file's path.
//! found=false with `why` (what was asked, what exists) when it cannot be met;
//! damaged newer files are in `rejected`. `checkpoint` holds the file's
//! verified content for Purpose::resume (and "last"); for an evaluation of
//! "best" or a path it is left to the loader (read once, not twice).
//! A weights-only file named for a resume throws CheckpointError.
CheckpointChoice choose(const RunDir& run, const std::string& which, Purpose purpose);

//! Restores `loop` from `path`: a checkpoint file, or a checkpoint folder
//! whose newest file that verifies is used (choose(..., "last", resume); newer
//! damaged ones are renamed NAME.corrupt with a warning, once a good one is
//! found). A missing or empty folder is a fresh start. A folder is locked for
//! this process until fit_end (RunLock; throws RunLocked when another process
//! trains there). In a job, rank 0 chooses and broadcasts its choice. Throws
//! CheckpointError when a named file cannot be used or every file of the
//! folder is damaged (then nothing is renamed); the loop's resume check
//! (Loop::set_resume_check) runs before anything is loaded.
ResumeInfo resume(Loop& loop, const std::string& path);

//! Locks the folder `dir` for `loop`'s fit (rank 0 of a job only: it owns
//! the run's folders). Throws RunLocked when another process holds it.
void lock_for_fit(Loop& loop, const std::string& dir);

}  // namespace cairn
