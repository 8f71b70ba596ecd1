// Metric-file loggers: the metric log written as a file in the run directory.
//
// CsvLogger writes `metrics.csv` (header `epoch,step,split,name,value`),
// JsonlLogger writes `metrics.jsonl` (one JSON object per value). Rows follow
// logging order. On resume the file is rewritten from the checkpoint's metric
// log, so values of steps re-run after the last checkpoint never appear twice.
#pragma once

#include "cairn/callback.h"

#include <cstdio>
#include <string>

namespace cairn {

//! Shared machinery: rewrite from the log on fit start and resume, append after events.
class MetricFileLogger : public Callback {
 public:
  explicit MetricFileLogger(std::string path, std::string default_name);
  ~MetricFileLogger() override;
  //! Files are written by rank 0 of a distributed run (every rank logs the same values).
  bool rank_zero_only() const override { return true; }

  void on_fit_begin(Loop& loop) override { rewrite(loop); }
  void on_load_checkpoint(Loop& loop) override { rewrite(loop); }
  void on_batch_end(Loop& loop) override { append(loop); }
  void on_validation_end(Loop& loop) override { append(loop); }
  void on_epoch_end(Loop& loop) override { append(loop); }
  void on_test_end(Loop& loop) override { append(loop); }
  void on_fit_end(Loop& loop) override { append(loop); }

  const std::string& path() const { return path_; }

 protected:
  //! Text before the first row ("" for none).
  virtual std::string header() const = 0;
  //! One row, newline included.
  virtual std::string row(int64_t epoch, int64_t step, const std::string& name, double value) const = 0;
  //! The file each rewrite writes to. The default is fixed; the TensorBoard
  //! logger starts a new file each time (readers expect append-only files).
  virtual std::string next_path(const std::string& resolved_default);

 private:
  void rewrite(Loop& loop);
  void append(Loop& loop);
  //! Says an I/O error on stderr, once per logger.
  void warn(const std::string& what);

  std::string requested_;     //!< the path asked for ("" = run dir + default name)
  std::string default_name_;  //!< file name inside the run directory
  std::string path_;          //!< resolved file
  std::FILE* file_ = nullptr;
  size_t written_ = 0;        //!< metric-log rows already in the file
  bool warned_ = false;       //!< an I/O error was said (once per logger)
  uintmax_t whole_bytes_ = 0; //!< the file's size after the last rows written whole
};

struct CsvLoggerOptions {
  //! File path; "" means `<run dir>/metrics.csv`.
  std::string path;
};

class CsvLogger : public MetricFileLogger {
 public:
  explicit CsvLogger(CsvLoggerOptions options = {}) : MetricFileLogger(options.path, "metrics.csv") {}
  std::string key() const override { return "CsvLogger"; }

 protected:
  std::string header() const override { return "epoch,step,split,name,value\n"; }
  std::string row(int64_t epoch, int64_t step, const std::string& name, double value) const override;
};

struct JsonlLoggerOptions {
  //! File path; "" means `<run dir>/metrics.jsonl`.
  std::string path;
};

//! {"epoch": 0, "step": 50, "name": "train/loss_step", "value": 0.87} per line
//! (non-finite values are written as null).
class JsonlLogger : public MetricFileLogger {
 public:
  explicit JsonlLogger(JsonlLoggerOptions options = {}) : MetricFileLogger(options.path, "metrics.jsonl") {}
  std::string key() const override { return "JsonlLogger"; }

 protected:
  std::string header() const override { return ""; }
  std::string row(int64_t epoch, int64_t step, const std::string& name, double value) const override;
};

//! One CSV row for a metric point (shortest round-trip number formatting).
std::string csv_row(int64_t epoch, int64_t step, const std::string& name, double value);

}  // namespace cairn
