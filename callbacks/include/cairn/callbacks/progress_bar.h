// ProgressBar: shows training progress.
//
// On a terminal: a bar per epoch with steps, it/s, ETA, the current loss and
// the last validation metrics. Elsewhere (CI logs, files): a plain line every
// `log_every_n_steps` steps. Always: a model summary at the start, one line per
// epoch with its metrics, and the test metrics at the end.
#pragma once

#include "cairn/callback.h"

#include <chrono>
#include <cstdio>

namespace cairn {

struct ProgressBarOptions {
  //! Plain-line interval when stdout is not a terminal (0: the loop's log_every_n_steps).
  int64_t log_every_n_steps = 0;
  //! Print the model summary at fit start.
  bool model_summary = true;
  //! Refresh period of the terminal bar, in seconds.
  double refresh_seconds = 0.1;
};

class ProgressBar : public Callback {
 public:
  explicit ProgressBar(ProgressBarOptions options = {}, std::FILE* out = stdout);
  std::string key() const override { return "ProgressBar"; }
  //! One bar for a distributed run: rank 0's.
  bool rank_zero_only() const override { return true; }
  void on_fit_begin(Loop& loop) override;
  void on_epoch_begin(Loop& loop) override;
  void on_batch_end(Loop& loop) override;
  void on_epoch_end(Loop& loop) override;
  void on_test_end(Loop& loop) override;
  void on_fit_end(Loop& loop) override;

 private:
  void draw(Loop& loop, bool final);
  std::string metric_text(const Loop& loop, const char* split) const;
  //! The terminal's width: $COLUMNS, else TIOCGWINSZ, else 80.
  int terminal_columns() const;

  ProgressBarOptions options_;
  std::FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point epoch_start_, last_draw_;
  int64_t epoch_start_batch_ = 0;
  bool bar_open_ = false;
};

}  // namespace cairn
