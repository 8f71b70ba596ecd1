// The run on disk: RunDir, choose() and resume() (declared in cairn/run_dir.h).
// Every "which checkpoint" question of cairn is answered here, on top of the
// store (checkpoint_store.cpp), so a resume, `cairn test --ckpt best`, fit's
// final test and the launcher's restarts never disagree.
#include "cairn/run_dir.h"

#include "cairn/checkpoint_file.h"
#include "cairn/distributed.h"
#include "cairn/run_checkpoint.h"
#include "cairn/run_lock.h"

#include <cstdio>
#include <filesystem>
#include <iostream>

namespace cairn {

namespace fs = std::filesystem;

RunDir::RunDir(std::string r, std::string c) : root(std::move(r)), checkpoints(std::move(c)) {
  if (checkpoints.empty()) checkpoints = (fs::path(root.empty() ? "." : root) / "checkpoints").string();
}

RunDir RunDir::of(const Loop& loop) {
  RunDir run;
  run.root = loop.run_dir();
  for (const auto& cb : loop.callbacks()) {
    const std::string d = cb->checkpoint_dir(loop);
    if (!d.empty()) {
      run.checkpoints = d;
      break;
    }
  }
  return run;
}

std::string RunDir::path(const std::string& name) const { return (fs::path(root.empty() ? "." : root) / name).string(); }

namespace {
std::string rejected_lines(const CheckpointChoice& c) {
  std::string out;
  for (const auto& r : c.rejected) out += "\n  " + r.second;
  return out;
}
}  // namespace

CheckpointChoice choose(const RunDir& run, const std::string& which, Purpose purpose) {
  const bool named = !which.empty() && which != "best" && which != "last" && which != "auto";
  if (named) {
    CheckpointChoice one;
    std::error_code ec;
    if (!fs::exists(which, ec)) {
      one.why = which + ": no such file (use best, last or a checkpoint path)";
      return one;
    }
    one.path = which;
    one.found = true;
    if (purpose == Purpose::resume) {
      one.checkpoint = read_checkpoint(which);
      if (run_checkpoint::is_weights_only(one.checkpoint)) {
        throw CheckpointError("checkpoint " + which + " holds weights only (save_weights_only) and cannot resume a run");
      }
    }
    return one;
  }
  if (run.checkpoints.empty()) {
    CheckpointChoice none;
    none.why = "the run keeps no checkpoints (no checkpoint callback)";
    return none;
  }
  const std::string asked = which.empty() ? std::string("auto") : which;
  const bool evaluate = purpose == Purpose::evaluate;
  auto newest = [&] {
    // The newest file that verifies: a resume's file, a reader's "last".
    CheckpointChoice c = newest_checkpoint(run.checkpoints, /*weights_only_too=*/evaluate);
    if (!c.found) {
      c.why = asked + ": the run has no checkpoint in " + run.checkpoints;
      if (c.rejected.empty()) {
        c.why += evaluate ? " (train it first: cairn fit --config ...)" : "";
      } else {
        c.why += rejected_lines(c);
      }
    }
    return c;
  };
  if (which == "last" || (!evaluate && which != "best")) return newest();
  // best (or auto): the summaries of the newest file whose header reads (a
  // header only: the best file itself is verified by whoever loads it).
  std::string monitors, newest_path;
  for (const auto& path : list_checkpoints(run.checkpoints)) {
    Value header;
    try {
      ReadOptions ro;
      ro.header_only = true;
      header = read_checkpoint(path, ro);
      const run_checkpoint::View v(header, path);
      if (!evaluate && v.weights_only()) continue;
      newest_path = path;
      for (const auto& m : v.monitors()) {
        std::error_code ec;
        if (!m.best_path.empty() && fs::is_regular_file(m.best_path, ec)) {
          CheckpointChoice best;
          best.found = true;
          best.path = m.best_path;
          if (!evaluate) best.checkpoint = read_checkpoint(best.path);
          return best;
        }
        monitors += (monitors.empty() ? "" : ", ") + m.monitor;
      }
      break;  // the newest file with a readable header answers
    } catch (const CheckpointError&) {
      continue;  // a damaged header: the next newest answers
    }
  }
  if (which != "best") return newest();  // auto: no best kept, the newest
  if (newest_path.empty()) return newest();  // nothing readable at all: say what was found
  CheckpointChoice none;
  none.why = "best: no checkpoint of " + run.checkpoints + " is kept as the best of a monitored metric (" +
             (monitors.empty() ? std::string("no checkpoint callback monitors one") : "monitored: " + monitors) +
             "); the newest is " + newest_path + ", which last chooses";
  return none;
}

void lock_for_fit(Loop& loop, const std::string& dir) {
  if (loop.process_group() && loop.rank() != 0) return;  // rank 0 owns the run's folders for the whole job
  loop.hold_until_fit_end(RunLock::acquire(dir));
}

namespace {
//! A folder's resume on rank 0 (or in one process): lock, choose, set the
//! damaged files aside. Returns the chosen file ("" when there is nothing to
//! resume); `lock` keeps the folder locked once the caller accepts.
std::string choose_in_folder(Loop& loop, const std::string& dir, ResumeInfo& info, Value& content,
                             std::shared_ptr<RunLock>& lock) {
  const auto& group = loop.process_group();
  CheckpointChoice choice;
  try {
    lock = RunLock::acquire(dir);
    choice = choose(RunDir("", dir), "last", Purpose::resume);
  } catch (const std::exception& e) {
    if (group) group->broadcast_bytes(std::string("!") + e.what(), 0);
    throw;
  }
  if (!choice.found) {
    if (choice.rejected.empty()) {
      if (group) group->broadcast_bytes("", 0);
      return "";  // nothing to resume (weights-only files are not run states)
    }
    // Nothing is renamed: the next attempt fails just as loudly.
    const std::string what = "no usable checkpoint in " + dir + ": all " + std::to_string(choice.rejected.size()) +
                             " file(s) are corrupt:" + rejected_lines(choice);
    if (group) group->broadcast_bytes("!" + what, 0);
    throw CheckpointError(what);
  }
  if (group) group->broadcast_bytes(choice.path, 0);
  if (loop.resume_check()) loop.resume_check()(choice.checkpoint, choice.path);
  for (const auto& r : choice.rejected) {
    const std::string aside = r.first + ".corrupt";
    if (::rename(r.first.c_str(), aside.c_str()) == 0) {
      std::cerr << "cairn: warning: " << r.second << "; set aside as " << aside << "\n";
      info.set_aside.push_back(aside);
    } else {
      std::cerr << "cairn: warning: skipping " << r.second << "\n";
    }
    info.skipped.push_back(r.second);
  }
  if (!info.set_aside.empty()) {
    // The renames only keep damaged files out of later choices: a folder
    // that cannot be synced is said, and the resume (already agreed by every rank) goes on.
    try {
      fsync_directory(dir);
    } catch (const CheckpointWriteError& e) {
      std::cerr << "cairn: warning: " << e.what() << "\n";
    }
  }
  content = std::move(choice.checkpoint);
  return choice.path;
}
}  // namespace

ResumeInfo resume(Loop& loop, const std::string& path) {
  ResumeInfo info;
  const auto& group = loop.process_group();
  std::error_code ec;
  // What `path` is (a folder, a file, or nothing yet), as rank 0 sees it: every
  // rank takes the same branch below, whatever the name ends with (a file
  // named without .ckpt once sent rank 0 one way and the others the other,
  // each waiting on the other's collective).
  char kind = fs::is_directory(path, ec) ? 'd' : fs::exists(path, ec) ? 'f' : 'm';
  if (group) kind = group->broadcast_bytes(std::string(1, kind), 0).at(0);
  if (kind == 'm') {
    // A run directory that does not exist yet is a fresh start; a missing file is an error.
    if (fs::path(path).extension() != ".ckpt") {
      loop.resume_info_ = info;
      return info;
    }
    throw CheckpointError("checkpoint " + path + " does not exist");
  }
  Value c;
  std::shared_ptr<RunLock> lock;  // held by the loop once the resume succeeded; a failed one leaves the folder free
  if (kind == 'd' && group && loop.rank() != 0) {
    // Rank 0 chooses (and sets damaged files aside); the others read its choice.
    const std::string chosen = group->broadcast_bytes("", 0);
    if (chosen.empty()) {
      loop.resume_info_ = info;
      return info;
    }
    if (chosen[0] == '!') throw CheckpointError(chosen.substr(1));
    c = read_checkpoint(chosen);
    if (loop.resume_check()) loop.resume_check()(c, chosen);
    info.path = chosen;
  } else if (kind == 'd') {
    info.path = choose_in_folder(loop, path, info, c, lock);
    if (info.path.empty()) {
      loop.hold_until_fit_end(lock);
      loop.resume_info_ = info;
      return info;
    }
  } else {
    c = read_checkpoint(path);
    if (run_checkpoint::is_weights_only(c)) {
      throw CheckpointError("checkpoint " + path + " holds weights only (save_weights_only) and cannot resume a run");
    }
    if (loop.resume_check()) loop.resume_check()(c, path);
    info.path = path;
  }
  loop.load_checkpoint(c, info.path);
  if (lock) loop.hold_until_fit_end(lock);
  const auto& st = loop.state();
  info.resumed = true;
  info.epoch = st.epoch;
  info.batch_in_epoch = st.batch_in_epoch;
  info.global_step = st.global_step;
  info.finished = st.finished;
  loop.resume_info_ = info;
  return info;
}

// The Loop's old spellings, kept for code written against them; defined here
// so the Loop itself knows nothing of the run layer.
ResumeInfo Loop::resume(const std::string& path) { return cairn::resume(*this, path); }
void Loop::lock_directory(const std::string& dir) { lock_for_fit(*this, dir); }

}  // namespace cairn
