#include "cairn/loop.h"

#include "cairn/checkpoint_file.h"
#include "cairn/optim_state.h"
#include "cairn/rng.h"
#include "cairn/schedulers.h"
#include "cairn/signals.h"

#include <torch/torch.h>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <sys/stat.h>

#ifndef CAIRN_VERSION
#define CAIRN_VERSION "0.0.0"
#endif

namespace cairn {

namespace fs = std::filesystem;

constexpr int64_t kFormatVersion = 1;

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
  optimizers_.push_back(&optimizer);
}
void Loop::track(Scheduler& scheduler) {
  for (auto* s : schedulers_) {
    if (s == &scheduler) return;
  }
  schedulers_.push_back(&scheduler);
}
void Loop::track(const std::string& key, Stateful& object) { objects_[key] = &object; }
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

void Loop::log(const std::string& name, double value) {
  metrics_.log(name, value, state_.epoch, state_.global_step);
}

void Loop::log_step(const std::string& name, double value, double weight) {
  metrics_.accumulate(name, value, weight);
  step_values_.emplace_back(name, value);
}

void Loop::fit_begin() {
  state_.stop = StopRequest{};
  check_signals();
  emit(Event::fit_begin);
}

void Loop::epoch_begin() {
  state_.epoch_finished = false;
  state_.stage = Stage::train;
  emit(Event::epoch_begin);
}

void Loop::batch_begin() {
  state_.stage = Stage::train;
  step_values_.clear();
  emit(Event::batch_begin);
}

void Loop::after_backward() { emit(Event::after_backward); }
void Loop::before_optimizer_step() { emit(Event::before_optimizer_step); }

void Loop::batch_end() {
  ++state_.batch_in_epoch;
  // global_step counts optimizer steps: a batch in the middle of a gradient
  // accumulation cycle does not advance it.
  if (!state_.accumulating) {
    ++state_.global_step;
    if (log_every_n_steps_ > 0 && state_.global_step % log_every_n_steps_ == 0) {
      for (const auto& kv : step_values_) metrics_.log(kv.first + "_step", kv.second, state_.epoch, state_.global_step);
    }
  }
  step_values_.clear();
  check_signals();
  emit(Event::batch_end);
}

void Loop::validation_begin() {
  state_.stage = Stage::validate;
  metrics_.reset_accumulators("valid");
  emit(Event::validation_begin);
}
void Loop::validation_batch_end() { emit(Event::validation_batch_end); }
void Loop::validation_end() {
  metrics_.flush("valid", state_.epoch, state_.global_step);
  check_signals();
  emit(Event::validation_end);
  state_.stage = Stage::train;
}

void Loop::epoch_end() {
  metrics_.flush("train", state_.epoch, state_.global_step);
  state_.epoch_finished = true;
  check_signals();
  emit(Event::epoch_end);
  state_.epoch += 1;
  state_.batch_in_epoch = 0;
  state_.epoch_finished = false;
}

void Loop::test_begin() {
  state_.stage = Stage::test;
  metrics_.reset_accumulators("test");
  emit(Event::test_begin);
}
void Loop::test_batch_end() { emit(Event::test_batch_end); }
void Loop::test_end() {
  metrics_.flush("test", state_.epoch, state_.global_step);
  emit(Event::test_end);
  state_.stage = Stage::idle;
}

void Loop::fit_end() {
  if (!state_.stop.interrupt) state_.finished = true;
  state_.stage = Stage::idle;
  emit(Event::fit_end);
}

void Loop::exception(std::exception_ptr e) {
  current_exception_ = e;
  emit(Event::exception);
}

// ---------------------------------------------------------------------------
Value model_state(const torch::nn::Module& model) {
  Value d = Value::dict();
  for (const auto& p : model.named_parameters(true)) d.set(p.key(), p.value().detach());
  for (const auto& b : model.named_buffers(true)) d.set(b.key(), b.value().detach());
  return d;
}

