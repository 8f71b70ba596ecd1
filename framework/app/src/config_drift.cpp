#include "cairn/config_drift.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <sstream>

namespace cairn {

namespace {
bool scalar(const Value& v) { return !v.is_list() && !v.is_dict(); }

std::string text(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::None: return "null";
    case Value::Kind::Bool: return v.to_bool() ? "true" : "false";
    case Value::Kind::Int: return std::to_string(v.to_int());
    case Value::Kind::Double: {
      std::ostringstream os;
      os.precision(10);
      os << v.to_double();
      return os.str();
    }
    case Value::Kind::String: return v.to_string();
    case Value::Kind::List: {
      std::string s = "[";
      for (size_t i = 0; i < v.items().size(); ++i) s += (i ? ", " : "") + text(v.items()[i]);
      return s + "]";
    }
    default: return v.repr();
  }
}

//! Leaves by dotted path; lists of scalars are one leaf, lists of maps are indexed.
void flatten(const Value& v, const std::string& path, std::map<std::string, std::string>& out) {
  if (v.is_dict()) {
    if (v.keys().empty() && !path.empty()) out[path] = "{}";
    for (size_t i = 0; i < v.keys().size(); ++i) {
      const Value& k = v.keys()[i];
      const std::string name = k.is_string() ? k.to_string() : std::to_string(k.to_int());
      flatten(v.values()[i], path.empty() ? name : path + "." + name, out);
    }
  } else if (v.is_list() && !std::all_of(v.items().begin(), v.items().end(), scalar)) {
    for (size_t i = 0; i < v.items().size(); ++i) flatten(v.items()[i], path + "[" + std::to_string(i) + "]", out);
  } else {
    out[path] = text(v);
  }
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

std::string unsafe_reason(const std::string& key) {
  if (key == "seed") return "the seed fixes the sample order and the validation split";
  // Worker threads change who makes a batch, never what it holds.
  if (key == "data.workers") return "";
  if (starts_with(key, "data.") || key == "data") return "the data and the saved position in its sample order";
  if (starts_with(key, "model.") || key == "model") return "the model the checkpoint's weights belong to";
  if (key == "optimizer.fused") return "fused steps round differently from the per-parameter step the run took so far";
  // Bit-identical on the CPU (checked), but CUDA's list kernels may round
  // differently: the config does not say where the run trains.
  if (key == "optimizer.foreach") return "on CUDA the list kernels may round differently from the step the run took so far";
  if (starts_with(key, "optimizer.") || key == "optimizer") return "the checkpoint's optimizer state and options would override it";
  if (starts_with(key, "scheduler.") || key == "scheduler") return "the learning-rate schedule the run follows";
  if (starts_with(key, "loss.") || key == "loss") return "what the steps minimise";
  if (starts_with(key, "metrics")) return "the running statistics the checkpoint holds belong to these metrics";
  if (key == "trainer.accumulate_grad_batches") return "what a step and the saved position mean";
  if (key == "trainer.precision") return "the numerics of every step (and a 16-mixed run's loss scale)";
  if (starts_with(key, "trainer.gradient_clip")) return "the update rule";
  if (key == "trainer.freeze") return "the optimizer's parameter groups, which the checkpoint's optimizer state follows";
  return "";
}

std::string get(const std::map<std::string, std::string>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() ? "null" : it->second;
}

}  // namespace

std::string ConfigChange::line() const { return key + ": " + old_value + " -> " + new_value; }

namespace {
//! A key naming an input file (data.path, model.path, model.init_from, ...).
bool is_path_key(const std::string& k) {
  for (const char* end : {".path", ".valid_path", ".test_path", ".root", ".init_from"}) {
    const std::string e(end);
    if (k.size() > e.size() && k.compare(k.size() - e.size(), e.size(), e) == 0) return true;
  }
  return false;
}
}  // namespace

std::vector<ConfigChange> diff_configs(const Value& saved, const Value& current) {
  std::map<std::string, std::string> a, b;
  flatten(saved, "", a);
  flatten(current, "", b);
  // Runs saved before the loss and metrics sections existed trained with
  // cross-entropy and measured accuracy: what the defaults say now.
  auto has_prefix = [&](const std::string& p) {
    return std::any_of(a.begin(), a.end(), [&](const auto& kv) { return starts_with(kv.first, p); });
  };
  if (saved.is_dict() && !has_prefix("loss")) {
    a["loss.name"] = "cross_entropy";
    a["loss.label_smoothing"] = "0";
    a["loss.weight"] = "[]";
    a["loss.ignore_index"] = "-100";
  }
  if (saved.is_dict() && !has_prefix("metrics")) a["metrics[0].name"] = "accuracy";
  if (saved.is_dict() && has_prefix("trainer.") && !a.count("trainer.precision")) a["trainer.precision"] = "32";
  if (saved.is_dict() && has_prefix("trainer.") && !a.count("trainer.cuda_graphs")) a["trainer.cuda_graphs"] = "false";
  // Runs saved before trainer.freeze existed froze nothing.
  if (saved.is_dict() && has_prefix("trainer.") && !a.count("trainer.freeze") && b.count("trainer.freeze")) {
    a["trainer.freeze"] = b.at("trainer.freeze") == "[]" ? "[]" : "null";
  }
  // Runs saved before the step modes existed took the per-parameter step.
  const std::string saved_optimizer = get(a, "optimizer.name");
  if ((saved_optimizer == "adam" || saved_optimizer == "adamw") && !a.count("optimizer.fused")) a["optimizer.fused"] = "false";
  std::vector<std::string> keys;
  for (const auto& kv : a) keys.push_back(kv.first);
  for (const auto& kv : b) {
    if (!a.count(kv.first)) keys.push_back(kv.first);
  }
  std::sort(keys.begin(), keys.end());
  std::vector<ConfigChange> out;
  for (const auto& k : keys) {
    ConfigChange c{k, get(a, k), get(b, k), true, ""};
    if (c.old_value == c.new_value) continue;
    // The same file, named another way (a relative path saved before paths
    // were resolved from the config's folder, or a moved working directory).
    std::error_code ec;
    if (is_path_key(k) && c.old_value != "null" && std::filesystem::equivalent(c.old_value, c.new_value, ec) && !ec) continue;
    c.why = unsafe_reason(k);
    // Weight averaging added or removed: its averages and counts are state
    // the run carries (removing it is also refused as unclaimed state).
    if (starts_with(k, "callbacks[") && k.size() > 5 && k.compare(k.size() - 5, 5, ".name") == 0) {
      auto averaging = [](const std::string& n) { return n == "ema" || n == "swa"; };
      const std::string which = averaging(c.new_value) ? c.new_value : averaging(c.old_value) ? c.old_value : "";
      if (!which.empty()) c.why = "the " + which + " callback's averaged weights are part of the run's state";
    }
    // An explicit schedule length is the user's own decision (and the way to
    // extend a run whose schedule was derived from max_epochs); the resumed
    // run prints the learning rate it continues at.
    if (k == "scheduler.total_steps") c.why.clear();

    c.safe = c.why.empty();
    if (k == "trainer.max_epochs") {
      const std::string sched = get(b, "scheduler.name");
      if ((sched == "cosine" || sched == "one_cycle") && get(b, "scheduler.total_steps") == "null") {
        c.safe = false;
        c.why = "the " + sched + " schedule's length was derived from trainer.max_epochs; set scheduler.total_steps "
                "to choose its length explicitly";
      }
    }
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace cairn
