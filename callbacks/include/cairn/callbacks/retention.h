// Retention: which checkpoint files a Checkpoint callback keeps.
//
// A pure decision on a book (no file is touched): given the book and the file
// a save would write, plan() says whether the save keeps a top-k file, what
// the book becomes, and which files that drops. The Checkpoint callback
// commits the new book and deletes the dropped files only once the new file
// is durable; if the write fails, the old book stands and nothing was
// deleted (so the only checkpoint of a run is never lost to a failed save,
// a full disk included).
//
//   cairn::Retention keep(2, cairn::Mode::max, 0.0, /*monitored=*/true);
//   auto plan = keep.plan(book, "ckpt/epoch=3.ckpt", /*value=*/0.91, /*values_seen=*/4);
//   // write plan.file ...; once durable: book = plan.next; remove plan.drop
#pragma once

#include "cairn/metrics.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cairn {

//! What a Checkpoint callback has kept (saved in its state).
struct RetentionBook {
  std::map<std::string, double> best_k;  //!< with a monitor: top-k file -> monitored value
  std::vector<std::string> newest;       //!< without a monitor: kept files, oldest first
  std::string best_path;                 //!< the file of the best monitored value
  std::optional<double> best_score;      //!< the best monitored value
  int64_t seen = 0;                      //!< monitor series length at the last top-k decision
  std::string last_path;                 //!< the newest file written

  bool operator==(const RetentionBook& o) const {
    return best_k == o.best_k && newest == o.newest && best_path == o.best_path && best_score == o.best_score &&
           seen == o.seen && last_path == o.last_path;
  }
  //! A byte string (and back) for agreeing on one book across ranks.
  std::string encode() const;
  static RetentionBook decode(const std::string& bytes);
};

struct RetentionPlan {
  std::string file;            //!< the top-k file this save writes ("" when it keeps none)
  RetentionBook next;          //!< the book once that file is durable
  std::vector<std::string> drop;  //!< files to delete once it is durable (never the best or the new one)
};

class Retention {
 public:
  //! `k`: files to keep (-1 all, 0 none); with `monitored`, the best k by
  //! `mode` (an improvement must beat by more than `min_delta`), else the newest k.
  Retention(int64_t k, Mode mode, double min_delta, bool monitored)
      : k_(k), mode_(mode), min_delta_(min_delta), monitored_(monitored) {}

  //! A save of `path` now. With a monitor, `value` is its newest value and
  //! `values_seen` the length of its series: a value already judged (no new
  //! one since the last decision) or not finite keeps no file.
  RetentionPlan plan(const RetentionBook& book, const std::string& path, std::optional<double> value,
                     int64_t values_seen) const;

 private:
  bool better(double a, double b) const;
  int64_t k_;
  Mode mode_;
  double min_delta_;
  bool monitored_;
};

}  // namespace cairn
