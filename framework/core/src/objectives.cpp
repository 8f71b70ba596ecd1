#include "cairn/objectives.h"

#include "cairn/host_sync.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace cairn {

namespace F = torch::nn::functional;

std::string shape_text(const at::Tensor& t) {
  if (!t.defined()) return "(none)";
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

namespace {

[[noreturn]] void mismatch(const std::string& who, const std::string& needs, const at::Tensor& output,
                           const at::Tensor& target, const std::string& hint = "") {
  throw ShapeMismatch(who + " needs " + needs + "; the model gives " + shape_text(output) + " for targets " +
                      shape_text(target) + (hint.empty() ? "" : " (" + hint + ")"));
}

bool is_integer(const at::Tensor& t) {
  return !at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()) && t.scalar_type() != at::kBool;
}

//! Class-index targets: output [N, C, d...], targets [N, d...] integers.
void check_class_targets(const std::string& who, const at::Tensor& output, const at::Tensor& target) {
  const std::string needs = "outputs [N, C, ...] and integer class targets [N, ...]";
  if (!is_integer(target)) mismatch(who, needs + ", got " + std::string(c10::toString(target.scalar_type())) + " targets", output, target);
  if (output.dim() != target.dim() + 1 || output.size(0) != target.size(0) ||
      output.sizes().slice(2) != target.sizes().slice(1)) {
    std::string hint;
    if (output.dim() == target.dim() && output.sizes() == target.sizes()) {
      hint = "outputs shaped like the targets suit a regression or multi-label loss: mse, l1, bce_with_logits";
    }
    mismatch(who, needs, output, target, hint);
  }
}

//! Float targets shaped like the output.
void check_same_shape(const std::string& who, const at::Tensor& output, const at::Tensor& target) {
  const std::string needs = "float targets shaped like the outputs";
  if (!at::isFloatingType(target.scalar_type())) {
    mismatch(who, needs + " (got " + std::string(c10::toString(target.scalar_type())) +
                      " targets: class indices suit cross_entropy)",
             output, target);
  }
  if (output.sizes() != target.sizes()) {
    std::string hint;
    if (output.dim() == target.dim() + 1 && output.size(-1) == 1) hint = "save the targets as [N, 1], or make the model give [N]";
    mismatch(who, needs, output, target, hint);
  }
}

at::TensorOptions f64(const at::Tensor& like) { return at::TensorOptions().dtype(at::kDouble).device(like.device()); }

// Never in place: a snapshot of the statistics (a checkpoint being written,
// the loop's roll-back point) holds the old tensors.
void add_sums(MetricStats& s, const at::Tensor& v) {
  s.sums = s.sums.defined() ? s.sums + v.to(at::kDouble) : v.to(at::kDouble).clone();
}

//! Element i of a CPU float64 tensor (already read with read_to_cpu).
double host(const at::Tensor& t, int64_t i) { return t.contiguous().data_ptr<double>()[i]; }

}  // namespace

// --- losses -------------------------------------------------------------------

at::Tensor CrossEntropyLoss::weight_on(const at::Tensor& like) const {
  if (o_.weight.empty()) return at::Tensor();
  if (!weight_.defined() || weight_.device() != like.device() || weight_.scalar_type() != like.scalar_type()) {
    weight_ = torch::tensor(o_.weight, torch::kDouble).to(like.device(), like.scalar_type());
  }
  return weight_;
}

at::Tensor CrossEntropyLoss::operator()(const at::Tensor& output, const at::Tensor& target) const {
  auto opts = F::CrossEntropyFuncOptions().ignore_index(o_.ignore_index).label_smoothing(o_.label_smoothing);
  if (!o_.weight.empty()) opts.weight(weight_on(output));
  return F::cross_entropy(output, target, opts);
}

