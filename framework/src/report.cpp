#include "cairn/report.h"

#include "cairn/metrics.h"

#include <algorithm>
#include <cmath>
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

struct Series {
  std::string split;
  std::vector<int64_t> epoch, step;
  std::vector<double> value;
};

const char* color_for(const std::string& split) {
  if (split == "train") return "#1f77b4";
  if (split == "valid") return "#d62728";
  if (split == "test") return "#2ca02c";
  return "#7f7f7f";
}

struct Monitor {
  std::string metric, mode;
  double best;
};
}  // namespace

std::string render_report(const Value& c, const std::string& title) {
  // Group series by metric name (the part after the split).
  std::map<std::string, std::vector<Series>> charts;
  std::vector<std::string> order;
  const Value& metrics = c.at("metrics");
  std::map<int64_t, int64_t> epoch_first_step;  // epoch -> smallest step seen
  int64_t max_step = 1;
  for (size_t i = 0; i < metrics.keys().size(); ++i) {
    const std::string full = metrics.keys()[i].to_string();
    const auto parts = MetricLog::split_name(full);
    const Value& m = metrics.values()[i];
    Series s;
    s.split = parts.first;
    s.epoch = m.at("epoch").to_int_list();
    s.step = m.at("step").to_int_list();
    s.value = m.at("value").to_double_list();
    for (size_t k = 0; k < s.step.size(); ++k) {
      max_step = std::max(max_step, s.step[k]);
      auto it = epoch_first_step.find(s.epoch[k]);
      if (it == epoch_first_step.end() || s.step[k] < it->second) epoch_first_step[s.epoch[k]] = s.step[k];
    }
    if (!charts.count(parts.second)) order.push_back(parts.second);
    charts[parts.second].push_back(std::move(s));
  }
  std::vector<Monitor> monitors;
  if (const Value* cbs = c.find("callbacks")) {
    for (const auto& s : cbs->values()) {
      if (!s.is_dict()) continue;
      const Value* mon = s.find("monitor");
      const Value* best = s.find("best_model_score");
      if (!best) best = s.find("best");
      const Value* mode = s.find("mode");
      if (mon && mon->is_string() && best && best->is_number() && mode && mode->is_string()) {
        monitors.push_back({mon->to_string(), mode->to_string(), best->to_double()});
      }
    }
  }
  std::vector<int64_t> resumes;
  if (const Value* loop = c.find("loop")) {
    if (const Value* r = loop->find("resumes")) {
      for (const auto& p : r->items()) resumes.push_back(p.to_int_list().at(1));
    }
  }

  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\"><head><meta charset=\"utf-8\"/>"
    << "<title>" << escape(title) << "</title><style>"
    << "body{font-family:sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin:18px 0 4px}"
    << ".axis{stroke:#888;stroke-width:1}.grid{stroke:#eee;stroke-width:1}.tick{font-size:10px;fill:#555}"
    << ".resume{stroke:#ff7f0e;stroke-width:1.5;stroke-dasharray:5,4}.legend{font-size:12px}"
    << "</style></head><body>\n<h1>" << escape(title) << "</h1>\n<p>epoch " << c.at("epoch").to_int()
    << ", global step " << c.at("global_step").to_int() << "; " << order.size() << " metric(s); "
    << resumes.size() << " resume(s) (dashed orange lines)</p>\n";

  const double W = 720, H = 300, L = 60, R = 120, T = 16, B = 40;
  for (const auto& name : order) {
    const auto& list = charts[name];
    double lo = INFINITY, hi = -INFINITY;
    for (const auto& s : list) {
      for (double v : s.value) {
        if (std::isfinite(v)) { lo = std::min(lo, v); hi = std::max(hi, v); }
      }
    }
    if (!std::isfinite(lo)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-12) { hi += 0.5; lo -= 0.5; }
    const double pad = (hi - lo) * 0.05;
    lo -= pad;
    hi += pad;
    auto X = [&](double step) { return L + (W - L - R) * step / static_cast<double>(max_step); };
    auto Y = [&](double v) { return T + (H - T - B) * (1.0 - (v - lo) / (hi - lo)); };
    h << "<h2>" << escape(name) << "</h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" data-metric=\""
      << escape(name) << "\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W << " " << H << "\">";
    // Axes, y ticks, epoch ticks.
    h << "<line class=\"axis\" x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\"/>";
    h << "<line class=\"axis\" x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\"/>";
    for (int k = 0; k <= 4; ++k) {
      const double v = lo + (hi - lo) * k / 4.0;
      h << "<line class=\"grid\" x1=\"" << L << "\" y1=\"" << Y(v) << "\" x2=\"" << W - R << "\" y2=\"" << Y(v) << "\"/>"
        << "<text class=\"tick\" x=\"" << L - 4 << "\" y=\"" << Y(v) + 3 << "\" text-anchor=\"end\">" << num(v) << "</text>";
    }
    const size_t stride = std::max<size_t>(1, epoch_first_step.size() / 12);
    size_t idx = 0;
    for (const auto& e : epoch_first_step) {
      if (idx++ % stride) continue;
      h << "<line class=\"axis\" x1=\"" << X(e.second) << "\" y1=\"" << H - B << "\" x2=\"" << X(e.second) << "\" y2=\""
        << H - B + 4 << "\"/><text class=\"tick epoch\" x=\"" << X(e.second) << "\" y=\"" << H - B + 15
        << "\" text-anchor=\"middle\">e" << e.first << "</text>";
    }
    h << "<text class=\"tick\" x=\"" << (W - R + L) / 2 << "\" y=\"" << H - 6 << "\" text-anchor=\"middle\">step (0 to "
      << max_step << "), ticks at epoch starts</text>";
    for (int64_t r : resumes) {
      h << "<line class=\"resume\" x1=\"" << X(static_cast<double>(r)) << "\" y1=\"" << T << "\" x2=\""
        << X(static_cast<double>(r)) << "\" y2=\"" << H - B << "\"><title>resumed at step " << r << "</title></line>";
    }
    double ly = T + 10;
    for (const auto& s : list) {
      const char* col = color_for(s.split);
      if (s.value.size() == 1) {
        h << "<circle cx=\"" << X(s.step[0]) << "\" cy=\"" << Y(s.value[0]) << "\" r=\"3.5\" fill=\"" << col << "\"/>";
      } else {
        h << "<polyline fill=\"none\" stroke=\"" << col << "\" stroke-width=\"1.5\" points=\"";
        for (size_t k = 0; k < s.value.size(); ++k) {
          if (std::isfinite(s.value[k])) h << num(X(s.step[k]), 6) << "," << num(Y(s.value[k]), 6) << " ";
        }
        h << "\"/>";
      }
      h << "<text class=\"legend\" x=\"" << W - R + 10 << "\" y=\"" << ly << "\" fill=\"" << col << "\">"
        << escape(s.split.empty() ? name : s.split) << " (" << num(s.value.back()) << ")</text>";
      ly += 16;
      // The best value of a monitored metric.
      for (const auto& m : monitors) {
        if (m.metric != (s.split.empty() ? name : s.split + "/" + name)) continue;
        for (size_t k = 0; k < s.value.size(); ++k) {
          if (s.value[k] == m.best) {
            h << "<circle class=\"best\" cx=\"" << X(s.step[k]) << "\" cy=\"" << Y(s.value[k])
              << "\" r=\"6\" fill=\"none\" stroke=\"#000\" stroke-width=\"1.5\"><title>best " << escape(m.metric)
              << " (" << escape(m.mode) << ") = " << num(m.best, 6) << " at step " << s.step[k] << "</title></circle>";
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
