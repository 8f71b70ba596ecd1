#include "cairn/loop.h"

#include "cairn/checkpoint_file.h"
#include "cairn/distributed.h"
#include "cairn/host_sync.h"
#include "cairn/optim_state.h"
#include "cairn/rng.h"
#include "cairn/schedulers.h"
#include "cairn/signals.h"

#include <torch/torch.h>

#include <cmath>
#include <csignal>
#include <functional>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <sys/stat.h>

namespace cairn {

namespace fs = std::filesystem;

namespace {
//! `t` without autograd history. A tensor that needs no gradient has none to
//! drop: handing it on as it is saves a detach (two dispatches) per step.
at::Tensor no_history(const at::Tensor& t) { return t.requires_grad() ? t.detach() : t; }
}  // namespace

Loop::Loop() = default;
Loop::~Loop() = default;

Connection Loop::on(Event e, std::function<void(Loop&)> fn, Order order) {
  return bus_.connect(e, std::move(fn), order);
}

EventFilter every(int64_t n) {
  if (n <= 0) throw std::invalid_argument("every(n) needs n > 0");
  return EventFilter{[n](const Loop&, int64_t count) { return count > 0 && count % n == 0; }};
}
EventFilter once(int64_t n) {
  return EventFilter{[n](const Loop&, int64_t count) { return count == n; }};
}
EventFilter when(std::function<bool(const Loop&)> predicate) {
  return EventFilter{[p = std::move(predicate)](const Loop& l, int64_t) { return p(l); }};
}

int64_t event_count(const Loop& loop, Event e) {
  const LoopState& st = loop.state();
  switch (e) {
    case Event::batch_begin:
    case Event::after_backward:
    case Event::before_optimizer_step:
      return st.global_step + 1;  // the batch being run
    case Event::batch_end:
      return st.global_step;
    default:
      return st.epoch + 1;
  }
}

Connection Loop::on(Event e, EventFilter filter, std::function<void(Loop&)> fn, Order order) {
  return bus_.connect(
      e,
      [e, f = std::move(filter), fn = std::move(fn)](Loop& l) {
        // Mid gradient-accumulation batches share the step count of the cycle: count them once.
        if (e == Event::batch_end && l.state().accumulating) return;
        if (f.accept(l, event_count(l, e))) fn(l);
      },
      order);
}

void Loop::add(std::shared_ptr<Callback> cb) {
  if (!cb) throw std::invalid_argument("Loop::add: null callback");
  for (const auto& c : callbacks_) {
    if (c->key() == cb->key()) {
      throw std::invalid_argument("two callbacks with the same key '" + cb->key() +
                                  "': give them different options so their checkpoint state does not clash");
    }
  }
  const Order o = cb->order();
  Callback* c = cb.get();
  if (cb->rank_zero_only()) {
    // Every hook of a rank-0 callback is skipped on the other ranks.
    auto* self = this;
    auto skip = [self] { return self->rank_ != 0; };
    auto wrap = [&](Event e, void (Callback::*hook)(Loop&)) {
      bus_.connect(e, [c, hook, skip](Loop& l) { if (!skip()) (c->*hook)(l); }, o);
    };
    wrap(Event::fit_begin, &Callback::on_fit_begin);
    wrap(Event::epoch_begin, &Callback::on_epoch_begin);
    wrap(Event::batch_begin, &Callback::on_batch_begin);
    wrap(Event::after_backward, &Callback::on_after_backward);
    wrap(Event::before_optimizer_step, &Callback::on_before_optimizer_step);
    wrap(Event::batch_end, &Callback::on_batch_end);
    wrap(Event::validation_begin, &Callback::on_validation_begin);
    wrap(Event::validation_batch_end, &Callback::on_validation_batch_end);
    wrap(Event::validation_end, &Callback::on_validation_end);
    wrap(Event::epoch_end, &Callback::on_epoch_end);
    wrap(Event::test_begin, &Callback::on_test_begin);
    wrap(Event::test_batch_end, &Callback::on_test_batch_end);
    wrap(Event::test_end, &Callback::on_test_end);
    wrap(Event::fit_end, &Callback::on_fit_end);
    wrap(Event::exception, &Callback::on_exception);
    wrap(Event::save_checkpoint, &Callback::on_save_checkpoint);
    wrap(Event::load_checkpoint, &Callback::on_load_checkpoint);
    callbacks_.push_back(std::move(cb));
    return;
  }
  bus_.connect(Event::fit_begin, [c](Loop& l) { c->on_fit_begin(l); }, o);
  bus_.connect(Event::epoch_begin, [c](Loop& l) { c->on_epoch_begin(l); }, o);
  bus_.connect(Event::batch_begin, [c](Loop& l) { c->on_batch_begin(l); }, o);
  bus_.connect(Event::after_backward, [c](Loop& l) { c->on_after_backward(l); }, o);
  bus_.connect(Event::before_optimizer_step, [c](Loop& l) { c->on_before_optimizer_step(l); }, o);
  bus_.connect(Event::batch_end, [c](Loop& l) { c->on_batch_end(l); }, o);
  bus_.connect(Event::validation_begin, [c](Loop& l) { c->on_validation_begin(l); }, o);
  bus_.connect(Event::validation_batch_end, [c](Loop& l) { c->on_validation_batch_end(l); }, o);
  bus_.connect(Event::validation_end, [c](Loop& l) { c->on_validation_end(l); }, o);
  bus_.connect(Event::epoch_end, [c](Loop& l) { c->on_epoch_end(l); }, o);
  bus_.connect(Event::test_begin, [c](Loop& l) { c->on_test_begin(l); }, o);
  bus_.connect(Event::test_batch_end, [c](Loop& l) { c->on_test_batch_end(l); }, o);
  bus_.connect(Event::test_end, [c](Loop& l) { c->on_test_end(l); }, o);
  bus_.connect(Event::fit_end, [c](Loop& l) { c->on_fit_end(l); }, o);
  bus_.connect(Event::exception, [c](Loop& l) { c->on_exception(l); }, o);
  bus_.connect(Event::save_checkpoint, [c](Loop& l) { c->on_save_checkpoint(l); }, o);
  bus_.connect(Event::load_checkpoint, [c](Loop& l) { c->on_load_checkpoint(l); }, o);
  callbacks_.push_back(std::move(cb));
}

void Loop::track(torch::nn::Module& model) { model_ = &model; }
void Loop::track(torch::optim::Optimizer& optimizer) {
  for (auto* o : optimizers_) {
    if (o == &optimizer) return;
  }
  if (optimizer_kind(optimizer) == "unknown") {
    throw std::invalid_argument(std::string("Loop::track: cairn cannot save the state of this optimizer (") +
                                typeid(optimizer).name() +
                                "); supported: SGD, Adam, AdamW, RMSprop, Adagrad. Save its state yourself through "
                                "track(key, Stateful&) instead");
  }
  optimizers_.push_back(&optimizer);
}
void Loop::track(Scheduler& scheduler) {
  for (auto* s : schedulers_) {
    if (s == &scheduler) return;
  }
  schedulers_.push_back(&scheduler);
}
void Loop::track(const std::string& key, Stateful& object) { objects_[key] = &object; }

void Loop::track_section(const std::string& key, Stateful& object) {
  static const char* const kReserved[] = {"state_dict", "optimizer_states", "lr_schedulers", "rng_states", "metrics",
                                          "values", "callbacks", "hyper_parameters", "loop", "epoch", "global_step",
                                          "batch_in_epoch", "format_version", "section_versions", "cairn_version"};
  for (const char* r : kReserved) {
    if (key == r) throw std::invalid_argument("track_section: '" + key + "' is a checkpoint key of cairn's own");
  }
  sections_[key] = &object;
}
void Loop::track_generator(const std::string& name, at::Generator generator) {
  if (name == "cpu" || name == "cuda") throw std::invalid_argument("generator names 'cpu' and 'cuda' are reserved");
  generators_[name] = std::move(generator);
}

void Loop::emit(Event e) { bus_.emit(e, *this); }

void Loop::check_signals() {
  const int sig = signals::pending();
  if (sig != 0 && !state_.stop.interrupt) {
    state_.request_interrupt(sig, std::string("received ") + (sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal"));
  }
}

void Loop::refuse_host_value_while_recording(const std::string& name) const {
  if (!recording_) return;
  throw std::logic_error("'" + name + "' is logged as a host value inside a captured training step (trainer.cuda_graphs): "
                         "a replay would log the captured number again; log it with log_step_tensor()");
}

void Loop::log(const std::string& name, double value) {
  refuse_host_value_while_recording(name);
  metrics_.log(name, value, state_.epoch, state_.global_step);
}

void Loop::log_step(const std::string& name, double value, double weight) {
  refuse_host_value_while_recording(name);
  if (name == loss_metric_ && state_.stage == Stage::train) state_.batch_loss = value;
  // Distributed training batches are averaged over the ranks at batch_end first.
  if (!group_ || state_.stage != Stage::train) metrics_.accumulate(name, value, weight);
  step_values_.push_back({name, value, weight});
}

void Loop::log_step_tensor(const std::string& name, const at::Tensor& value, double weight) {
  if (recording_) {
    recording_->push_back([this, name, value, weight] { log_step_tensor(name, value, weight); });
    return;
  }
  if (group_ || state_.stage != Stage::train) {
    // Ranks average step values on the host at batch_end anyway; valid/test
    // values are means of the pass only.
    if (state_.stage != Stage::train) return metrics_.accumulate_tensor(name, value, weight);
    return log_step(name, read_double(value), weight);
  }
  // A NaN loss makes the epoch's mean NaN: TerminateOnNaN sees it at epoch end.
  metrics_.accumulate_tensor(name, value, weight);
  step_tensors_.push_back({name, no_history(value)});
}

void Loop::watch_loss(const at::Tensor& loss) {
  // A sum: inf or NaN in any addend stays in it (one device op per step).
  const at::Tensor l = loss.detach().sum().to(at::kDouble);
  loss_nonfinite_ = loss_nonfinite_.defined() ? loss_nonfinite_ + l : l;
}

bool Loop::nonfinite_loss_since_check() {
  if (!loss_nonfinite_.defined()) return false;
  const bool bad = !std::isfinite(read_double(loss_nonfinite_));
  loss_nonfinite_ = at::Tensor();
  return bad;
}

bool Loop::unread_loss_nonfinite() {
  at::Tensor total;
  auto add = [&](const at::Tensor& t) {
    const at::Tensor d = t.detach().sum().to(at::kDouble);
    total = total.defined() ? total + d.to(total.device()) : d;
  };
  if (loss_nonfinite_.defined()) add(loss_nonfinite_);
  for (const auto& name : metrics_.stat_names("train")) {
    if (name != loss_metric_) continue;
    const MetricStats& s = metrics_.stats(name);
    if (s.sums.defined()) add(s.sums);
  }
  return total.defined() && !std::isfinite(read_double(total));
}

void Loop::note_step_loss(const at::Tensor& loss) {
  if (recording_) {
    recording_->push_back([this, loss] { note_step_loss(loss); });
    return;
  }
  if (group_) return;  // distributed steps read their values at once
  for (const auto& v : step_tensors_) {
    if (v.name == loss_metric_) return;  // its epoch mean turns NaN with it
  }
  for (const auto& v : step_values_) {
    if (v.name == loss_metric_) return;
  }
  watch_loss(loss);
  step_tensors_.push_back({"", no_history(loss)});  // sets batch_loss only, logs nothing
}

void Loop::declare_mean(const std::string& name) {
  metrics_.declare_mean(name);
  step_stats_.declare_mean(name);
}

void Loop::declare_metric(const std::string& name, std::shared_ptr<const Metric> metric) {
  metrics_.declare(name, metric);
  step_stats_.declare(name, std::move(metric));
}

void Loop::update_metric(const std::string& name, const at::Tensor& output, const at::Tensor& target) {
  if (recording_) {
    recording_->push_back([this, name, output, target] { update_metric(name, output, target); });
    return;
  }
  // Distributed training: this batch's statistics are kept apart and summed
  // over the ranks at batch_end, so every rank (and rank 0's checkpoint) holds the job's.
  if (group_ && state_.stage == Stage::train) {
    step_stats_.update(name, no_history(output), target);
  } else {
    metrics_.update(name, no_history(output), target);
  }
}

void Loop::set_process_group(std::shared_ptr<ProcessGroup> group) {
  group_ = std::move(group);
  rank_ = group_ ? group_->rank() : 0;
  world_size_ = group_ ? group_->size() : 1;
  agreed_stop_ = false;
}

bool Loop::rank_zero_decides(bool local) {
  if (!group_) return local;
  std::vector<at::Tensor> t{torch::full({1}, local ? 1.0 : 0.0, torch::kDouble)};
  group_->broadcast(t, 0);
  return t[0].item<double>() != 0.0;
}

void Loop::agree_on_late_interrupt() {
  // After a stop was agreed, a signal may still reach some ranks before the
  // others (the launcher forwards it to each in turn): an interrupt decides
  // whether the test pass runs and what is saved, so agree on it too.
  std::vector<at::Tensor> sig{torch::zeros({world_size_}, torch::kDouble)};
  if (state_.stop.interrupt) sig[0][rank_] = static_cast<double>(std::max(1, state_.stop.signal));
  group_->allreduce_sum(sig);
  for (int r = 0; r < world_size_; ++r) {
    const int s = static_cast<int>(sig[0][r].item<double>());
    if (s == 0) continue;
    if (!state_.stop.interrupt) state_.request_interrupt(s, "received a signal (on rank " + std::to_string(r) + ")");
    return;
  }
}

void Loop::agree_on_stop() {
  if (!group_) return;
  if (agreed_stop_) return agree_on_late_interrupt();
  std::vector<at::Tensor> flags{torch::zeros({world_size_}, torch::kDouble)};
  if (state_.stop.requested) flags[0][rank_] = 1.0;
  group_->allreduce_sum(flags);
  int first = -1;
  for (int r = 0; r < world_size_ && first < 0; ++r) {
    if (flags[0][r].item<double>() > 0) first = r;
  }
  if (first < 0) return;
  // The lowest requesting rank's request (reason, interrupt, signal) holds everywhere.
  const StopRequest& mine = state_.stop;
  const std::string text = std::string(mine.interrupt ? "1" : "0") + (state_.invalid_state ? "1" : "0") +
                           std::to_string(mine.signal) + "\n" + mine.reason;
  const std::string got = group_->broadcast_bytes(text, first);
  const size_t nl = got.find('\n');
  StopRequest agreed;
  agreed.requested = true;
  agreed.interrupt = got.at(0) == '1';
  state_.invalid_state = state_.invalid_state || got.at(1) == '1';
  agreed.signal = std::stoi(got.substr(2, nl - 2));
  agreed.reason = got.substr(nl + 1);
  if (first != rank_) agreed.reason += " (on rank " + std::to_string(first) + ")";
  state_.stop = agreed;
  agreed_stop_ = true;
}

namespace {
//! A 48-bit hash of names (exact as a double), to check ranks logged the same.
double names_hash(const std::vector<std::string>& names) {
  uint64_t h = 1469598103934665603ULL;
  for (const auto& n : names) h = (h ^ std::hash<std::string>{}(n)) * 1099511628211ULL;
  return static_cast<double>(h >> 16);
}
//! The sorted union of every rank's `names` (a collective).
std::vector<std::string> names_on_any_rank(ProcessGroup& group, const std::vector<std::string>& names) {
  std::string mine;
  for (const auto& x : names) mine += x + "\n";
  std::vector<std::string> all;
  for (const auto& blob : group.allgather_bytes(mine)) {
    size_t at = 0;
    for (size_t nl; (nl = blob.find('\n', at)) != std::string::npos; at = nl + 1) all.push_back(blob.substr(at, nl - at));
  }
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  return all;
}
}  // namespace

void Loop::reduce_step_values() {
  std::vector<std::string> names;
  for (const auto& v : step_values_) names.push_back(v.name);
  const double n = static_cast<double>(state_.batch_size);
  // First: did every rank log the same names (in the same order)?
  std::vector<at::Tensor> check{torch::zeros({world_size_ + 1}, torch::kDouble)};
  check[0][rank_] = names_hash(names);
  check[0][world_size_] = static_cast<double>(names.size());
  group_->allreduce_sum(check);
  bool same = true;
  for (int r = 1; r < world_size_; ++r) same = same && check[0][r].item<double>() == check[0][0].item<double>();
  same = same && check[0][world_size_].item<double>() == static_cast<double>(names.size() * world_size_);
  if (!same) {
    // A rank without examples in this batch (the epoch's last, short one) or a
    // step that logs conditionally: reduce over the union of the names.
    const std::vector<std::string> all = names_on_any_rank(*group_, names);
    std::vector<StepValue> merged;
    for (const auto& x : all) {
      StepValue sv{x, 0.0, 0.0};
      for (const auto& v : step_values_) {
        if (v.name == x) sv = v;
      }
      merged.push_back(sv);
    }
    step_values_ = std::move(merged);
  }
  std::vector<at::Tensor> t{torch::zeros({2 * static_cast<int64_t>(step_values_.size()) + 2}, torch::kDouble)};
  double* p = t[0].data_ptr<double>();
  p[0] = state_.batch_loss * n;
  p[1] = n;
  for (size_t i = 0; i < step_values_.size(); ++i) {
    p[2 + 2 * i] = step_values_[i].weight > 0 ? step_values_[i].value * step_values_[i].weight : 0.0;
    p[3 + 2 * i] = step_values_[i].weight;
  }
  group_->allreduce_sum(t);
  p = t[0].data_ptr<double>();
  if (p[1] > 0) state_.batch_loss = p[0] / p[1];
  std::vector<StepValue> kept;
  for (size_t i = 0; i < step_values_.size(); ++i) {
    const double w = p[3 + 2 * i];
    if (w <= 0) continue;
    StepValue v{step_values_[i].name, p[2 + 2 * i] / w, w};
    metrics_.accumulate(v.name, v.value, v.weight);
    kept.push_back(v);
  }
  step_values_ = std::move(kept);
}

void Loop::reduce_accumulators(const std::string& split) {
  const auto mine = metrics_.accumulators(split);
  std::vector<std::string> names;
  for (const auto& a : mine) names.push_back(a.first);
  const std::vector<std::string> all = names_on_any_rank(*group_, names);
  if (all.empty()) return;
  std::vector<at::Tensor> t{torch::zeros({2 * static_cast<int64_t>(all.size())}, torch::kDouble)};
  double* p = t[0].data_ptr<double>();
  for (size_t i = 0; i < all.size(); ++i) {
    for (const auto& a : mine) {
      if (a.first == all[i]) {
        p[2 * i] = a.second.first;
        p[2 * i + 1] = a.second.second;
      }
    }
  }
  group_->allreduce_sum(t);
  p = t[0].data_ptr<double>();
  for (size_t i = 0; i < all.size(); ++i) metrics_.set_accumulator(all[i], p[2 * i], p[2 * i + 1]);
}

void Loop::reduce_stats(MetricLog& from, const std::vector<std::string>& names, MetricLog& into, bool add) {
  if (names.empty()) return;
  const auto k = static_cast<int64_t>(names.size());
  const int64_t w = world_size_;
  // Per name and rank: the length of the sums, the number of rows and their
  // width, and the host-side count.
  std::vector<at::Tensor> info{torch::zeros({k, w, 4}, torch::kDouble)};
  for (int64_t i = 0; i < k; ++i) {
    const MetricStats& s = from.stats(names[static_cast<size_t>(i)]);
    if (s.sums.defined()) info[0][i][rank_][0] = static_cast<double>(s.sums.numel());
    if (s.rows.defined()) {
      info[0][i][rank_][1] = static_cast<double>(s.rows.size(0));
      info[0][i][rank_][2] = static_cast<double>(s.rows.size(1));
    }
    info[0][i][rank_][3] = s.count;
  }
  group_->allreduce_sum(info);
  const at::Tensor in = info[0].to(torch::kLong);
  const auto* p = in.data_ptr<int64_t>();
  const auto* counts = info[0].data_ptr<double>();
  auto at3 = [&](int64_t i, int64_t r, int64_t c) { return p[(i * w + r) * 4 + c]; };
  std::vector<int64_t> len(static_cast<size_t>(k), 0), cols(static_cast<size_t>(k), 0), rows_before(static_cast<size_t>(k), 0),
      rows_total(static_cast<size_t>(k), 0);
  int64_t sums_total = 0, rows_flat = 0;
  for (int64_t i = 0; i < k; ++i) {
    const size_t u = static_cast<size_t>(i);
    for (int64_t r = 0; r < w; ++r) {
      const int64_t n = at3(i, r, 0), c = at3(i, r, 2);
      if (n > 0 && len[u] > 0 && n != len[u]) {
        throw std::runtime_error("metric '" + names[u] + "': ranks hold statistics of different sizes (" +
                                 std::to_string(len[u]) + " and " + std::to_string(n) + "): do they see the same number of classes?");
      }
      if (c > 0 && cols[u] > 0 && c != cols[u]) throw std::runtime_error("metric '" + names[u] + "': ranks hold rows of different widths");
      len[u] = std::max(len[u], n);
      cols[u] = std::max(cols[u], c);
      if (r < rank_) rows_before[u] += at3(i, r, 1);
      rows_total[u] += at3(i, r, 1);
    }
    sums_total += len[u];
    rows_flat += rows_total[u] * cols[u];
  }
  // One buffer: every name's sums, then every name's rows in rank order (zeros elsewhere).
  std::vector<at::Tensor> buf{torch::zeros({sums_total + rows_flat}, torch::kDouble)};
  int64_t s_off = 0, r_off = sums_total;
  std::vector<int64_t> s_at(static_cast<size_t>(k)), r_at(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    const size_t u = static_cast<size_t>(i);
    const MetricStats& s = from.stats(names[u]);
    s_at[u] = s_off;
    r_at[u] = r_off;
    if (s.sums.defined()) buf[0].narrow(0, s_off, len[u]).copy_(s.sums.reshape({-1}));
    if (s.rows.defined()) buf[0].narrow(0, r_off + rows_before[u] * cols[u], s.rows.numel()).copy_(s.rows.reshape({-1}));
    s_off += len[u];
    r_off += rows_total[u] * cols[u];
  }
  group_->allreduce_sum(buf);
  for (int64_t i = 0; i < k; ++i) {
    const size_t u = static_cast<size_t>(i);
    MetricStats& out = into.stats(names[u]);
    const MetricStats& mine = from.stats(names[u]);
    const at::Device dev = mine.sums.defined()   ? mine.sums.device()
                           : mine.rows.defined() ? mine.rows.device()
                           : out.sums.defined()  ? out.sums.device()
                                                 : at::Device(at::kCPU);
    at::Tensor sums = len[u] > 0 ? buf[0].narrow(0, s_at[u], len[u]).clone().to(dev) : at::Tensor();
    at::Tensor rows = rows_total[u] > 0 ? buf[0].narrow(0, r_at[u], rows_total[u] * cols[u]).reshape({rows_total[u], cols[u]}).clone().to(dev)
                                        : at::Tensor();
    double count = 0;
    for (int64_t r = 0; r < w; ++r) count += counts[(i * w + r) * 4 + 3];
    if (add) {
      if (sums.defined()) out.sums = out.sums.defined() ? out.sums + sums.to(out.sums.device()) : sums;
      if (rows.defined()) out.rows = out.rows.defined() ? at::cat({out.rows, rows.to(out.rows.device())}) : rows;
      out.count += count;
    } else {
      out.sums = sums;
      out.rows = rows;
      out.count = count;
    }
  }
}

void Loop::fit_begin() {
  state_.stop = StopRequest{};
  state_.dirty = false;
  agreed_stop_ = false;
  check_signals();
  emit(Event::fit_begin);
  agree_on_stop();
  mark_boundary();
}

void Loop::epoch_begin() {
  state_.epoch_finished = false;
  state_.stage = Stage::train;
  emit(Event::epoch_begin);
}

void Loop::batch_begin() {
  state_.stage = Stage::train;
  step_values_.clear();
  step_tensors_.clear();
  if (phase_ == Phase::at_boundary) phase_ = Phase::in_step;
  emit(Event::batch_begin);
}

void Loop::after_backward() { emit(Event::after_backward); }
void Loop::before_optimizer_step() {
  // From here on the parameters change: an exception can no longer be rolled back.
  phase_ = Phase::stepped;
  optimizer_hook_seen_ = true;
  emit(Event::before_optimizer_step);
}

void Loop::batch_end() {
  ++state_.batch_in_epoch;
  if (group_) {
    reduce_step_values();
    // Names are declared alike on every rank, so they need no agreement.
    reduce_stats(step_stats_, metrics_.declared_names("train"), metrics_, /*add=*/true);
    step_stats_.reset_accumulators("train");
  }
  // global_step counts optimizer steps: a batch in the middle of a gradient
  // accumulation cycle does not advance it.
  if (!state_.accumulating) {
    ++state_.global_step;
    const bool log_point = log_every_n_steps_ > 0 && state_.global_step % log_every_n_steps_ == 0;
    if (log_point) {
      for (const auto& v : step_values_) metrics_.log(v.name + "_step", v.value, state_.epoch, state_.global_step);
    }
    // Device values are read here: at log points, and when a callback needs
    // the batch loss now (a checkpoint about to be saved).
    bool needed = log_point;
    for (size_t i = 0; i < callbacks_.size() && !needed; ++i) needed = callbacks_[i]->needs_batch_loss(*this);
    if (needed) {
      for (const auto& v : step_tensors_) {
        if (!log_point && !v.name.empty() && v.name != loss_metric_) continue;
        const double x = read_double(v.value);
        if (v.name.empty() || v.name == loss_metric_) state_.batch_loss = x;
        if (log_point && !v.name.empty()) metrics_.log(v.name + "_step", x, state_.epoch, state_.global_step);
      }
    }
  }
  step_values_.clear();
  step_tensors_.clear();
  check_signals();
  emit(Event::batch_end);
  agree_on_stop();
  if (!state_.accumulating) mark_boundary();
}

void Loop::validation_begin() {
  metrics_.reset_accumulators("valid");
  // The training part of the epoch is done: a resume point (it re-runs validation).
  if (phase_ == Phase::at_boundary) mark_boundary();
  phase_ = Phase::in_step;
  state_.stage = Stage::validate;
  emit(Event::validation_begin);
}
void Loop::validation_batch_end() { emit(Event::validation_batch_end); }
void Loop::validation_end() {
  if (group_) {
    reduce_accumulators("valid");
    reduce_stats(metrics_, metrics_.declared_names("valid"), metrics_, /*add=*/false);
  }
  metrics_.flush("valid", state_.epoch, state_.global_step);
  check_signals();
  emit(Event::validation_end);
  agree_on_stop();
  state_.stage = Stage::train;
  // Until epoch_end, an epoch-interval scheduler may step: no roll-back past here.
  phase_ = Phase::stepped;
}

void Loop::mark_stepped() { phase_ = Phase::stepped; }

void Loop::epoch_end() {
  metrics_.flush("train", state_.epoch, state_.global_step);
  state_.epoch_finished = true;
  // An epoch-interval scheduler steps just before or during epoch_end, with or
  // without a validation pass this epoch: from here until the epoch counter
  // moves, a roll-back to the last batch would save a stepped schedule at an
  // unfinished epoch, which a resume would step again.
  phase_ = Phase::stepped;
  check_signals();
  emit(Event::epoch_end);
  agree_on_stop();
  state_.epoch += 1;
  state_.batch_in_epoch = 0;
  state_.epoch_finished = false;
  mark_boundary();
}

void Loop::test_begin() {
  metrics_.reset_accumulators("test");
  if (phase_ == Phase::at_boundary) mark_boundary();
  phase_ = Phase::in_step;
  state_.stage = Stage::test;
  emit(Event::test_begin);
}
void Loop::test_batch_end() { emit(Event::test_batch_end); }
void Loop::test_end() {
  if (group_) {
    reduce_accumulators("test");
    reduce_stats(metrics_, metrics_.declared_names("test"), metrics_, /*add=*/false);
  }
  metrics_.flush("test", state_.epoch, state_.global_step);
  emit(Event::test_end);
  state_.stage = Stage::idle;
  mark_boundary();
}

void Loop::fit_end() {
  if (!state_.stop.interrupt) state_.finished = true;
  state_.stage = Stage::idle;
  emit(Event::fit_end);
  held_.clear();  // the run folder's lock, ...
}

void Loop::exception(std::exception_ptr e) {
  current_exception_ = e;
  state_.dirty = !roll_back_to_boundary();
  emit(Event::exception);
  held_.clear();  // the run folder's lock, ...
}

void Loop::mark_boundary() {
  Boundary& b = boundary_;
  b.valid = true;
  b.epoch = state_.epoch;
  b.global_step = state_.global_step;
  b.batch_in_epoch = state_.batch_in_epoch;
  b.epoch_finished = state_.epoch_finished;
  b.stage = state_.stage;
  b.rng = capture_rng_states(generators_);
  b.accumulators = metrics_.accumulator_state();
  b.stats = metrics_.stats_snapshot();  // never changed in place: no copy needed
  b.values = values_.raw();
  b.metric_rows = metrics_.size();
  b.buffers.clear();
  if (model_) {
    for (const auto& buf : model_->named_buffers(true)) b.buffers.push_back(buf.value().detach().clone());
  }
  phase_ = Phase::at_boundary;
}

bool Loop::roll_back_to_boundary() {
  if (phase_ == Phase::at_boundary && !boundary_.valid) return true;  // nothing ran yet
  if (!boundary_.valid || phase_ == Phase::stepped) return false;
  // In a hand-written loop that never calls before_optimizer_step(), an
  // optimizer step is invisible: a training-stage exception cannot be trusted.
  if (phase_ == Phase::in_step && state_.stage == Stage::train && !optimizer_hook_seen_ && !optimizers_.empty()) {
    return false;
  }
  const Boundary& b = boundary_;
  if (model_) {
    auto buffers = model_->named_buffers(true);
    if (buffers.size() != b.buffers.size()) return false;
    torch::NoGradGuard no_grad;
    size_t i = 0;
    for (auto& buf : buffers) buf.value().copy_(b.buffers[i++]);
  }
  restore_rng_states(b.rng, generators_);
  metrics_.load_accumulator_state(b.accumulators);
  metrics_.restore_stats(b.stats);
  step_stats_.reset_accumulators("train");
  step_tensors_.clear();
  metrics_.truncate(b.metric_rows);
  values_.load(b.values);
  step_values_.clear();
  state_.epoch = b.epoch;
  state_.global_step = b.global_step;
  state_.batch_in_epoch = b.batch_in_epoch;
  state_.epoch_finished = b.epoch_finished;
  state_.stage = b.stage;
  state_.accumulating = false;
  phase_ = Phase::at_boundary;
  return true;
}

void Loop::add_resume_warning(const std::string& text) { pending_warnings_.push_back(text); }

void Loop::flush_resume_warnings() {
  for (const auto& w : pending_warnings_) {
    resume_warnings_.push_back("resumed at epoch " + std::to_string(state_.epoch) + ", step " +
                               std::to_string(state_.global_step) + ": " + w);
  }
  pending_warnings_.clear();
}


}  // namespace cairn
