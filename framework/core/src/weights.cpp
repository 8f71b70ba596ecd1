// Model weights in and out of the Value tree: a module's state_dict, loading
// one (strict or not, every mismatch named), and starting from a weights file
// (a torch.save state_dict or a cairn checkpoint). Declared in cairn/loop.h.
#include "cairn/checkpoint_file.h"
#include "cairn/finetune.h"
#include "cairn/loop.h"

#include <torch/torch.h>

#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

namespace cairn {

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

namespace {
//! The weights of a file: a torch.save state_dict, or a cairn checkpoint's.
Value weights_in(const std::string& path) {
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
  return v;
}

std::regex compile(const std::string& pattern, const char* what) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw std::invalid_argument(std::string(what) + " '" + pattern + "' is not a valid regex: " + e.what());
  }
}

std::string joined(const std::vector<std::string>& names, size_t at_most = 6) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < at_most; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > at_most) out += ", ... (" + std::to_string(names.size() - at_most) + " more)";
  return out;
}
}  // namespace

void load_weights(torch::nn::Module& model, const std::string& path, bool strict) {
  load_model_state(model, weights_in(path), strict);
}

std::string WeightsReport::summary() const {
  std::ostringstream os;
  os << "loaded " << loaded.size() << " tensor(s)";
  const size_t skipped = excluded.size() + unexpected.size() + mismatched.size();
  if (skipped > 0) {
    os << "; skipped " << skipped << " (";
    std::string parts;
    if (!excluded.empty()) parts += "excluded: " + joined(excluded);
    if (!unexpected.empty()) parts += std::string(parts.empty() ? "" : "; ") + "not in the model: " + joined(unexpected);
    if (!mismatched.empty()) parts += std::string(parts.empty() ? "" : "; ") + "other shape: " + joined(mismatched);
    os << parts << ")";
  }
  if (!left_new.empty()) os << "; left new " << left_new.size() << " (" << joined(left_new) << ")";
  return os.str();
}

WeightsReport load_weights(torch::nn::Module& model, const std::string& path, const WeightsOptions& options) {
  std::vector<std::pair<std::regex, std::string>> rename;
  for (const auto& [from, to] : options.rename) rename.emplace_back(compile(from, "rename pattern"), to);
  std::vector<std::regex> exclude;
  for (const auto& e : options.exclude) exclude.push_back(compile(e, "exclude pattern"));
  const Value file = weights_in(path);
  std::map<std::string, at::Tensor> targets;
  std::vector<std::string> order;
  for (const auto& p : model.named_parameters(true)) targets[p.key()] = p.value(), order.push_back(p.key());
  for (const auto& b : model.named_buffers(true)) targets[b.key()] = b.value(), order.push_back(b.key());
  WeightsReport r;
  Value taken = Value::dict();
  std::set<std::string> provided;
  for (size_t i = 0; i < file.keys().size(); ++i) {
    const Value& k = file.keys()[i];
    std::string name = k.is_string() ? k.to_string() : std::to_string(k.to_int());
    for (const auto& [re, to] : rename) name = std::regex_replace(name, re, to);
    bool skip = false;
    for (const auto& re : exclude) skip = skip || std::regex_search(name, re);
    if (skip) {
      r.excluded.push_back(name);
      continue;
    }
    const Value& v = file.values()[i];
    auto t = targets.find(name);
    if (t == targets.end() || !v.is_tensor()) {
      r.unexpected.push_back(name);
      continue;
    }
    if (v.to_tensor().sizes() != t->second.sizes()) {
      std::ostringstream os;
      os << name << " (file " << v.to_tensor().sizes() << ", model " << t->second.sizes() << ")";
      r.mismatched.push_back(os.str());
      continue;
    }
    if (!provided.insert(name).second) {
      throw CheckpointMismatch(path + ": two of its names become '" + name + "' after rename");
    }
    taken.set(name, v);
    r.loaded.push_back(name);
  }
  for (const auto& name : order) {
    if (!provided.count(name)) r.left_new.push_back(name);
  }
  // strict: everything not excluded must fit (an excluded name the model has is left new on purpose).
  std::vector<std::string> missing;
  for (const auto& name : r.left_new) {
    if (std::find(r.excluded.begin(), r.excluded.end(), name) == r.excluded.end()) missing.push_back(name);
  }
  if (options.strict && (!r.unexpected.empty() || !r.mismatched.empty() || !missing.empty())) {
    std::ostringstream os;
    os << path << ": the weights do not match the model (strict: true):";
    auto list = [&os](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      os << "\n  " << what << ":";
      for (const auto& n : names) os << "\n    " << n;
    };
    list("missing in the file", missing);
    list("unexpected in the file", r.unexpected);
    list("shape mismatch", r.mismatched);
    os << "\n  (model.init_from: {strict: false} loads what fits and reports the rest; exclude and rename select names)";
    throw CheckpointMismatch(os.str());
  }
  if (r.loaded.empty()) {
    throw CheckpointMismatch(path + ": nothing in the file fits the model (" + r.summary() +
                             "): check rename and exclude against the names the file holds");
  }
  load_model_state(model, taken, /*strict=*/false);
  return r;
}

std::vector<std::string> freeze(torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                                const std::vector<std::string>& patterns, double lr) {
  if (patterns.empty()) return {};
  std::vector<std::regex> res;
  for (const auto& p : patterns) res.push_back(compile(p, "freeze pattern"));
  std::vector<bool> used(patterns.size(), false);
  std::vector<std::string> names;
  std::vector<at::Tensor> frozen;
  for (const auto& p : model.named_parameters(true)) {
    bool match = false;
    for (size_t i = 0; i < res.size(); ++i) {
      if (std::regex_search(p.key(), res[i])) used[i] = match = true;
    }
    if (!match) continue;
    names.push_back(p.key());
    frozen.push_back(p.value());
  }
  for (size_t i = 0; i < patterns.size(); ++i) {
    if (used[i]) continue;
    std::vector<std::string> all;
    for (const auto& p : model.named_parameters(true)) all.push_back(p.key());
    throw std::invalid_argument("freeze pattern '" + patterns[i] + "' matches no parameter; the model's are " + joined(all, 12));
  }
  if (frozen.size() == model.parameters().size()) {
    throw std::invalid_argument("freeze patterns match every parameter: nothing would train");
  }
  auto& groups = optimizer.param_groups();
  if (groups.empty()) throw std::invalid_argument("freeze: the optimizer has no parameter group");
  // Out of their groups, into one of their own (at the end) with its own rate.
  for (auto& g : groups) {
    auto& ps = g.params();
    ps.erase(std::remove_if(ps.begin(), ps.end(),
                            [&](const at::Tensor& t) {
                              for (const auto& f : frozen) {
                                if (f.is_same(t)) return true;
                              }
                              return false;
                            }),
             ps.end());
  }
  std::unique_ptr<torch::optim::OptimizerOptions> o = groups.front().options().clone();
  o->set_lr(lr);
  optimizer.add_param_group(torch::optim::OptimizerParamGroup(frozen, std::move(o)));
  for (auto& t : frozen) t.requires_grad_(false);
  return names;
}

}  // namespace cairn