void CrossEntropyLoss::check(const at::Tensor& output, const at::Tensor& target) const {
  check_class_targets(name(), output, target);
  if (!o_.weight.empty() && static_cast<int64_t>(o_.weight.size()) != output.size(1)) {
    throw ShapeMismatch(name() + ": weight has " + std::to_string(o_.weight.size()) + " values but the model gives " +
                        std::to_string(output.size(1)) + " classes (outputs " + shape_text(output) + ")");
  }
}

at::Tensor NllLoss::operator()(const at::Tensor& output, const at::Tensor& target) const {
  auto opts = F::NLLLossFuncOptions().ignore_index(o_.ignore_index);
  if (!o_.weight.empty()) opts.weight(weight_on(output));
  return F::nll_loss(output, target, opts);
}

at::Tensor BceWithLogitsLoss::operator()(const at::Tensor& output, const at::Tensor& target) const {
  auto opts = F::BinaryCrossEntropyWithLogitsFuncOptions();
  if (!pos_weight_.empty()) {
    if (!pos_weight_t_.defined() || pos_weight_t_.device() != output.device()) {
      pos_weight_t_ = torch::tensor(pos_weight_, torch::kDouble).to(output.device(), output.scalar_type());
    }
    opts.pos_weight(pos_weight_t_);
  }
  return F::binary_cross_entropy_with_logits(output, target, opts);
}

void BceWithLogitsLoss::check(const at::Tensor& output, const at::Tensor& target) const {
  check_same_shape(name(), output, target);
  if (!pos_weight_.empty() && (output.dim() < 2 || static_cast<int64_t>(pos_weight_.size()) != output.size(-1))) {
    throw ShapeMismatch(name() + ": pos_weight has " + std::to_string(pos_weight_.size()) +
                        " values, one per label, but the model gives " + shape_text(output));
  }
}

std::string RegressionLoss::name() const {
  return kind_ == mse ? "mse" : kind_ == l1 ? "l1" : "smooth_l1";
}

at::Tensor RegressionLoss::operator()(const at::Tensor& output, const at::Tensor& target) const {
  switch (kind_) {
    case mse: return F::mse_loss(output, target);
    case l1: return F::l1_loss(output, target);
    case smooth_l1: return F::smooth_l1_loss(output, target, F::SmoothL1LossFuncOptions().beta(beta_));
  }
  return {};
}

void RegressionLoss::check(const at::Tensor& output, const at::Tensor& target) const {
  check_same_shape(name(), output, target);
}

// --- metrics ------------------------------------------------------------------

std::string metric_state_shape(const MetricStats& s, int64_t exact, int64_t multiple, int64_t width) {
  std::ostringstream why;
  if (!std::isfinite(s.count) || s.count < 0) why << "count is " << s.count << "; ";
  if (s.sums.defined()) {
    const int64_t n = s.sums.numel();
    if (s.sums.dim() != 1 || s.sums.scalar_type() != at::kDouble) {
      why << "sums must be a 1-D float64 tensor, not " << s.sums.dim() << "-D " << s.sums.scalar_type() << "; ";
    } else if (exact > 0 && n != exact) {
      why << "sums holds " << n << " values, this metric keeps " << exact << "; ";
    } else if (multiple > 0 && (n == 0 || n % multiple != 0)) {
      why << "sums holds " << n << " values, this metric keeps a positive multiple of " << multiple << "; ";
    }
  }
  if (s.rows.defined()) {
    if (width == 0) {
      why << "rows are kept where this metric keeps none; ";
    } else if (s.rows.dim() != 2 || (width > 0 && s.rows.size(1) != width) || s.rows.scalar_type() != at::kDouble) {
      why << "rows must be a float64 table of " << width << " columns, not " << s.rows.sizes() << " "
          << s.rows.scalar_type() << "; ";
    }
  }
  std::string out = why.str();
  if (out.size() >= 2) out.resize(out.size() - 2);
  return out;
}

