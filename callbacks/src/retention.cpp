#include "cairn/callbacks/retention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace cairn {

bool Retention::better(double a, double b) const { return better_than(mode_, a, b, min_delta_); }

RetentionPlan Retention::plan(const RetentionBook& book, const std::string& path, std::optional<double> value,
                              int64_t values_seen) const {
  RetentionPlan p;
  p.next = book;
  if (k_ == 0) return p;
  RetentionBook& b = p.next;
  if (!monitored_) {
    p.file = path;
    b.newest.erase(std::remove(b.newest.begin(), b.newest.end(), path), b.newest.end());
    b.newest.push_back(path);
    while (k_ != -1 && static_cast<int64_t>(b.newest.size()) > k_) {
      p.drop.push_back(b.newest.front());
      b.newest.erase(b.newest.begin());
    }
    return p;
  }
  if (values_seen <= b.seen || !value || !std::isfinite(*value)) return p;
  b.seen = values_seen;
  // A file of the same name (a fixed filename template) is replaced only by a better value.
  const bool same_name = b.best_k.count(path) > 0;
  bool enters = same_name ? better(*value, b.best_k[path]) : k_ == -1 || static_cast<int64_t>(b.best_k.size()) < k_;
  if (!enters && !same_name) {
    std::string worst;
    for (const auto& kv : b.best_k) {
      if (worst.empty() || better(b.best_k[worst], kv.second)) worst = kv.first;
    }
    enters = better(*value, b.best_k[worst]);
  }
  if (!enters) return p;
  p.file = path;
  b.best_k[path] = *value;
  if (!b.best_score || better(*value, *b.best_score)) {
    b.best_score = *value;
    b.best_path = path;
  }
  while (k_ != -1 && static_cast<int64_t>(b.best_k.size()) > k_) {
    std::string w;
    for (const auto& kv : b.best_k) {
      if (kv.first == b.best_path || kv.first == path) continue;  // never the best or the newest
      if (w.empty() || better(b.best_k[w], kv.second)) w = kv.first;
    }
    if (w.empty()) break;
    b.best_k.erase(w);
    p.drop.push_back(w);
  }
  return p;
}

namespace {
void put(std::string& out, const std::string& s) { out += std::to_string(s.size()) + ":" + s; }
void put(std::string& out, double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%a", v);
  put(out, std::string(buf));
}
std::string take(const std::string& in, size_t& at) {
  const size_t colon = in.find(':', at);
  if (colon == std::string::npos) throw std::runtime_error("retention book: truncated");
  const size_t n = std::stoul(in.substr(at, colon - at));
  if (colon + 1 + n > in.size()) throw std::runtime_error("retention book: truncated");
  std::string s = in.substr(colon + 1, n);
  at = colon + 1 + n;
  return s;
}
double take_double(const std::string& in, size_t& at) { return std::strtod(take(in, at).c_str(), nullptr); }
}  // namespace

std::string RetentionBook::encode() const {
  std::string out;
  put(out, std::to_string(best_k.size()));
  for (const auto& kv : best_k) {
    put(out, kv.first);
    put(out, kv.second);
  }
  put(out, std::to_string(newest.size()));
  for (const auto& n : newest) put(out, n);
  put(out, best_path);
  put(out, best_score ? "1" : "0");
  put(out, best_score ? *best_score : 0.0);
  put(out, std::to_string(seen));
  put(out, last_path);
  return out;
}

RetentionBook RetentionBook::decode(const std::string& in) {
  RetentionBook b;
  size_t at = 0;
  const size_t nk = std::stoul(take(in, at));
  for (size_t i = 0; i < nk; ++i) {
    std::string path = take(in, at);
    b.best_k[path] = take_double(in, at);
  }
  const size_t nn = std::stoul(take(in, at));
  for (size_t i = 0; i < nn; ++i) b.newest.push_back(take(in, at));
  b.best_path = take(in, at);
  const bool has_score = take(in, at) == "1";
  const double score = take_double(in, at);
  if (has_score) b.best_score = score;
  b.seen = std::stoll(take(in, at));
  b.last_path = take(in, at);
  return b;
}

}  // namespace cairn
