// MetricLog: every value a run measured, in the order it was measured.
//
// A metric is named `split/name` (`train/loss`, `valid/acc`). Each logged value
// is a point (epoch, step, value). The log keeps one journal of points in
// logging order, so files derived from it (metrics.csv) can be rewritten
// exactly after a resume. Epoch aggregates: `accumulate()` collects weighted
// values and `flush(split)` logs their means as points.
#pragma once

#include "cairn/objectives.h"
#include "cairn/stateful.h"

#include <ATen/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cairn {

struct MetricPoint {
  int64_t epoch = 0;
  int64_t step = 0;
  double value = 0.0;
};

class MetricLog : public Stateful {
 public:
  struct Row {
    size_t series;     //!< index into names()
    MetricPoint point;
  };

  void log(const std::string& name, double value, int64_t epoch, int64_t step);
  //! Adds a weighted value to the running mean of `name` (flushed by flush()).
  void accumulate(const std::string& name, double value, double weight = 1.0);
  //! Logs the means of the accumulated metrics whose split is `split`, then clears them.
  void flush(const std::string& split, int64_t epoch, int64_t step);
  //! Drops the accumulated (not yet flushed) values of `split`.
  void reset_accumulators(const std::string& split);

  bool has(const std::string& name) const;
  std::optional<double> last(const std::string& name) const;
  //! Points logged for `name` so far (O(1)).
  size_t count(const std::string& name) const;
  std::vector<MetricPoint> series(const std::string& name) const;
  const std::vector<std::string>& names() const { return names_; }
  const std::vector<Row>& rows() const { return rows_; }
  size_t size() const { return rows_.size(); }

  //! The series, as the checkpoint's `metrics` key: name -> {epoch, step, value, seq},
  //! each a 1-D tensor (int64, int64, float64, int64; `seq` is each point's
  //! position in the journal). The tensors are views of the log's own
  //! append-only columns: no copy is made, whatever the length of the run.
  //! (Checkpoints of format 1 held lists; load_state_dict reads both.)
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;
  //! Running epoch means not yet flushed: name -> [sum, weight].
  Value accumulator_state() const;
  void load_accumulator_state(const Value& state);
  //! The accumulated (sum, weight) of every metric of `split`, by name (for
  //! reducing them over the ranks of a distributed run).
  std::vector<std::pair<std::string, std::pair<double, double>>> accumulators(const std::string& split) const;
  //! Replaces (or adds) the accumulated sum and weight of `name`.
  void set_accumulator(const std::string& name, double sum, double weight);

  // --- metrics with running statistics (F1, R², AUROC, ...; see objectives.h) ---
  //! The Metric object behind `name` ("valid/f1_macro"): flush() of its split
  //! logs its value. Declaring it again replaces the object, keeping the statistics.
  void declare(const std::string& name, std::shared_ptr<const Metric> metric);
  bool declared(const std::string& name) const;
  //! The declared names of `split`, in declaration order.
  std::vector<std::string> declared_names(const std::string& split) const;
  //! Declares `name` a weighted mean kept on the device (a loss): see accumulate_tensor().
  void declare_mean(const std::string& name);
  //! Adds `value` (a one-element tensor, on any device) with `weight` to the
  //! weighted mean `name`, without reading it to the host; flush() logs the
  //! mean. (A host accumulator of the same name, from an older checkpoint,
  //! is folded in first.)
  void accumulate_tensor(const std::string& name, const at::Tensor& value, double weight);
  //! Adds one batch to the statistics of `name` (declared first). Throws
  //! std::logic_error for an undeclared name.
  void update(const std::string& name, const at::Tensor& output, const at::Tensor& target);
  //! The statistics of `name` (created empty if missing).
  MetricStats& stats(const std::string& name);
  //! Names of `split` whose statistics hold data.
  std::vector<std::string> stat_names(const std::string& split) const;
  //! Every metric's statistics: name -> {sums, rows, kind} (tensors or None;
  //! kind "mean" for declare_mean's, "metric" otherwise). The
  //! tensors are never changed in place (an update makes new ones), so the
  //! result stays valid as a snapshot.
  Value stats_state() const;
  void load_stats_state(const Value& state);
  //! Drops statistics that no declared Metric owns (a metric removed from the
  //! config); returns their names.
  std::vector<std::string> drop_undeclared_stats();
  //! Throws CheckpointMismatch naming the key when `stats`, read from a
  //! checkpoint, cannot be `metric`'s (Metric::check_state).
  static void check_loaded(const std::string& name, const Metric& metric, const MetricStats& stats);
  //! The statistics as they are (tensor handles: updates never write in
  //! place, so this is a snapshot), for the loop's roll-back point.
  std::vector<std::pair<std::string, MetricStats>> stats_snapshot() const;
  void restore_stats(const std::vector<std::pair<std::string, MetricStats>>& snapshot);