// A metric of one's own: only what every metric's statistics are (its own
// compute() knows the rest); the built-in ones check their exact layout.
std::string Metric::check_state(const MetricStats& s) const { return metric_state_shape(s, 0, 0, -1); }
std::string Accuracy::check_state(const MetricStats& s) const {
  std::string why = metric_state_shape(s, 0, 0, 0);
  // [correct, counted]; an older cairn kept [correct] with the count on the host.
  if (why.empty() && s.sums.defined() && s.sums.numel() != 1 && s.sums.numel() != 2) {
    why = "sums holds " + std::to_string(s.sums.numel()) + " values, this metric keeps 2 (correct, counted)";
  }
  return why;
}
std::string F1Score::check_state(const MetricStats& s) const { return metric_state_shape(s, 0, 3, 0); }
std::string BinaryAuroc::check_state(const MetricStats& s) const { return metric_state_shape(s, 0, 0, 2); }
std::string ErrorMetric::check_state(const MetricStats& s) const { return metric_state_shape(s, 1, 0, 0); }
std::string R2Score::check_state(const MetricStats& s) const {
  // Rows of [n, mean, M2, SSE, min, max] per batch (d columns each); an older
  // cairn kept sums of [sum y, sum y^2, SSE, n].
  std::string why = metric_state_shape(s, 0, 4, -1);
  if (why.empty() && s.rows.defined() && (s.rows.size(1) < 6 || (s.rows.size(1) - 1) % 5 != 0)) {
    why = "rows have " + std::to_string(s.rows.size(1)) + " columns, this metric keeps 1 + 5 per output";
  }
  if (why.empty() && s.rows.defined() && s.sums.defined()) why = "both sums and rows are kept; this metric keeps one";
  return why;
}
std::string Perplexity::check_state(const MetricStats& s) const { return metric_state_shape(s, 2, 0, 0); }

void Accuracy::check(const at::Tensor& output, const at::Tensor& target) const {
  if (is_integer(target)) {
    check_class_targets("metric " + name(), output, target);
  } else {
    check_same_shape("metric " + name(), output, target);
  }
}

namespace {
//! Statistics of an older cairn's accuracy ([correct], count on the host) in
//! today's layout ([correct, counted]).
void accuracy_layout(MetricStats& s) {
  if (s.sums.defined() && s.sums.numel() == 1) {
    s.sums = at::cat({s.sums, at::full({1}, s.count, s.sums.options())});
    s.count = 0;
  }
}

void add_accuracy(MetricStats& s, const at::Tensor& correct, const at::Tensor& counted) {
  accuracy_layout(s);
  add_sums(s, at::stack({correct.to(at::kDouble), counted.to(at::kDouble)}));
}
}  // namespace

void Accuracy::update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const {
  if (is_integer(target)) {
    const at::Tensor valid = target.ne(ignore_index_);
    add_accuracy(s, output.argmax(1).eq(target).logical_and(valid).sum(), valid.sum());
  } else {
    add_accuracy(s, output.gt(0).eq(target.gt(0.5)).sum(),
                 at::scalar_tensor(static_cast<double>(target.numel()), f64(output)));
  }
}

bool Accuracy::fold_host_mean(MetricStats& s, double sum, double weight) const {
  accuracy_layout(s);
  const at::Tensor folded = at::tensor(std::vector<double>{sum, weight}, at::kDouble);
  s.sums = s.sums.defined() ? s.sums + folded.to(s.sums.device()) : folded;
  return true;
}

double Accuracy::compute(const MetricStats& s) const {
  if (!s.sums.defined()) return std::numeric_limits<double>::quiet_NaN();
  const at::Tensor v = read_to_cpu(s.sums);
  // 0 counted (every target ignored): 0 / 0, NaN.
  return v.numel() == 2 ? host(v, 0) / host(v, 1) : host(v, 0) / s.count;
}

void TopKAccuracy::check(const at::Tensor& output, const at::Tensor& target) const {
  check_class_targets("metric " + name(), output, target);
  if (output.size(1) < k_) {
    throw ShapeMismatch("metric " + name() + ": k = " + std::to_string(k_) + " but the model gives only " +
                        std::to_string(output.size(1)) + " classes (outputs " + shape_text(output) + ")");
  }
}

