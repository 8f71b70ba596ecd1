// Reading a checkpoint's keys outside the Loop: run_checkpoint::View and the
// helpers every reader shares (monitor summaries, the weights-only form).
// Layout: cairn/run_checkpoint.h. This file knows the dictionary only: no
// Loop, no run folder (tests/test_layout.cpp).
#include "cairn/run_checkpoint.h"

#include "cairn/checkpoint_file.h"

#include <filesystem>

namespace cairn {

namespace {
//! A dict key as text (the pickle reader allows int keys too).
std::string key_text(const Value& k) { return k.is_string() ? k.to_string() : std::to_string(k.to_int()); }
}  // namespace

namespace run_checkpoint {

Value summary(const std::string& monitor, const std::string& mode, std::optional<double> best,
              const std::string& best_path) {
  Value s = Value::dict();
  s.set("monitor", monitor);
  s.set("mode", mode);
  s.set("best", best ? Value(*best) : Value());
  s.set("best_path", best_path);
  return s;
}

std::vector<MonitorSummary> monitor_summaries(const Value& checkpoint, const std::string& file) {
  std::vector<MonitorSummary> out;
  const Value* cbs = checkpoint.find("callbacks");
  if (!cbs || !cbs->is_dict()) return out;
  for (size_t i = 0; i < cbs->keys().size(); ++i) {
    const Value& state = cbs->values()[i];
    if (!state.is_dict()) continue;
    MonitorSummary m;
    m.callback = key_text(cbs->keys()[i]);
    const Value* s = state.find("summary");
    // Files written before summaries existed: the Checkpoint and EarlyStopping callbacks' own keys.
    const Value& src = s && s->is_dict() ? *s : state;
    const Value* monitor = src.find("monitor");
    if (!monitor || !monitor->is_string() || monitor->to_string().empty()) continue;
    m.monitor = monitor->to_string();
    if (const Value* mode = src.find("mode"); mode && mode->is_string()) m.mode = mode->to_string();
    const Value* best = src.find("best");
    if (!s) {
      if (const Value* b = state.find("best_model_score")) best = b;
    }
    if (best && best->is_number()) m.best = best->to_double();
    const Value* path = src.find(s ? "best_path" : "best_model_path");
    if (path && path->is_string()) m.best_path = path->to_string();
    // A name in the folder of the file that keeps it (full paths in files of
    // cairn <= 0.1: the same name there, so a copied run names its own file).
    if (!file.empty() && !m.best_path.empty()) {
      m.best_path = (std::filesystem::path(file).parent_path() / std::filesystem::path(m.best_path).filename()).string();
    }
    out.push_back(std::move(m));
  }
  return out;
}

Value weights_only(const Value& checkpoint) {
  Value slim = Value::dict();
  for (const char* key : {"format_version", "cairn_version", "epoch", "global_step", "batch_in_epoch", "state_dict",
                          "hyper_parameters", "values"}) {
    slim.set(key, checkpoint.at(key));
  }
  if (const Value* holds = checkpoint.find("model_weights")) slim.set("model_weights", *holds);
  // The weights its scores were measured with (an EMA's), when not the model's own.
  if (const Value* with = checkpoint.find("evaluate_with"); with && with->is_string()) {
    if (const Value* w = checkpoint.find(with->to_string())) {
      slim.set("evaluate_with", *with);
      slim.set(with->to_string(), *w);
    }
  }
  // What the run's monitors say (best value, best file by name): a weights-only
  // run is evaluated by `--ckpt best` as any other (its callbacks' states, which
  // only a resume needs, stay out).
  if (const Value* cbs = checkpoint.find("callbacks"); cbs && cbs->is_dict()) {
    Value kept = Value::dict();
    for (size_t i = 0; i < cbs->keys().size(); ++i) {
      const Value& state = cbs->values()[i];
      const Value* summary = state.is_dict() ? state.find("summary") : nullptr;
      if (!summary) continue;
      Value only = Value::dict();
      only.set("summary", *summary);
      kept.set(cbs->keys()[i], std::move(only));
    }
    if (kept.size() > 0) slim.set("callbacks", std::move(kept));
  }
  slim.set("weights_only", true);
  return slim;
}

bool is_weights_only(const Value& checkpoint) { return checkpoint.is_dict() && checkpoint.contains("weights_only"); }

}  // namespace run_checkpoint

namespace run_checkpoint {

View::View(const Value& checkpoint, std::string file) : c_(&checkpoint), file_(std::move(file)) {
  if (!checkpoint.is_dict()) {
    throw CheckpointError((file_.empty() ? std::string("the checkpoint") : file_) + " does not hold a dict (it holds " +
                          checkpoint.kind_name() + ")");
  }
}

const Value& View::need(const char* key) const {
  const Value* v = c_->find(key);
  if (!v) throw CheckpointError((file_.empty() ? std::string("the checkpoint") : file_) + " has no '" + key + "'");
  return *v;
}

namespace {
int64_t as_int(const Value& v, const std::string& where) {
  if (!v.is_int()) throw CheckpointError(where + " is " + v.kind_name() + ", not an int");
  return v.to_int();
}
}  // namespace

int64_t View::epoch() const { return as_int(need("epoch"), "'epoch'"); }
int64_t View::global_step() const { return as_int(need("global_step"), "'global_step'"); }
int64_t View::batch_in_epoch() const { return as_int(need("batch_in_epoch"), "'batch_in_epoch'"); }
int64_t View::format_version() const { return as_int(need("format_version"), "'format_version'"); }

const Value* View::loop_section() const {
  const Value* l = c_->find("loop");
  return l && l->is_dict() ? l : nullptr;
}

bool View::finished() const {
  const Value* l = loop_section();
  const Value* f = l ? l->find("finished") : nullptr;
  return f && f->is_bool() && f->to_bool();
}

std::string View::name() const {
  const Value* hp = config();
  const Value* n = hp && hp->is_dict() ? hp->find("name") : nullptr;
  return n && n->is_string() ? n->to_string() : "";
}

const Value* View::config() const {
  const Value* hp = c_->find("hyper_parameters");
  return hp && !hp->is_none() ? hp : nullptr;
}

int64_t View::world_size() const {
  const Value* l = loop_section();
  const Value* w = l ? l->find("world_size") : nullptr;
  return w && w->is_int() ? w->to_int() : 0;
}

int64_t View::global_batch_size() const {
  const Value* l = loop_section();
  const Value* g = l ? l->find("global_batch_size") : nullptr;
  return g && g->is_int() ? g->to_int() : 0;
}

std::string View::evaluated_with() const {
  const Value* with = c_->find("evaluate_with");
  return with && with->is_string() ? with->to_string() : "state_dict";
}

std::string View::evaluated_kind() const {
  if (evaluated_with() == "ema_state_dict") return "ema";
  const Value* holds = c_->find("model_weights");
  if (holds && holds->is_string() && holds->to_string() == "swa") return "swa";
  return "model";
}

std::string View::describe_evaluated() const {
  const std::string kind = evaluated_kind();
  if (kind == "ema") return "the EMA average (ema_state_dict)";
  if (kind == "swa") return "the SWA average (state_dict)";
  return "the trained weights (state_dict)";
}

Value View::evaluated_weights() const { return weights(evaluated_with()); }

bool View::holds(const std::string& key) const {
  const Value* w = c_->find(key);
  return w && w->is_dict();
}

Value View::weights(const std::string& key) const {
  const std::string where = file_.empty() ? std::string("the checkpoint") : file_;
  const Value* sd = c_->find("state_dict");
  if (!sd || !sd->is_dict()) throw CheckpointError(where + " holds no state_dict");
  if (key == "state_dict") return *sd;
  const Value* other = c_->find(key);
  if (!other || !other->is_dict()) {
    throw CheckpointError(where + (key == evaluated_with() ? ": evaluate_with names '" + key + "', which it does not hold"
                                                            : " holds no " + key));
  }
  // Laid over the model's own: an EMA's average holds parameters and buffers
  // (one saved by an older cairn, parameters only: its buffers stay the
  // model's); SWA's holds parameters (its buffers were recomputed in place).
  Value merged = *sd;
  for (size_t i = 0; i < other->keys().size(); ++i) merged.set(other->keys()[i], other->values()[i]);
  return merged;
}

std::vector<View::Series> View::series() const {
  std::vector<Series> out;
  const Value* m = c_->find("metrics");
  if (!m) return out;
  if (!m->is_dict()) throw CheckpointError("'metrics' is " + std::string(m->kind_name()) + ", not a dict");
  for (size_t i = 0; i < m->keys().size(); ++i) {
    Series s;
    s.name = key_text(m->keys()[i]);
    const Value& one = m->values()[i];
    try {
      s.epoch = one.at("epoch").to_int_list();
      s.step = one.at("step").to_int_list();
      s.value = one.at("value").to_double_list();
    } catch (const std::exception& e) {
      throw CheckpointError("metrics['" + s.name + "']: " + e.what());
    }
    if (s.epoch.size() != s.value.size() || s.step.size() != s.value.size()) {
      throw CheckpointError("metrics['" + s.name + "']: epoch, step and value differ in length (" +
                            std::to_string(s.epoch.size()) + ", " + std::to_string(s.step.size()) + ", " +
                            std::to_string(s.value.size()) + ")");
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::pair<int64_t, int64_t>> View::resumes() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  const Value* l = loop_section();
  const Value* r = l ? l->find("resumes") : nullptr;
  if (!r || !r->is_list()) return out;
  for (const auto& p : r->items()) {
    std::vector<int64_t> pair;
    try {
      pair = p.to_int_list();
    } catch (const std::exception& e) {
      throw CheckpointError(std::string("loop.resumes: ") + e.what());
    }
    if (pair.size() != 2) throw CheckpointError("loop.resumes holds an entry of " + std::to_string(pair.size()) + " values, not 2");
    out.emplace_back(pair[0], pair[1]);
  }
  return out;
}

}  // namespace run_checkpoint
}  // namespace cairn
