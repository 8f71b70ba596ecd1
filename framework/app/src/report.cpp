#include "cairn/report.h"

#include "cairn/metrics.h"
#include "cairn/run_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

namespace cairn {

namespace {
std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string num(double v, int precision = 4) {
  std::ostringstream os;
  os.precision(precision);
  os << v;
  return os.str();
}

// Tableau's ten colours: distinct on screen and in print.
const char* const kRunColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

const char* split_colour(const std::string& split) {
  if (split == "train") return "#1f77b4";
  if (split == "valid") return "#d62728";
  if (split == "test") return "#2ca02c";
  return "#7f7f7f";
}

const char* split_dash(const std::string& split) {
  if (split == "valid") return "7,3";
  if (split == "test") return "2,3";
  return "";
}

struct Series {
  size_t run = 0;
  std::string split;
  std::vector<int64_t> epoch, step;
  std::vector<double> value;
};

struct Monitor {
  std::string metric, mode;
  double best;
};

// What one run contributes: its series by metric name, its monitors, resumes.
struct RunData {
  std::map<std::string, std::vector<Series>> charts;
  std::vector<Monitor> monitors;
  std::vector<int64_t> resumes;
  std::map<int64_t, int64_t> epoch_first_step;  // epoch -> the global step it starts at (see below)
  std::map<int64_t, int64_t> epoch_last_step;   // epoch -> largest step seen
};

RunData collect(const Value& c, size_t run, std::vector<std::string>& order, int64_t& max_step) {
  RunData d;
  const run_checkpoint::View view(c);
  for (auto& one : view.series()) {
    const auto parts = MetricLog::split_name(one.name);
    Series s;
    s.run = run;
    s.split = parts.first;
    s.epoch = std::move(one.epoch);
    s.step = std::move(one.step);
    s.value = std::move(one.value);
    if (s.value.empty()) continue;
    for (size_t k = 0; k < s.step.size(); ++k) {
      max_step = std::max(max_step, s.step[k]);
      auto it = d.epoch_first_step.find(s.epoch[k]);
      if (it == d.epoch_first_step.end() || s.step[k] < it->second) d.epoch_first_step[s.epoch[k]] = s.step[k];
      auto jt = d.epoch_last_step.find(s.epoch[k]);
      if (jt == d.epoch_last_step.end() || s.step[k] > jt->second) d.epoch_last_step[s.epoch[k]] = s.step[k];
    }
    if (std::find(order.begin(), order.end(), parts.second) == order.end()) order.push_back(parts.second);
    d.charts[parts.second].push_back(std::move(s));
  }
  for (const auto& m : view.monitors()) {
    if (m.best && !m.mode.empty()) d.monitors.push_back({m.monitor, m.mode, *m.best});
  }
  // An epoch starts where the previous one ended (its epoch means are logged
  // at its last step), the first at step 0, not at its first logged point.
  for (auto& e : d.epoch_first_step) {
    auto prev = d.epoch_last_step.find(e.first - 1);
    if (prev != d.epoch_last_step.end()) {
      e.second = prev->second;
    } else if (e.first == 0) {
      e.second = 0;
    }
  }
  for (const auto& r : view.resumes()) d.resumes.push_back(r.second);
  return d;
}
}  // namespace

double nice_step(double lo, double hi, int target) {
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi) || target < 1) return 0.0;
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0}) {
    if (m * mag >= raw * (1.0 - 1e-9)) return m * mag;  // 2 * 0.1 counts as 0.2
  }
  return 10.0 * mag;
}

std::vector<double> ticks_every(double lo, double hi, double step) {
  if (!(step > 0)) return {lo};
  std::vector<double> out;
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k += 1.0) {
    const double v = k * step;
    out.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);  // no "-0"
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  return ticks_every(lo, hi, nice_step(lo, hi, target));
}

std::string tick_label(double value, double spacing) {
  int decimals = 0;
  if (spacing > 0 && std::isfinite(spacing)) decimals = std::max(0, -static_cast<int>(std::floor(std::log10(spacing) + 1e-9)));
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", std::min(decimals, 12), value);
  return buf;
}

std::string render_report(const Value& checkpoint, const std::string& title) {
  return render_report(std::vector<ReportRun>{{title, checkpoint}}, title);
}