void TopKAccuracy::update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const {
  const at::Tensor top = std::get<1>(output.topk(k_, 1));  // [N, k, ...]
  const at::Tensor valid = target.ne(ignore_index_);
  add_accuracy(s, top.eq(target.unsqueeze(1)).any(1).logical_and(valid).sum(), valid.sum());
}

void F1Score::check(const at::Tensor& output, const at::Tensor& target) const {
  if (is_integer(target)) {
    check_class_targets("metric " + name(), output, target);
  } else {
    check_same_shape("metric " + name(), output, target);
  }
  const int64_t c = output.dim() > 1 ? output.size(1) : 1;
  if (classes_ > 0 && c != classes_) {
    throw ShapeMismatch("metric " + name() + ": configured for " + std::to_string(classes_) +
                        " classes but the model gives " + shape_text(output));
  }
}

void F1Score::update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const {
  at::Tensor tp, fp, fn;
  const int64_t n = output.size(0);
  if (is_integer(target)) {
    const int64_t c = output.size(1);
    const at::Tensor pred = output.argmax(1).reshape({-1});
    const at::Tensor raw = target.reshape({-1}).to(at::kLong);
    // Ignored targets weigh 0 (at a valid index): no host read, no shape that depends on the data.
    const at::Tensor valid = raw.ne(ignore_index_);
    const at::Tensor t = raw.masked_fill(valid.logical_not(), 0);
    const at::Tensor w = valid.to(at::kDouble);
    const at::Tensor hit = pred.eq(t).to(at::kDouble).mul_(w);
    // scatter_add of whole numbers in float64: exact in any order.
    tp = at::zeros({c}, f64(output)).scatter_add_(0, pred, hit);
    fp = at::zeros({c}, f64(output)).scatter_add_(0, pred, w).sub_(tp);
    fn = at::zeros({c}, f64(output)).scatter_add_(0, t, w).sub_(tp);
  } else {
    const at::Tensor p = output.reshape({n, -1}).gt(0), t = target.reshape({n, -1}).gt(0.5);
    tp = p.logical_and(t).sum(0).to(at::kDouble);
    fp = p.logical_and(t.logical_not()).sum(0).to(at::kDouble);
    fn = p.logical_not().logical_and(t).sum(0).to(at::kDouble);
    // A binary task's true negatives (class 0's true positives) are the rest.
    s.count += static_cast<double>(n);
  }
  add_sums(s, at::cat({tp, fp, fn}));
}

double F1Score::compute(const MetricStats& s) const {
  if (!s.sums.defined()) return std::numeric_limits<double>::quiet_NaN();
  const at::Tensor v = read_to_cpu(s.sums);
  const int64_t c = v.size(0) / 3;
  const double* p = v.data_ptr<double>();
  struct Counts { double tp, fp, fn; };
  std::vector<Counts> per;
  for (int64_t i = 0; i < c; ++i) per.push_back({p[i], p[c + i], p[2 * c + i]});
  const bool binary = classes_ == 0 && c == 1;
  const bool labels = classes_ == 0 && c > 1;  // multi-label: every label counts
  if (binary) {
    // Class 0 of a binary task: its hits are the true negatives.
    const Counts one = per[0];
    per.insert(per.begin(), Counts{std::max(0.0, s.count - one.tp - one.fp - one.fn), one.fn, one.fp});
  }
  const auto f1 = [](const Counts& k) {
    const double d = 2 * k.tp + k.fp + k.fn;
    return d > 0 ? 2 * k.tp / d : 0.0;
  };
  if (average_ == micro) {
    Counts all{0, 0, 0};
    for (const auto& k : per) all.tp += k.tp, all.fp += k.fp, all.fn += k.fn;
    return 2 * all.tp + all.fp + all.fn > 0 ? f1(all) : std::numeric_limits<double>::quiet_NaN();
  }
  double sum = 0, weight = 0;
  for (const auto& k : per) {
    if (average_ == weighted) {
      sum += f1(k) * (k.tp + k.fn);
      weight += k.tp + k.fn;
    } else if (labels || k.tp + k.fp + k.fn > 0) {  // a class neither present nor predicted is left out
      sum += f1(k);
      weight += 1;
    }
  }
  if (weight > 0) return sum / weight;
  // No support at all: 0 where something was predicted (scikit-learn's
  // zero_division), NaN where nothing was measured (every target ignored).
  bool any = false;
  for (const auto& k : per) any = any || k.tp + k.fp + k.fn > 0;
  return any ? 0.0 : std::numeric_limits<double>::quiet_NaN();
}

