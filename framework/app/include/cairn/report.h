// Learning-curve report: one self-contained HTML file (inline SVG, no
// network, no script) with a chart per metric name. x = global step, y = the
// metric, both with round-number ticks. One run: one colour per split. Several
// runs (a sweep): one colour per run, the split shown by the line's dash
// (train solid, valid dashed, test dotted), a legend naming each run. The best
// value of each monitored metric is circled per run, and a dashed vertical
// line marks each step a run was resumed at.
//
//   cairn report runs/a                          # -> runs/a/report.html
//   cairn report runs/a runs/b --out sweep.html  # overlay
#pragma once

#include "cairn/value.h"

#include <string>
#include <vector>

namespace cairn {

//! One run of a report: its label in the legend and its checkpoint dict
//! (`metrics`, `callbacks`, `loop.resumes`, `epoch`, `global_step`).
struct ReportRun {
  std::string label;
  Value checkpoint;
};

//! Builds the report of one or several runs.
std::string render_report(const std::vector<ReportRun>& runs, const std::string& title);
//! The report of one run.
std::string render_report(const Value& checkpoint, const std::string& title);

//! A round spacing for about `target` steps over [lo, hi]: 1, 2 or 5 times a
//! power of ten (0 for an empty range). (Exposed for tests.)
double nice_step(double lo, double hi, int target = 5);
//! Every multiple of `step` in [lo, hi].
std::vector<double> ticks_every(double lo, double hi, double step);
//! ticks_every(lo, hi, nice_step(lo, hi, target)).
std::vector<double> nice_ticks(double lo, double hi, int target = 5);
//! A tick's label with just the decimals its spacing needs ("0.05", "1200").
std::string tick_label(double value, double spacing);

}  // namespace cairn
