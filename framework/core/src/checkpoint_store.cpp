// Which checkpoint a run resumes from: scanning a folder, ordering its files
// by the position they hold (not their mtime), verifying in that order,
// setting damaged files aside, and the Loop's resume policy on top (a file, a
// folder, nothing yet; rank 0 chooses for a job and broadcasts its choice).
// Declared in cairn/checkpoint_store.h (and Loop::resume in cairn/loop.h).
#include "cairn/checkpoint_store.h"

#include "cairn/checkpoint_file.h"
#include "cairn/distributed.h"
#include "cairn/loop.h"
#include "cairn/run_checkpoint.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <tuple>

namespace cairn {

namespace fs = std::filesystem;

namespace {
//! What a checkpoint's header says about where it stands.
struct Candidate {
  std::string path;
  bool readable = false;
  std::string error;
  int64_t global_step = 0, epoch = 0, batch = 0;
  bool finished = false, weights_only = false, is_last = false;
};

std::vector<Candidate> scan_checkpoints(const std::string& dir) {
  std::vector<Candidate> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".ckpt" || !e.is_regular_file(ec)) continue;
    Candidate c;
    c.path = e.path().string();
    c.is_last = e.path().filename() == "last.ckpt";
    try {
      ReadOptions header;
      header.header_only = true;
      const Value h = read_checkpoint(c.path, header);
      c.global_step = h.at("global_step").to_int();
      c.epoch = h.at("epoch").to_int();
      c.batch = h.at("batch_in_epoch").to_int();
      c.weights_only = run_checkpoint::is_weights_only(h);
      if (const Value* loop = h.find("loop")) {
        if (const Value* f = loop->find("finished")) c.finished = f->to_bool();
      }
      c.readable = true;
    } catch (const std::exception& ex) {
      c.error = ex.what();
    }
    out.push_back(std::move(c));
  }
  // Newest position first; last.ckpt wins ties, then names for determinism.
  std::sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) {
    if (a.readable != b.readable) return a.readable;
    const auto ka = std::make_tuple(a.global_step, a.epoch, a.batch, a.finished, a.is_last);
    const auto kb = std::make_tuple(b.global_step, b.epoch, b.batch, b.finished, b.is_last);
    if (ka != kb) return ka > kb;
    return a.path < b.path;
  });
  return out;
}
}  // namespace

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> out;
  for (auto& c : scan_checkpoints(dir)) out.push_back(std::move(c.path));
  return out;
}

CheckpointChoice newest_checkpoint(const std::string& dir, bool weights_only_too) {
  CheckpointChoice choice;
  const auto candidates = scan_checkpoints(dir);
  // Damaged headers first in the report; they are never chosen.
  for (const auto& c : candidates) {
    if (!c.readable) choice.rejected.emplace_back(c.path, c.error);
  }
  for (const auto& c : candidates) {
    if (!c.readable || (c.weights_only && !weights_only_too)) continue;
    try {
      choice.checkpoint = read_checkpoint(c.path);
      choice.path = c.path;
      choice.found = true;
      return choice;
    } catch (const CheckpointError& e) {
      choice.rejected.emplace_back(c.path, e.what());
    }
  }
  return choice;
}

bool holds_weights_only(const std::string& dir) {
  bool weights = false;
  for (const auto& c : scan_checkpoints(dir)) {
    if (!c.readable) continue;
    if (!c.weights_only) return false;
    weights = true;
  }
  return weights;
}

std::vector<std::string> abandon_after(const std::string& dir, const std::string& from, std::string* into) {
  ReadOptions header;
  header.header_only = true;
  const Value h = read_checkpoint(from, header);
  const auto position = [](int64_t step, int64_t epoch, int64_t batch, bool finished) {
    return std::make_tuple(step, epoch, batch, finished);
  };
  bool from_finished = false;
  if (const Value* loop = h.find("loop")) {
    if (const Value* f = loop->find("finished")) from_finished = f->to_bool();
  }
  const auto at = position(h.at("global_step").to_int(), h.at("epoch").to_int(), h.at("batch_in_epoch").to_int(),
                           from_finished);
  std::vector<std::string> moved;
  std::error_code ec;
  fs::path folder;
  for (const auto& c : scan_checkpoints(dir)) {
    if (!c.readable || position(c.global_step, c.epoch, c.batch, c.finished) <= at) continue;
    if (fs::equivalent(c.path, from, ec)) continue;
    if (folder.empty()) {
      char stamp[32];
      const std::time_t now = std::time(nullptr);
      std::tm utc{};
      gmtime_r(&now, &utc);
      std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &utc);
      folder = fs::path(dir) / "abandoned" / stamp;
      for (int n = 2; fs::exists(folder, ec); ++n) folder = fs::path(dir) / "abandoned" / (std::string(stamp) + "-" + std::to_string(n));
      fs::create_directories(folder, ec);
      if (ec) throw CheckpointWriteError("cannot create " + folder.string() + ": " + ec.message(), ec.value());
    }
    const fs::path target = folder / fs::path(c.path).filename();
    if (::rename(c.path.c_str(), target.c_str()) != 0) {
      const int e = errno;
      throw CheckpointWriteError("cannot move " + c.path + " to " + target.string() + ": " + std::strerror(e), e);
    }
    moved.push_back(target.string());
  }
  if (!moved.empty()) {
    fsync_directory(folder.string());
    fsync_directory(dir);
  }
  if (into) *into = folder.string();
  return moved;
}