void load_model_state(torch::nn::Module& model, const Value& state_dict, bool strict) {
  std::vector<std::string> missing, mismatched;
  std::vector<std::pair<std::string, at::Tensor>> targets;
  for (const auto& p : model.named_parameters(true)) targets.emplace_back(p.key(), p.value());
  for (const auto& b : model.named_buffers(true)) targets.emplace_back(b.key(), b.value());
  for (const auto& t : targets) {
    const Value* v = state_dict.find(t.first);
    if (!v || !v->is_tensor()) {
      missing.push_back(t.first);
    } else if (v->to_tensor().sizes() != t.second.sizes()) {
      std::ostringstream os;
      os << t.first << " (checkpoint " << v->to_tensor().sizes() << ", model " << t.second.sizes() << ")";
      mismatched.push_back(os.str());
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& k : state_dict.keys()) {
    const std::string name = k.is_string() ? k.to_string() : std::to_string(k.to_int());
    bool known = false;
    for (const auto& t : targets) known = known || t.first == name;
    if (!known) unexpected.push_back(name);
  }
  if (!mismatched.empty() || (strict && (!missing.empty() || !unexpected.empty()))) {
    std::ostringstream os;
    os << "the weights do not match the model:";
    auto list = [&os](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      os << "\n  " << what << ":";
      for (const auto& n : names) os << "\n    " << n;
    };
    list("missing in the checkpoint", missing);
    list("unexpected in the checkpoint", unexpected);
    list("shape mismatch", mismatched);
    throw CheckpointMismatch(os.str());
  }
  torch::NoGradGuard no_grad;
  for (auto& t : targets) {
    if (const Value* v = state_dict.find(t.first)) {
      if (v->is_tensor()) t.second.copy_(v->to_tensor());
    }
  }
}

void load_weights(torch::nn::Module& model, const std::string& path, bool strict) {
  ReadOptions ro;
  ro.require_checksum = false;
  Value v = read_checkpoint(path, ro);
  if (!v.is_dict()) throw CheckpointError(path + " does not hold a dict of tensors");
  if (const Value* sd = v.find("state_dict")) {
    if (sd->is_dict()) {
      Value inner = *sd;  // copy first: *sd lives inside v
      v = std::move(inner);
    }
  }
  load_model_state(model, v, strict);
}

Value Loop::make_checkpoint(bool emit_event) {
  pending_ = Value::dict();
  Value& c = pending_;
  c.set("format_version", kFormatVersion);
  c.set("cairn_version", CAIRN_VERSION);
  c.set("epoch", state_.resume_epoch());
  c.set("global_step", state_.global_step);
  c.set("batch_in_epoch", state_.resume_batch());
  c.set("state_dict", model_ ? model_state(*model_) : Value::dict());
  Value opts = Value::list();
  for (auto* o : optimizers_) opts.push_back(optimizer_state_dict(*o));
  c.set("optimizer_states", std::move(opts));
  Value scheds = Value::list();
  for (auto* s : schedulers_) scheds.push_back(s->state_dict());
  c.set("lr_schedulers", std::move(scheds));
  c.set("rng_states", capture_rng_states(generators_));
  c.set("metrics", metrics_.state_dict());
  c.set("values", values_.raw());
  Value cbs = Value::dict();
  for (const auto& cb : callbacks_) {
    Value s = cb->state_dict();
    if (!s.is_none()) cbs.set(cb->key(), std::move(s));
  }
  c.set("callbacks", std::move(cbs));
  c.set("hyper_parameters", hyper_parameters_.is_none() ? Value::dict() : hyper_parameters_);
  Value loop = Value::dict();
  loop.set("finished", state_.finished);
  loop.set("stop_reason", state_.stop.requested ? Value(state_.stop.reason) : Value());
  loop.set("threads", static_cast<int64_t>(at::get_num_threads()));
  loop.set("accumulators", metrics_.accumulator_state());
  Value resumes = Value::list();
  for (const auto& r : resume_points_) resumes.push_back(Value(std::vector<int64_t>{r.first, r.second}));
  loop.set("resumes", std::move(resumes));
  Value objects = Value::dict();
  for (const auto& kv : objects_) objects.set(kv.first, kv.second->state_dict());
  loop.set("objects", std::move(objects));
  c.set("loop", std::move(loop));
  if (emit_event) emit(Event::save_checkpoint);
  Value out = std::move(pending_);
  pending_ = Value();
  return out;
}

void Loop::load_checkpoint(const Value& c, const std::string& source) {
  const std::string from = source.empty() ? std::string("the checkpoint") : source;
  const int64_t version = c.at("format_version").to_int();
  if (version > kFormatVersion) {
    throw CheckpointMismatch(from + " has format_version " + std::to_string(version) +
                             "; this cairn reads up to " + std::to_string(kFormatVersion));
  }
  if (model_) load_model_state(*model_, c.at("state_dict"), true);
  const Value& opts = c.at("optimizer_states");
  if (opts.size() != optimizers_.size()) {
    throw CheckpointMismatch(from + " has " + std::to_string(opts.size()) + " optimizer(s); this run has " +
                             std::to_string(optimizers_.size()));
  }
  try {
    for (size_t i = 0; i < optimizers_.size(); ++i) load_optimizer_state_dict(*optimizers_[i], opts.items()[i]);
    const Value& scheds = c.at("lr_schedulers");
    if (scheds.size() != schedulers_.size()) {
      throw CheckpointMismatch(from + " has " + std::to_string(scheds.size()) + " scheduler(s); this run has " +
                               std::to_string(schedulers_.size()));
    }
    for (size_t i = 0; i < schedulers_.size(); ++i) schedulers_[i]->load_state_dict(scheds.items()[i]);
  } catch (const CheckpointMismatch&) {
    throw;
  } catch (const std::exception& e) {
    throw CheckpointMismatch(from + ": " + e.what());
  }
  restore_rng_states(c.at("rng_states"), generators_);
  metrics_.load_state_dict(c.at("metrics"));
  values_.load(c.at("values"));
  const Value& cbs = c.at("callbacks");
  for (const auto& cb : callbacks_) {
    if (const Value* s = cbs.find(cb->key())) cb->load_state_dict(*s);
  }
  const Value& loop = c.at("loop");
  metrics_.load_accumulator_state(loop.at("accumulators"));
  resume_points_.clear();
  for (const auto& r : loop.at("resumes").items()) {
    const auto v = r.to_int_list();
    resume_points_.emplace_back(v.at(0), v.at(1));
  }
  if (const Value* objects = loop.find("objects")) {
    for (const auto& kv : objects_) {
      if (const Value* s = objects->find(kv.first)) kv.second->load_state_dict(*s);
    }
  }
  state_.epoch = c.at("epoch").to_int();
  state_.batch_in_epoch = c.at("batch_in_epoch").to_int();
  state_.global_step = c.at("global_step").to_int();
  state_.epoch_finished = false;
  state_.finished = loop.at("finished").to_bool();
  state_.stop = StopRequest{};
  if (state_.finished && loop.at("stop_reason").is_string()) state_.stop.reason = loop.at("stop_reason").to_string();
  const int64_t threads = loop.at("threads").to_int();
  if (threads != at::get_num_threads()) {
    std::cerr << "cairn: warning: " << from << " was written with " << threads << " intra-op thread(s), this run uses "
              << at::get_num_threads() << "; the resumed run will not be bitwise identical to an uninterrupted one\n";
  }
  if (!state_.finished) resume_points_.emplace_back(state_.epoch, state_.global_step);
  emit(Event::load_checkpoint);
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<fs::file_time_type, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".ckpt" && e.is_regular_file(ec)) {
      found.emplace_back(e.last_write_time(ec), e.path().string());
    }
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first > b.first;
    // Same instant: prefer last.ckpt, then by name for determinism.
    const bool al = fs::path(a.second).filename() == "last.ckpt";
    const bool bl = fs::path(b.second).filename() == "last.ckpt";
    if (al != bl) return al;
    return a.second < b.second;
  });
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