  //! Drops every point logged after the first `rows` (rolls the journal back).
  void truncate(size_t rows);

  //! Splits "valid/acc" into ("valid", "acc"); a name without '/' has split "".
  static std::pair<std::string, std::string> split_name(const std::string& name);

 private:
  size_t series_index(const std::string& name);

  std::vector<std::string> names_;
  std::map<std::string, size_t> index_;
  std::vector<Row> rows_;
  std::vector<std::optional<size_t>> last_row_;  //!< per series: its newest row
  std::vector<size_t> counts_;                   //!< per series: its number of points
  //! Per series, the points as columns with spare capacity (grown by doubling),
  //! so that a checkpoint takes views of them instead of building lists.
  struct Columns {
    at::Tensor epoch, step, value, seq;
    void append(const MetricPoint& p, int64_t seq_no, size_t count);
  };
  std::vector<Columns> columns_;
  void rebuild_columns();
  struct Accumulator { double sum = 0.0; double weight = 0.0; };
  std::vector<std::pair<std::string, Accumulator>> accumulators_;  //!< insertion-ordered
  struct StatEntry {
    std::string name;
    std::shared_ptr<const Metric> metric;  //!< null for statistics loaded but not (yet) declared
    MetricStats stats;
  };
  std::vector<StatEntry> stats_;  //!< in declaration order
  StatEntry* find_stat(const std::string& name);
};

enum class Mode { min, max };
const char* mode_name(Mode m);
Mode parse_mode(const std::string& s);  // throws std::invalid_argument

//! The one "better than the best so far" test of cairn, shared by the
//! checkpoint callback, early stopping and ReduceLROnPlateau: `value` beats
//! `best` by more than `min_delta` (min: value < best - min_delta; max: value
//! > best + min_delta). With `relative`, the margin is best * min_delta, as in
//! PyTorch's `threshold_mode='rel'`. NaN never beats anything.
bool better_than(Mode mode, double value, double best, double min_delta = 0.0, bool relative = false);

//! Tracks the best value of a monitored metric.
class Best : public Stateful {
 public:
  explicit Best(Mode mode = Mode::min, double min_delta = 0.0) : mode_(mode), min_delta_(min_delta) {}

  //! True when `value` beats the best by more than min_delta (any finite value beats none).
  bool improves(double value) const;
  //! Records `value` if it improves; returns whether it did.
  bool update(double value, int64_t epoch, int64_t step);

  std::optional<double> best() const { return best_; }
  int64_t best_epoch() const { return best_epoch_; }
  int64_t best_step() const { return best_step_; }
  Mode mode() const { return mode_; }

  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 private:
  Mode mode_;
  double min_delta_;
  std::optional<double> best_;   //!< best value so far
  int64_t best_epoch_ = -1;      //!< epoch of the best value
  int64_t best_step_ = -1;       //!< global step of the best value
};

}  // namespace cairn