ResumeInfo Loop::resume(const std::string& path) {
  ResumeInfo info;
  std::error_code ec;
  // What `path` is (a folder, a file, or nothing yet), as rank 0 sees it: every
  // rank takes the same branch below, whatever the name ends with (a file
  // named without .ckpt once sent rank 0 one way and the others the other,
  // each waiting on the other's collective).
  char kind = fs::is_directory(path, ec) ? 'd' : fs::exists(path, ec) ? 'f' : 'm';
  if (group_) kind = group_->broadcast_bytes(std::string(1, kind), 0).at(0);
  if (kind == 'm') {
    // A run directory that does not exist yet is a fresh start; a missing file is an error.
    if (fs::path(path).extension() != ".ckpt") {
      resume_info_ = info;
      return info;
    }
    throw CheckpointError("checkpoint " + path + " does not exist");
  }
  const bool is_dir = kind == 'd';
  if (group_ && rank_ != 0 && is_dir) {
    // Rank 0 owns the run directory (its lock); the others read what it chose.
    resume_into(path, /*is_dir=*/true, info);
    resume_info_ = info;
    return info;
  }
  const size_t locks_before = locks_.size();
  try {
    resume_into(path, is_dir, info);
  } catch (...) {
    locks_.resize(locks_before);  // a failed resume does not keep the folder locked
    throw;
  }
  resume_info_ = info;
  return info;
}

CheckpointChoice open_checkpoint(const std::string& target) {
  std::error_code ec;
  if (!fs::is_directory(target, ec)) {
    CheckpointChoice one;
    one.checkpoint = read_checkpoint(target);
    one.path = target;
    one.found = true;
    return one;
  }
  std::string dir = (fs::path(target) / "checkpoints").string();
  if (!fs::is_directory(dir, ec)) dir = target;
  CheckpointChoice choice = newest_checkpoint(dir);
  if (!choice.found) {
    std::string why;
    for (const auto& r : choice.rejected) why += "\n  " + r.second;
    throw CheckpointError("no usable checkpoint in " + dir + why);
  }
  return choice;
}

void Loop::resume_into(const std::string& path, bool is_dir, ResumeInfo& info) {
  Value c;
  if (is_dir && group_ && rank_ != 0) {
    // Rank 0 chooses (and sets damaged files aside); the others read its choice.
    const std::string chosen = group_->broadcast_bytes("", 0);
    if (chosen.empty()) return;
    if (chosen[0] == '!') throw CheckpointError(chosen.substr(1));
    c = read_checkpoint(chosen);
    if (resume_check_) resume_check_(c, chosen);
    info.path = chosen;
  } else if (is_dir) {
    try {
      lock_directory(path);
    } catch (const std::exception& e) {
      if (group_) group_->broadcast_bytes(std::string("!") + e.what(), 0);
      throw;
    }
    CheckpointChoice choice = newest_checkpoint(path);
    if (!choice.found) {
      if (choice.rejected.empty()) {
        if (group_) group_->broadcast_bytes("", 0);
        return;  // nothing to resume (weights-only files are not run states)
      }
      // Nothing is renamed: the next attempt fails just as loudly.
      std::string why;
      for (const auto& r : choice.rejected) why += "\n  " + r.second;
      const std::string what = "no usable checkpoint in " + path + ": all " + std::to_string(choice.rejected.size()) +
                               " file(s) are corrupt:" + why;
      if (group_) group_->broadcast_bytes("!" + what, 0);
      throw CheckpointError(what);
    }
    if (group_) group_->broadcast_bytes(choice.path, 0);
    if (resume_check_) resume_check_(choice.checkpoint, choice.path);
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
        fsync_directory(path);
      } catch (const CheckpointWriteError& e) {
        std::cerr << "cairn: warning: " << e.what() << "\n";
      }
    }
    c = std::move(choice.checkpoint);
    info.path = choice.path;
  } else {
    c = read_checkpoint(path);
    if (run_checkpoint::is_weights_only(c)) {
      throw CheckpointError("checkpoint " + path + " holds weights only (save_weights_only) and cannot resume a run");
    }
    if (resume_check_) resume_check_(c, path);
    info.path = path;
  }
  load_checkpoint(c, info.path);
  info.resumed = true;
  info.epoch = state_.epoch;
  info.batch_in_epoch = state_.batch_in_epoch;
  info.global_step = state_.global_step;
  info.finished = state_.finished;
}

}  // namespace cairn