namespace {
//! The binary score of each example: the output itself ([N], [N, 1]), or the
//! difference of the two logits ([N, 2]), which orders examples as softmax's p1 does.
at::Tensor binary_score(const at::Tensor& output) {
  if (output.dim() == 2 && output.size(1) == 2) return output.select(1, 1) - output.select(1, 0);
  return output.reshape({-1});
}
}  // namespace

void BinaryAuroc::check(const at::Tensor& output, const at::Tensor& target) const {
  const bool out_ok = output.dim() == 1 || (output.dim() == 2 && (output.size(1) == 1 || output.size(1) == 2));
  const bool tgt_ok = target.dim() == 1 || (target.dim() == 2 && target.size(1) == 1);
  if (!out_ok || !tgt_ok || output.size(0) != target.size(0)) {
    mismatch("metric auroc", "a binary task: outputs [N], [N, 1] or [N, 2] and 0/1 targets [N] or [N, 1]", output, target);
  }
}

void BinaryAuroc::update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const {
  const at::Tensor rows = at::stack({binary_score(output).to(at::kDouble), target.reshape({-1}).to(at::kDouble)}, 1);
  s.rows = s.rows.defined() ? at::cat({s.rows, rows}) : rows.clone();
}

double BinaryAuroc::compute(const MetricStats& s) const {
  if (!s.rows.defined()) return std::numeric_limits<double>::quiet_NaN();
  const at::Tensor r = read_to_cpu(s.rows).contiguous();
  const int64_t n = r.size(0);
  const double* p = r.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(p[2 * i])) return std::numeric_limits<double>::quiet_NaN();  // no order to rank (and std::sort needs one)
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[2 * a] < p[2 * b]; });
  // Mann-Whitney: the sum of the positives' ranks, tied scores sharing their mean rank.
  double rank_sum = 0, positives = 0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    while (j < n && p[2 * order[static_cast<size_t>(j)]] == p[2 * order[static_cast<size_t>(i)]]) ++j;
    const double mean_rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2.0;
    for (int64_t k = i; k < j; ++k) {
      if (p[2 * order[static_cast<size_t>(k)] + 1] > 0.5) {
        rank_sum += mean_rank;
        positives += 1;
      }
    }
    i = j;
  }
  const double negatives = static_cast<double>(n) - positives;
  if (positives == 0 || negatives == 0) return std::numeric_limits<double>::quiet_NaN();
  return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives);
}

void ErrorMetric::check(const at::Tensor& output, const at::Tensor& target) const {
  check_same_shape("metric " + name(), output, target);
}

void ErrorMetric::update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const {
  const at::Tensor e = output.to(at::kDouble) - target.to(at::kDouble);
  const at::Tensor total = kind_ == mae ? e.abs().sum() : e.square().sum();
  add_sums(s, total.reshape({1}));
  s.count += static_cast<double>(e.numel());
}

double ErrorMetric::compute(const MetricStats& s) const {
  if (!s.sums.defined()) return std::numeric_limits<double>::quiet_NaN();
  const double mean = host(read_to_cpu(s.sums), 0) / s.count;
  return kind_ == mae ? mean : std::sqrt(mean);
}

