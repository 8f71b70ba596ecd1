// CsvLogger: writes the metric log to `<run dir>/metrics.csv`.
//
// Header `epoch,step,split,name,value`, one row per logged value in logging
// order. On resume the file is rewritten from the checkpoint's metric log, so
// values of steps re-run after the last checkpoint never appear twice.
#pragma once

#include "cairn/callback.h"

#include <cstdio>
#include <string>

namespace cairn {

struct CsvLoggerOptions {
  //! File path; "" means `<run dir>/metrics.csv`.
  std::string path;
};

class CsvLogger : public Callback {
 public:
  explicit CsvLogger(CsvLoggerOptions options = {});
  ~CsvLogger() override;

  std::string key() const override { return "CsvLogger"; }
  void on_fit_begin(Loop& loop) override;
  void on_load_checkpoint(Loop& loop) override;
  void on_batch_end(Loop& loop) override { append(loop); }
  void on_validation_end(Loop& loop) override { append(loop); }
  void on_epoch_end(Loop& loop) override { append(loop); }
  void on_test_end(Loop& loop) override { append(loop); }
  void on_fit_end(Loop& loop) override { append(loop); }

  const std::string& path() const { return path_; }

 private:
  void rewrite(Loop& loop);
  void append(Loop& loop);

  CsvLoggerOptions options_;
  std::string path_;       //!< resolved file
  std::FILE* file_ = nullptr;
  size_t written_ = 0;     //!< metric-log rows already in the file
};

//! One CSV row for a metric point (shortest round-trip number formatting).
std::string csv_row(int64_t epoch, int64_t step, const std::string& name, double value);

}  // namespace cairn
