// Learning-curve report: one self-contained HTML file (inline SVG, no
// network) with a chart per metric name — one line per split, x = global step
// with epoch ticks — the best value of monitored metrics marked, and a dashed
// vertical line wherever the run was resumed.
//
//   cairn report runs/fashion_mnist_mlp --out report.html
#pragma once

#include "cairn/value.h"

#include <string>

namespace cairn {

//! Builds the report from a checkpoint dict (its `metrics`, `callbacks` and `loop.resumes`).
std::string render_report(const Value& checkpoint, const std::string& title);

}  // namespace cairn
