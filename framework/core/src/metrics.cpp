#include "cairn/metrics.h"

#include "cairn/host_sync.h"
#include "cairn/loop.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>

namespace cairn {

namespace {
//! A weighted mean as running statistics [sum of value x weight, sum of weights].
class WeightedMean : public Metric {
 public:
  std::string name() const override { return "mean"; }
  //! `weight` is a one-element CPU float64 tensor (MetricLog::accumulate_tensor
  //! does the same arithmetic with a plain double).
  void update(MetricStats& s, const at::Tensor& value, const at::Tensor& weight) const override {
    const double w = weight.contiguous().data_ptr<double>()[0];
    const at::Tensor v = value.reshape({1}).to(at::kDouble) * w;
    s.sums = s.sums.defined() ? s.sums + v : v;
    s.count += w;
  }
  double compute(const MetricStats& s) const override {
    const at::Tensor c = read_to_cpu(s.sums);
    return c.contiguous().data_ptr<double>()[0] / s.count;
  }
  void check(const at::Tensor&, const at::Tensor&) const override {}
  //! Host means (a distributed run's training values) join device sums
  //! restored from a checkpoint of another process count: the epoch's mean is
  //! one value over both parts. With no device sums the host mean is logged as it is.
  bool fold_host_mean(MetricStats& s, double sum, double weight) const override {
    if (!s.sums.defined()) return false;
    s.sums = s.sums + at::tensor(std::vector<double>{sum}, at::kDouble).to(s.sums.device());
    s.count += weight;
    return true;
  }
  //! compute() reads the first sum: at least one.
  std::string check_state(const MetricStats& s) const override { return metric_state_shape(s, 0, 1, 0); }
};

//! Whether value * weight is exact in double for every value of `dtype`: a
//! mantissa of at most 24 bits times an integer of at most 29 bits.
bool exact_in_double(c10::ScalarType dtype, double weight) {
  const bool narrow = dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
  return narrow && weight == std::floor(weight) && std::fabs(weight) <= static_cast<double>(1 << 29);
}

const std::shared_ptr<const Metric>& weighted_mean() {
  static const std::shared_ptr<const Metric> m = std::make_shared<WeightedMean>();
  return m;
}
bool is_mean(const std::shared_ptr<const Metric>& m) { return m == weighted_mean(); }
}  // namespace

std::pair<std::string, std::string> MetricLog::split_name(const std::string& name) {
  const auto slash = name.find('/');
  if (slash == std::string::npos) return {"", name};
  return {name.substr(0, slash), name.substr(slash + 1)};
}

size_t MetricLog::series_index(const std::string& name) {
  auto it = index_.find(name);
  if (it != index_.end()) return it->second;
  const size_t i = names_.size();
  names_.push_back(name);
  index_[name] = i;
  last_row_.emplace_back();
  counts_.push_back(0);
  columns_.emplace_back();
  return i;
}

void MetricLog::Columns::append(const MetricPoint& p, int64_t seq_no, size_t count) {
  const auto n = static_cast<int64_t>(count);
  if (!value.defined() || value.size(0) <= n) {
    const int64_t cap = std::max<int64_t>(16, 2 * n);
    auto grow = [&](at::Tensor& t, at::ScalarType dtype) {
      at::Tensor bigger = at::empty({cap}, at::TensorOptions().dtype(dtype));
      if (t.defined() && n > 0) bigger.narrow(0, 0, n).copy_(t.narrow(0, 0, n));
      t = bigger;  // views handed out earlier keep the old storage alive, unchanged
    };
    grow(epoch, at::kLong);
    grow(step, at::kLong);
    grow(value, at::kDouble);
    grow(seq, at::kLong);
  }
  epoch.data_ptr<int64_t>()[n] = p.epoch;
  step.data_ptr<int64_t>()[n] = p.step;
  value.data_ptr<double>()[n] = p.value;
  seq.data_ptr<int64_t>()[n] = seq_no;
}

void MetricLog::log(const std::string& name, double value, int64_t epoch, int64_t step) {
  const size_t s = series_index(name);
  const MetricPoint p{epoch, step, value};
  columns_[s].append(p, static_cast<int64_t>(rows_.size()), counts_[s]);
  rows_.push_back(Row{s, p});
  last_row_[s] = rows_.size() - 1;
  ++counts_[s];
}

void MetricLog::rebuild_columns() {
  // Fresh storage: views handed to a checkpoint in flight are never written again.
  columns_.assign(names_.size(), Columns{});
  std::vector<size_t> n(names_.size(), 0);
  for (size_t i = 0; i < rows_.size(); ++i) {
    const size_t s = rows_[i].series;
    columns_[s].append(rows_[i].point, static_cast<int64_t>(i), n[s]++);
  }
}

void MetricLog::truncate(size_t rows) {
  if (rows >= rows_.size()) return;
  rows_.resize(rows);
  std::fill(counts_.begin(), counts_.end(), 0);
  std::fill(last_row_.begin(), last_row_.end(), std::nullopt);
  for (size_t i = 0; i < rows_.size(); ++i) {
    last_row_[rows_[i].series] = i;
    ++counts_[rows_[i].series];
  }
  rebuild_columns();
}

void MetricLog::accumulate(const std::string& name, double value, double weight) {
  for (auto& kv : accumulators_) {
    if (kv.first == name) {
      kv.second.sum += value * weight;
      kv.second.weight += weight;
      return;
    }
  }
  accumulators_.push_back({name, Accumulator{value * weight, weight}});
}

void MetricLog::flush(const std::string& split, int64_t epoch, int64_t step) {
  std::vector<std::pair<std::string, Accumulator>> keep;
  for (auto& kv : accumulators_) {
    if (split_name(kv.first).first == split) {
      // A checkpoint written before metrics were statistics carries the
      // epoch's first part as a host mean: one value, not two rows.
      StatEntry* e = find_stat(kv.first);
      if (e && e->metric && e->metric->fold_host_mean(e->stats, kv.second.sum, kv.second.weight)) continue;
      if (kv.second.weight > 0) log(kv.first, kv.second.sum / kv.second.weight, epoch, step);
    } else {
      keep.push_back(kv);
    }
  }
  accumulators_ = std::move(keep);
  for (auto& e : stats_) {
    if (split_name(e.name).first != split) continue;
    if (e.stats.sums.defined() || e.stats.rows.defined()) {
      if (!e.metric) {
        throw std::logic_error("metric '" + e.name + "' has saved statistics but no Metric object: declare it "
                               "(Loop::declare_metric) before resuming");
      }
      log(e.name, e.metric->compute(e.stats), epoch, step);
    }
    e.stats = MetricStats{};
  }
}

void MetricLog::reset_accumulators(const std::string& split) {
  std::vector<std::pair<std::string, Accumulator>> keep;
  for (auto& kv : accumulators_) {
    if (split_name(kv.first).first != split) keep.push_back(kv);
  }
  accumulators_ = std::move(keep);
  for (auto& e : stats_) {
    if (split_name(e.name).first == split) e.stats = MetricStats{};
  }
}

MetricLog::StatEntry* MetricLog::find_stat(const std::string& name) {
  for (auto& e : stats_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

void MetricLog::declare(const std::string& name, std::shared_ptr<const Metric> metric) {
  if (!metric) throw std::invalid_argument("declare: metric '" + name + "' is null");
  if (StatEntry* e = find_stat(name)) {
    check_loaded(name, *metric, e->stats);  // statistics a checkpoint brought before their owner
    e->metric = std::move(metric);
    return;
  }
  stats_.push_back(StatEntry{name, std::move(metric), {}});
}

bool MetricLog::declared(const std::string& name) const {
  for (const auto& e : stats_) {
    if (e.name == name) return e.metric != nullptr;
  }
  return false;
}

void MetricLog::declare_mean(const std::string& name) { declare(name, weighted_mean()); }

void MetricLog::accumulate_tensor(const std::string& name, const at::Tensor& value, double weight) {
  StatEntry* e = find_stat(name);
  if (!e || !e->metric) {
    declare_mean(name);
    e = find_stat(name);
  }
  if (!is_mean(e->metric)) throw std::logic_error("'" + name + "' is a metric, not a mean: use update()");
  MetricStats& s = e->stats;
  // A host accumulator of this name (restored from a checkpoint written before
  // means were kept on the device) becomes the start of the device sums.
  for (auto it = accumulators_.begin(); it != accumulators_.end(); ++it) {
    if (it->first != name) continue;
    const at::Tensor host = at::tensor(std::vector<double>{it->second.sum}, at::kDouble).to(value.device());
    s.sums = s.sums.defined() ? s.sums.to(value.device()) + host : host;
    s.count += it->second.weight;
    accumulators_.erase(it);
    break;
  }
  if (s.sums.defined() && s.sums.device() != value.device()) s.sums = s.sums.to(value.device());
  // WeightedMean::update's arithmetic without wrapping the weight in a tensor.
  const at::Tensor d = value.requires_grad() ? value.detach() : value;
  if (s.sums.defined() && s.sums.scalar_type() == at::kDouble && d.numel() == 1 && d.dim() <= 1 &&
      exact_in_double(d.scalar_type(), weight)) {
    // The same bits in one op instead of four (every step of every run):
    // v * weight is exact in double here, so a + weight * v (fused or not)
    // rounds once, as a + (v * weight) does.
    s.sums = at::add(s.sums, d, weight);
  } else {
    const at::Tensor v = d.reshape({1}).to(at::kDouble) * weight;
    s.sums = s.sums.defined() ? s.sums + v : v;
  }
  s.count += weight;
}

std::vector<std::string> MetricLog::declared_names(const std::string& split) const {
  std::vector<std::string> out;
  for (const auto& e : stats_) {
    if (e.metric && split_name(e.name).first == split) out.push_back(e.name);
  }
  return out;
}

void MetricLog::update(const std::string& name, const at::Tensor& output, const at::Tensor& target) {
  StatEntry* e = find_stat(name);
  if (!e || !e->metric) throw std::logic_error("metric '" + name + "' was not declared (Loop::declare_metric)");
  // Statistics restored from a checkpoint sit on the CPU until the model's device is seen.
  MetricStats& s = e->stats;
  if (s.sums.defined() && s.sums.device() != output.device()) s.sums = s.sums.to(output.device());
  if (s.rows.defined() && s.rows.device() != output.device()) s.rows = s.rows.to(output.device());
  e->metric->update(s, output, target);
}

MetricStats& MetricLog::stats(const std::string& name) {
  if (StatEntry* e = find_stat(name)) return e->stats;
  stats_.push_back(StatEntry{name, nullptr, {}});
  return stats_.back().stats;
}

std::vector<std::string> MetricLog::stat_names(const std::string& split) const {
  std::vector<std::string> out;
  for (const auto& e : stats_) {
    if (split_name(e.name).first == split && (e.stats.sums.defined() || e.stats.rows.defined())) out.push_back(e.name);
  }
  return out;
}

Value MetricLog::stats_state() const {
  Value d = Value::dict();
  for (const auto& e : stats_) {
    if (!e.stats.sums.defined() && !e.stats.rows.defined()) continue;
    Value s = Value::dict();
    s.set("sums", e.stats.sums.defined() ? Value(e.stats.sums) : Value());
    s.set("rows", e.stats.rows.defined() ? Value(e.stats.rows) : Value());
    s.set("count", e.stats.count);
    s.set("kind", e.metric && is_mean(e.metric) ? "mean" : "metric");
    d.set(e.name, std::move(s));
  }
  return d;
}

std::vector<std::string> MetricLog::drop_undeclared_stats() {
  std::vector<std::string> dropped;
  std::vector<StatEntry> keep;
  for (auto& e : stats_) {
    if (e.metric) {
      keep.push_back(std::move(e));
    } else if (e.stats.sums.defined() || e.stats.rows.defined()) {
      dropped.push_back(e.name);
    }
  }
  stats_ = std::move(keep);
  return dropped;
}

std::vector<std::pair<std::string, MetricStats>> MetricLog::stats_snapshot() const {
  std::vector<std::pair<std::string, MetricStats>> out;
  out.reserve(stats_.size());
  for (const auto& e : stats_) out.emplace_back(e.name, e.stats);
  return out;
}

void MetricLog::restore_stats(const std::vector<std::pair<std::string, MetricStats>>& snapshot) {
  for (auto& e : stats_) e.stats = MetricStats{};
  for (const auto& kv : snapshot) stats(kv.first) = kv.second;
}

void MetricLog::load_stats_state(const Value& state) {
  for (auto& e : stats_) e.stats = MetricStats{};
  for (size_t i = 0; i < state.keys().size(); ++i) {
    const std::string name = state.keys()[i].to_string();
    const Value& v = state.values()[i];
    MetricStats& s = stats(name);
    // Means describe themselves; a metric's object is declared by its owner.
    if (const Value* kind = v.find("kind"); kind && kind->is_string() && kind->to_string() == "mean") declare_mean(name);
    auto tensor = [&](const char* key, int64_t dim) -> at::Tensor {
      const Value* t = v.find(key);
      if (!t || t->is_none()) return at::Tensor();
      at::Tensor x = t->to_tensor();
      if (x.dim() != dim || x.scalar_type() != at::kDouble) {
        throw CheckpointMismatch("loop.metric_states['" + name + "']." + key + " must be a " + std::to_string(dim) +
                                 "-D float64 tensor");
      }
      return x;
    };
    s.sums = tensor("sums", 1);
    s.rows = tensor("rows", 2);
    const Value* count = v.find("count");
    s.count = count && !count->is_none() ? count->to_double() : 0.0;
    if (const StatEntry* e = find_stat(name); e && e->metric) check_loaded(name, *e->metric, s);
  }
}

void MetricLog::check_loaded(const std::string& name, const Metric& metric, const MetricStats& stats) {
  const std::string why = metric.check_state(stats);
  if (!why.empty()) {
    throw CheckpointMismatch("loop.metric_states['" + name + "'] cannot be the running statistics of " + name +
                             ": " + why);
  }
}

bool MetricLog::has(const std::string& name) const { return index_.count(name) > 0; }

std::optional<double> MetricLog::last(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end() || !last_row_[it->second]) return std::nullopt;
  return rows_[*last_row_[it->second]].point.value;
}

size_t MetricLog::count(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? 0 : counts_[it->second];
}

std::vector<MetricPoint> MetricLog::series(const std::string& name) const {
  std::vector<MetricPoint> out;
  auto it = index_.find(name);
  if (it == index_.end()) return out;
  for (const auto& r : rows_) {
    if (r.series == it->second) out.push_back(r.point);
  }
  return out;
}

Value MetricLog::state_dict() const {
  Value d = Value::dict();
  for (size_t s = 0; s < names_.size(); ++s) {
    const auto n = static_cast<int64_t>(counts_[s]);
    const Columns& c = columns_[s];
    auto view = [n](const at::Tensor& t, at::ScalarType dtype) {
      return t.defined() ? t.narrow(0, 0, n) : at::empty({0}, at::TensorOptions().dtype(dtype));
    };
    Value series = Value::dict();
    series.set("epoch", view(c.epoch, at::kLong));
    series.set("step", view(c.step, at::kLong));
    series.set("value", view(c.value, at::kDouble));
    series.set("seq", view(c.seq, at::kLong));
    d.set(names_[s], std::move(series));
  }
  return d;
}

void MetricLog::load_state_dict(const Value& state) {
  names_.clear();
  index_.clear();
  rows_.clear();
  last_row_.clear();
  counts_.clear();
  columns_.clear();
  // Each column is a 1-D tensor (format 2) or a list (format 1).
  auto ints = [](const Value& v) { return v.to_int_list(); };
  auto doubles = [](const Value& v) { return v.to_double_list(); };
  std::vector<std::vector<int64_t>> ep, st, sq;
  std::vector<std::vector<double>> va;
  size_t total = 0;
  for (size_t k = 0; k < state.keys().size(); ++k) {
    const Value& s = state.values()[k];
    ep.push_back(ints(s.at("epoch")));
    st.push_back(ints(s.at("step")));
    va.push_back(doubles(s.at("value")));
    sq.push_back(ints(s.at("seq")));
    total += va.back().size();
  }
  std::vector<Row> rows(total);
  std::vector<bool> filled(total, false);
  for (size_t k = 0; k < state.keys().size(); ++k) {
    const std::string& name = state.keys()[k].to_string();
    const size_t si = series_index(name);
    if (ep[k].size() != va[k].size() || st[k].size() != va[k].size() || sq[k].size() != va[k].size()) {
      throw std::runtime_error("metric '" + name + "': epoch/step/value/seq lengths differ");
    }
    for (size_t i = 0; i < va[k].size(); ++i) {
      const int64_t seq = sq[k][i];
      if (seq < 0 || static_cast<size_t>(seq) >= total || filled[seq]) {
        throw std::runtime_error("metric '" + name + "': bad sequence number");
      }
      rows[seq] = Row{si, MetricPoint{ep[k][i], st[k][i], va[k][i]}};
      filled[seq] = true;
    }
  }
  rows_ = std::move(rows);
  for (size_t i = 0; i < rows_.size(); ++i) {
    last_row_[rows_[i].series] = i;
    ++counts_[rows_[i].series];
  }
  rebuild_columns();
}

Value MetricLog::accumulator_state() const {
  Value d = Value::dict();
  for (const auto& kv : accumulators_) {
    d.set(kv.first, Value(std::vector<double>{kv.second.sum, kv.second.weight}));
  }
  return d;
}

std::vector<std::pair<std::string, std::pair<double, double>>> MetricLog::accumulators(const std::string& split) const {
  std::vector<std::pair<std::string, std::pair<double, double>>> out;
  for (const auto& kv : accumulators_) {
    if (split_name(kv.first).first == split) out.push_back({kv.first, {kv.second.sum, kv.second.weight}});
  }
  return out;
}

void MetricLog::set_accumulator(const std::string& name, double sum, double weight) {
  for (auto& kv : accumulators_) {
    if (kv.first == name) {
      kv.second = Accumulator{sum, weight};
      return;
    }
  }
  accumulators_.push_back({name, Accumulator{sum, weight}});
}

void MetricLog::load_accumulator_state(const Value& state) {
  accumulators_.clear();
  for (size_t i = 0; i < state.keys().size(); ++i) {
    const auto v = state.values()[i].to_double_list();
    if (v.size() != 2) throw std::runtime_error("bad accumulator state");
    accumulators_.push_back({state.keys()[i].to_string(), Accumulator{v[0], v[1]}});
  }
}

const char* mode_name(Mode m) { return m == Mode::min ? "min" : "max"; }

Mode parse_mode(const std::string& s) {
  if (s == "min") return Mode::min;
  if (s == "max") return Mode::max;
  throw std::invalid_argument("mode must be 'min' or 'max', got '" + s + "'");
}

bool better_than(Mode mode, double value, double best, double min_delta, bool relative) {
  // The relative form is written as PyTorch writes it, so that an infinite
  // initial best (inf * (1 - t)) stays infinite instead of becoming NaN.
  if (mode == Mode::min) return value < (relative ? best * (1.0 - min_delta) : best - min_delta);
  return value > (relative ? best * (1.0 + min_delta) : best + min_delta);
}

bool Best::improves(double value) const {
  if (!std::isfinite(value)) return false;
  return !best_ || better_than(mode_, value, *best_, min_delta_);
}

bool Best::update(double value, int64_t epoch, int64_t step) {
  if (!improves(value)) return false;
  best_ = value;
  best_epoch_ = epoch;
  best_step_ = step;
  return true;
}

Value Best::state_dict() const {
  Value d = Value::dict();
  d.set("mode", mode_name(mode_));
  d.set("min_delta", min_delta_);
  d.set("best", best_ ? Value(*best_) : Value());
  d.set("best_epoch", best_epoch_);
  d.set("best_step", best_step_);
  return d;
}

void Best::load_state_dict(const Value& state) {
  const Value& b = state.at("best");
  best_ = b.is_none() ? std::nullopt : std::optional<double>(b.to_double());
  best_epoch_ = state.at("best_epoch").to_int();
  best_step_ = state.at("best_step").to_int();
}

}  // namespace cairn