void R2Score::check(const at::Tensor& output, const at::Tensor& target) const {
  check_same_shape("metric r2", output, target);
}

void R2Score::update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const {
  const int64_t n = output.size(0);
  if (n == 0) return;
  const at::Tensor o = output.reshape({n, -1}).to(at::kDouble), t = target.reshape({n, -1}).to(at::kDouble);
  if (s.sums.defined()) {  // statistics of an older cairn, mid-epoch: go on in their layout
    const at::Tensor count = at::full({t.size(1)}, static_cast<double>(n), f64(output));
    add_sums(s, at::cat({t.sum(0), t.square().sum(0), (t - o).square().sum(0), count}));
    return;
  }
  // One row per batch: its size, and per column the mean, the squared
  // deviations about it, the squared errors, the least and the largest target.
  const at::Tensor mean = t.mean(0);
  const at::Tensor row = at::cat({at::full({1}, static_cast<double>(n), f64(output)), mean,
                                  (t - mean).square().sum(0), (t - o).square().sum(0), std::get<0>(t.min(0)),
                                  std::get<0>(t.max(0))});
  s.rows = s.rows.defined() ? at::cat({s.rows, row.unsqueeze(0)}) : row.unsqueeze(0);
}

double R2Score::compute(const MetricStats& s) const {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (s.sums.defined()) {
    const at::Tensor v = read_to_cpu(s.sums);
    const int64_t d = v.size(0) / 4;
    const double* p = v.data_ptr<double>();
    double sum = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double sy = p[i], syy = p[d + i], sse = p[2 * d + i], n = p[3 * d + i];
      const double ss_tot = syy - sy * sy / n;
      sum += ss_tot > 0 ? 1.0 - sse / ss_tot : nan;
    }
    return sum / static_cast<double>(d);
  }
  if (!s.rows.defined()) return nan;
  const at::Tensor r = read_to_cpu(s.rows).contiguous();
  const int64_t batches = r.size(0), d = (r.size(1) - 1) / 5;
  const double* p = r.data_ptr<double>();
  double total = 0;
  for (int64_t k = 0; k < d; ++k) {
    // Chan et al.'s pairwise update of (n, mean, M2), batch by batch.
    double n = 0, mean = 0, m2 = 0, sse = 0;
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (int64_t b = 0; b < batches; ++b) {
      const double* row = p + b * r.size(1);
      const double nb = row[0], mb = row[1 + k], m2b = row[1 + d + k];
      const double merged = n + nb, delta = mb - mean;
      mean += delta * nb / merged;
      m2 += m2b + delta * delta * n * nb / merged;
      n = merged;
      sse += row[1 + 2 * d + k];
      lo = std::min(lo, row[1 + 3 * d + k]);
      hi = std::max(hi, row[1 + 4 * d + k]);
    }
    if (!(hi > lo)) return nan;  // a constant target column: no spread to explain
    total += 1.0 - sse / m2;
  }
  return total / static_cast<double>(d);
}

void Perplexity::check(const at::Tensor& output, const at::Tensor& target) const {
  check_class_targets("metric perplexity", output, target);
}

void Perplexity::update(MetricStats& s, const at::Tensor& output, const at::Tensor& target) const {
  const at::Tensor nll = F::cross_entropy(output.to(at::kDouble), target,
                                          F::CrossEntropyFuncOptions().ignore_index(ignore_index_).reduction(torch::kSum));
  const at::Tensor count = target.ne(ignore_index_).sum().to(at::kDouble);
  add_sums(s, at::stack({nll, count}));
}

double Perplexity::compute(const MetricStats& s) const {
  if (!s.sums.defined()) return std::numeric_limits<double>::quiet_NaN();
  const at::Tensor c = read_to_cpu(s.sums);
  return std::exp(host(c, 0) / host(c, 1));
}

}  // namespace cairn