ResumeInfo Loop::resume(const std::string& path) {
  ResumeInfo info;
  std::error_code ec;
  std::vector<std::string> candidates;
  const bool is_dir = fs::is_directory(path, ec);
  if (is_dir) {
    candidates = list_checkpoints(path);
    if (candidates.empty()) return info;
  } else if (!fs::exists(path, ec)) {
    // A run directory that does not exist yet is a fresh start; a missing file is an error.
    if (fs::path(path).extension() != ".ckpt") return info;
    throw CheckpointError("checkpoint " + path + " does not exist");
  } else {
    candidates.push_back(path);
  }
  for (const auto& file : candidates) {
    Value c;
    try {
      c = read_checkpoint(file);
      if (c.is_dict() && c.contains("weights_only")) {
        throw CheckpointError("checkpoint " + file + " holds weights only (save_weights_only) and cannot resume a run");
      }
    } catch (const CheckpointError& e) {
      if (!is_dir) throw;
      info.skipped.push_back(e.what());
      std::cerr << "cairn: warning: skipping " << e.what() << "\n";
      continue;
    }
    load_checkpoint(c, file);
    info.resumed = true;
    info.path = file;
    info.epoch = state_.epoch;
    info.batch_in_epoch = state_.batch_in_epoch;
    info.global_step = state_.global_step;
    info.finished = state_.finished;
    return info;
  }
  throw CheckpointError("no usable checkpoint in " + path + ": all " + std::to_string(candidates.size()) +
                        " file(s) are corrupt");
}

}  // namespace cairn
