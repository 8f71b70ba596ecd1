// A folder of checkpoint files: scanning it, ordering its files by the
// position they hold (not their mtime), verifying in that order, moving an
// abandoned timeline aside. Declared in cairn/checkpoint_store.h; the run
// layer on top (choose, resume, locks) is run_dir.cpp.
#include "cairn/checkpoint_store.h"

#include "cairn/checkpoint_file.h"
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
      const run_checkpoint::View v(h, c.path);
      c.global_step = v.global_step();
      c.epoch = v.epoch();
      c.batch = v.batch_in_epoch();
      c.weights_only = v.weights_only();
      c.finished = v.finished();
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
  const run_checkpoint::View v(h, from);
  const auto position = [](int64_t step, int64_t epoch, int64_t batch, bool finished) {
    return std::make_tuple(step, epoch, batch, finished);
  };
  const auto at = position(v.global_step(), v.epoch(), v.batch_in_epoch(), v.finished());
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

}  // namespace cairn