std::string render_report(const std::vector<ReportRun>& runs, const std::string& title) {
  const bool overlay = runs.size() > 1;
  std::vector<std::string> order;  // metric names, first seen first
  int64_t max_step = 1;
  std::vector<RunData> data;
  for (size_t r = 0; r < runs.size(); ++r) data.push_back(collect(runs[r].checkpoint, r, order, max_step));
  auto run_colour = [](size_t r) { return kRunColours[r % (sizeof kRunColours / sizeof kRunColours[0])]; };

  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\"><head><meta charset=\"utf-8\"/>"
    << "<title>" << escape(title) << "</title><style>"
    << "body{font-family:sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin:18px 0 4px}"
    << ".axis{stroke:#888;stroke-width:1}.grid{stroke:#eee;stroke-width:1}.tick{font-size:10px;fill:#555}"
    << ".resume{stroke-width:1.5;stroke-dasharray:5,4}.legend{font-size:12px}"
    << "ul.runs{list-style:none;padding:0}ul.runs li{margin:2px 0}.swatch{display:inline-block;width:24px;"
    << "height:4px;vertical-align:middle;margin-right:8px}"
    << "</style></head><body>\n<h1>" << escape(title) << "</h1>\n";
  if (overlay) {
    h << "<p>" << runs.size() << " runs; " << order.size()
      << " metric(s). Line style: train solid, valid dashed, test dotted; circles mark each run's best value of a "
         "monitored metric; dashed vertical lines mark resumes.</p>\n<ul class=\"runs\">";
    for (size_t r = 0; r < runs.size(); ++r) {
      const run_checkpoint::View c(runs[r].checkpoint);
      h << "<li class=\"run\" data-run=\"" << r << "\"><span class=\"swatch\" style=\"background:" << run_colour(r)
        << "\"></span>" << escape(runs[r].label) << " — epoch " << c.epoch() << ", global step "
        << c.global_step() << ", " << data[r].resumes.size() << " resume(s)</li>";
    }
    h << "</ul>\n";
  } else if (!runs.empty()) {
    const run_checkpoint::View c(runs[0].checkpoint);
    h << "<p>epoch " << c.epoch() << ", global step " << c.global_step() << "; "
      << order.size() << " metric(s); " << data[0].resumes.size() << " resume(s) (dashed orange lines)</p>\n";
  }

  const double W = 860, H = 320, L = 64, R = 250, T = 16, B = 40;
  const double x_hi = static_cast<double>(max_step);
  const double x_spacing = nice_step(0, x_hi, 8);
  const auto xt = ticks_every(0, x_hi, x_spacing);
  for (const auto& name : order) {
    std::vector<const Series*> list;
    for (const auto& d : data) {
      auto it = d.charts.find(name);
      if (it != d.charts.end()) for (const auto& s : it->second) list.push_back(&s);
    }
    double lo = INFINITY, hi = -INFINITY;
    for (const Series* s : list) {
      for (double v : s->value) {
        if (std::isfinite(v)) { lo = std::min(lo, v); hi = std::max(hi, v); }
      }
    }
    if (!std::isfinite(lo)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-12) { hi += 0.5; lo -= 0.5; }
    const double pad = (hi - lo) * 0.05;
    // The axis spans whole steps, so its bottom and top are labelled too.
    const double y_spacing = nice_step(lo - pad, hi + pad, 5);
    lo = std::floor((lo - pad) / y_spacing + 1e-9) * y_spacing;
    hi = std::ceil((hi + pad) / y_spacing - 1e-9) * y_spacing;
    auto X = [&](double step) { return L + (W - L - R) * step / x_hi; };
    auto Y = [&](double v) { return T + (H - T - B) * (1.0 - (v - lo) / (hi - lo)); };
    h << "<h2>" << escape(name) << "</h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" data-metric=\""
      << escape(name) << "\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W << " " << H << "\">";
    h << "<line class=\"axis\" x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\"/>";
    h << "<line class=\"axis\" x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\"/>";
    for (double v : ticks_every(lo, hi, y_spacing)) {
      h << "<line class=\"grid\" x1=\"" << L << "\" y1=\"" << Y(v) << "\" x2=\"" << W - R << "\" y2=\"" << Y(v) << "\"/>"
        << "<text class=\"tick y\" x=\"" << L - 4 << "\" y=\"" << Y(v) + 3 << "\" text-anchor=\"end\">"
        << tick_label(v, y_spacing) << "</text>";
    }
    for (double v : xt) {
      h << "<line class=\"axis\" x1=\"" << X(v) << "\" y1=\"" << H - B << "\" x2=\"" << X(v) << "\" y2=\"" << H - B + 4
        << "\"/><text class=\"tick x\" x=\"" << X(v) << "\" y=\"" << H - B + 15 << "\" text-anchor=\"middle\">"
        << tick_label(v, x_spacing) << "</text>";
    }
    if (!overlay && !data.empty()) {  // epoch starts of the one run, above the axis
      const auto& eps = data[0].epoch_first_step;
      const size_t stride = std::max<size_t>(1, eps.size() / 12);
      size_t idx = 0;
      for (const auto& e : eps) {
        if (idx++ % stride) continue;
        h << "<text class=\"tick epoch\" x=\"" << X(static_cast<double>(e.second)) << "\" y=\"" << H - B - 3
          << "\" text-anchor=\"middle\">e" << e.first << "</text>";
      }
    }
    h << "<text class=\"tick\" x=\"" << (W - R + L) / 2 << "\" y=\"" << H - 6 << "\" text-anchor=\"middle\">global step"
      << (overlay ? "" : " (e: epoch starts)") << "</text>";
    for (size_t r = 0; r < data.size(); ++r) {
      for (int64_t step : data[r].resumes) {
        const double x = X(static_cast<double>(step));
        h << "<line class=\"resume\" data-run=\"" << r << "\" stroke=\"" << (overlay ? run_colour(r) : "#ff7f0e")
          << "\" x1=\"" << x << "\" y1=\"" << T << "\" x2=\"" << x << "\" y2=\"" << H - B << "\"><title>"
          << escape(runs[r].label) << ": resumed at step " << step << "</title></line>";
      }
    }
    double ly = T + 10;
    for (const Series* s : list) {
      const char* col = overlay ? run_colour(s->run) : split_colour(s->split);
      const std::string split = s->split.empty() ? name : s->split;
      const char* dash = overlay ? split_dash(s->split) : "";
      if (s->value.size() == 1) {
        h << "<circle class=\"series\" data-run=\"" << s->run << "\" data-split=\"" << escape(split) << "\" cx=\""
          << X(static_cast<double>(s->step[0])) << "\" cy=\"" << Y(s->value[0]) << "\" r=\"3.5\" fill=\"" << col << "\"/>";
      } else {
        h << "<polyline class=\"series\" data-run=\"" << s->run << "\" data-split=\"" << escape(split)
          << "\" fill=\"none\" stroke=\"" << col << "\" stroke-width=\"1.5\"";
        if (*dash) h << " stroke-dasharray=\"" << dash << "\"";
        h << " points=\"";
        for (size_t k = 0; k < s->value.size(); ++k) {
          if (std::isfinite(s->value[k])) {
            h << num(X(static_cast<double>(s->step[k])), 6) << "," << num(Y(s->value[k]), 6) << " ";
          }
        }
        h << "\"/>";
      }
      h << "<text class=\"legend\" x=\"" << W - R + 10 << "\" y=\"" << ly << "\" fill=\"" << col << "\">"
        << (overlay ? escape(runs[s->run].label) + " · " : std::string()) << escape(split) << " ("
        << num(s->value.back()) << ")</text>";
      ly += 16;
      for (const auto& m : data[s->run].monitors) {  // the run's best value of a monitored metric
        if (m.metric != (s->split.empty() ? name : s->split + "/" + name)) continue;
        for (size_t k = 0; k < s->value.size(); ++k) {
          if (s->value[k] == m.best) {
            h << "<circle class=\"best\" data-run=\"" << s->run << "\" cx=\"" << X(static_cast<double>(s->step[k]))
              << "\" cy=\"" << Y(s->value[k]) << "\" r=\"6\" fill=\"none\" stroke=\"" << (overlay ? col : "#000")
              << "\" stroke-width=\"1.5\"><title>" << (overlay ? escape(runs[s->run].label) + ": " : std::string())
              << "best " << escape(m.metric) << " (" << escape(m.mode) << ") = " << num(m.best, 6) << " at step "
              << s->step[k] << "</title></circle>";
            break;
          }
        }
      }
    }
    h << "</svg>\n";
  }
  h << "</body></html>\n";
  return h.str();
}

}  // namespace cairn
