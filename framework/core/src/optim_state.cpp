#include "cairn/optim_state.h"

#include "optim/state_key.h"

#include <torch/optim.h>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <type_traits>

namespace cairn {

namespace {
namespace optim = torch::optim;

using detail::state_key;

Value step_value(int64_t step) {
  // PyTorch keeps `step` as a float tensor; float64 stays exact up to 2^53.
  return Value(torch::tensor(static_cast<double>(step), torch::kFloat64));
}
//! A saved step count: one finite, non-negative whole number (PyTorch saves a
//! float tensor), never cast from whatever a file holds.
int64_t step_from(const Value& v) {
  double d = 0.0;
  if (v.is_tensor()) {
    const at::Tensor& t = v.to_tensor();
    if (t.numel() != 1 || t.is_complex()) {
      throw std::runtime_error("optimizer state 'step' holds " + std::to_string(t.numel()) + " values, not one count");
    }
    d = t.item<double>();
  } else {
    d = v.to_double();
  }
  if (!std::isfinite(d) || d < 0 || d > 9007199254740992.0 || d != std::floor(d)) {
    std::ostringstream os;
    os << "optimizer state 'step' is " << d << ", not a count of steps";
    throw std::runtime_error(os.str());
  }
  return static_cast<int64_t>(d);
}

// Saved tensors live on the CPU; put them where the parameter lives, in its
// dtype (as PyTorch's Optimizer.load_state_dict casts floating state).
at::Tensor like_param(const Value& v, const at::Tensor& p, const char* what) {
  at::Tensor t = v.to_tensor();
  if (t.sizes() != p.sizes()) {
    std::ostringstream os;
    os << "optimizer state '" << what << "' has shape " << t.sizes() << " but the parameter has "
       << p.sizes();
    throw std::runtime_error(os.str());
  }
  if (!t.is_floating_point() && p.is_floating_point()) {
    std::ostringstream os;
    os << "optimizer state '" << what << "' is a " << t.scalar_type() << " tensor; the parameter is " << p.scalar_type();
    throw std::runtime_error(os.str());
  }
  return t.to(p.device(), p.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

Value tensor_or_none(const at::Tensor& t) { return t.defined() ? Value(t) : Value(); }

std::string kind_of(optim::OptimizerOptions& o) {
  if (dynamic_cast<optim::AdamWOptions*>(&o)) return "adamw";
  if (dynamic_cast<optim::AdamOptions*>(&o)) return "adam";
  if (dynamic_cast<optim::SGDOptions*>(&o)) return "sgd";
  if (dynamic_cast<optim::RMSpropOptions*>(&o)) return "rmsprop";
  if (dynamic_cast<optim::AdagradOptions*>(&o)) return "adagrad";
  return "unknown";
}

// Adam and AdamW have separate but identically shaped option and state types.
template <class Options>
void adam_options_to(const Options& a, Value& g) {
  g.set("lr", a.lr());
  g.set("betas", Value(std::vector<double>{std::get<0>(a.betas()), std::get<1>(a.betas())}));
  g.set("eps", a.eps());
  g.set("weight_decay", a.weight_decay());
  g.set("amsgrad", a.amsgrad());
}

template <class Options>
void adam_options_from(const Value& g, Options& a) {
  const auto b = g.at("betas").to_double_list();
  a.lr(g.at("lr").to_double()).betas({b.at(0), b.at(1)}).eps(g.at("eps").to_double());
  a.weight_decay(g.at("weight_decay").to_double()).amsgrad(g.at("amsgrad").to_bool());
}

template <class State>
void adam_state_to(const State& a, Value& d) {
  d.set("step", step_value(a.step()));
  d.set("exp_avg", a.exp_avg());
  d.set("exp_avg_sq", a.exp_avg_sq());
  if (a.max_exp_avg_sq().defined()) d.set("max_exp_avg_sq", a.max_exp_avg_sq());
}

template <class State, class OptTensor>
std::unique_ptr<State> adam_state_from(const Value& d, const at::Tensor& p, OptTensor opt_tensor, bool amsgrad) {
  auto s = std::make_unique<State>();
  s->step(step_from(d.at("step")));
  s->exp_avg(like_param(d.at("exp_avg"), p, "exp_avg"));
  s->exp_avg_sq(like_param(d.at("exp_avg_sq"), p, "exp_avg_sq"));
  s->max_exp_avg_sq(opt_tensor("max_exp_avg_sq"));
  if (amsgrad && !s->max_exp_avg_sq().defined()) {
    throw std::runtime_error("the param group has amsgrad on, but a parameter's state has no 'max_exp_avg_sq'");
  }
  return s;
}

//! Whether a param group's (just loaded) options ask Adam(W) for AMSGrad.
bool amsgrad_of(optim::OptimizerOptions& o) {
  if (auto* a = dynamic_cast<optim::AdamOptions*>(&o)) return a->amsgrad();
  if (auto* w = dynamic_cast<optim::AdamWOptions*>(&o)) return w->amsgrad();
  return false;
}

Value group_options(optim::OptimizerOptions& o) {
  Value g = Value::dict();
  if (auto* a = dynamic_cast<optim::AdamOptions*>(&o)) {
    adam_options_to(*a, g);
  } else if (auto* w = dynamic_cast<optim::AdamWOptions*>(&o)) {
    adam_options_to(*w, g);
  } else if (auto* s = dynamic_cast<optim::SGDOptions*>(&o)) {
    g.set("lr", s->lr());
    g.set("momentum", s->momentum());
    g.set("dampening", s->dampening());
    g.set("weight_decay", s->weight_decay());
    g.set("nesterov", s->nesterov());
  } else if (auto* r = dynamic_cast<optim::RMSpropOptions*>(&o)) {
    g.set("lr", r->lr());
    g.set("alpha", r->alpha());
    g.set("eps", r->eps());
    g.set("weight_decay", r->weight_decay());
    g.set("momentum", r->momentum());
    g.set("centered", r->centered());
  } else if (auto* ag = dynamic_cast<optim::AdagradOptions*>(&o)) {
    g.set("lr", ag->lr());
    g.set("lr_decay", ag->lr_decay());
    g.set("weight_decay", ag->weight_decay());
    g.set("initial_accumulator_value", ag->initial_accumulator_value());
    g.set("eps", ag->eps());
  } else {
    throw std::runtime_error("cannot checkpoint this optimizer type (supported: sgd, adam, adamw, rmsprop, adagrad)");
  }
  g.set("maximize", false);
  return g;
}

void set_group_options(optim::OptimizerOptions& o, const Value& g) {
  if (auto* a = dynamic_cast<optim::AdamOptions*>(&o)) {
    adam_options_from(g, *a);
  } else if (auto* w = dynamic_cast<optim::AdamWOptions*>(&o)) {
    adam_options_from(g, *w);
  } else if (auto* s = dynamic_cast<optim::SGDOptions*>(&o)) {
    s->lr(g.at("lr").to_double()).momentum(g.at("momentum").to_double());
    s->dampening(g.at("dampening").to_double()).weight_decay(g.at("weight_decay").to_double());
    s->nesterov(g.at("nesterov").to_bool());
  } else if (auto* r = dynamic_cast<optim::RMSpropOptions*>(&o)) {
    r->lr(g.at("lr").to_double()).alpha(g.at("alpha").to_double()).eps(g.at("eps").to_double());
    r->weight_decay(g.at("weight_decay").to_double()).momentum(g.at("momentum").to_double());
    r->centered(g.at("centered").to_bool());
  } else if (auto* ag = dynamic_cast<optim::AdagradOptions*>(&o)) {
    ag->lr(g.at("lr").to_double()).lr_decay(g.at("lr_decay").to_double());
    ag->weight_decay(g.at("weight_decay").to_double());
    ag->initial_accumulator_value(g.at("initial_accumulator_value").to_double()).eps(g.at("eps").to_double());
  }
}

Value param_state(optim::OptimizerParamState& s) {
  Value d = Value::dict();
  if (auto* a = dynamic_cast<optim::AdamParamState*>(&s)) {
    adam_state_to(*a, d);
  } else if (auto* w = dynamic_cast<optim::AdamWParamState*>(&s)) {
    adam_state_to(*w, d);
  } else if (auto* m = dynamic_cast<optim::SGDParamState*>(&s)) {
    d.set("momentum_buffer", tensor_or_none(m->momentum_buffer()));
  } else if (auto* r = dynamic_cast<optim::RMSpropParamState*>(&s)) {
    d.set("step", step_value(r->step()));
    d.set("square_avg", r->square_avg());
    if (r->momentum_buffer().defined()) d.set("momentum_buffer", r->momentum_buffer());
    if (r->grad_avg().defined()) d.set("grad_avg", r->grad_avg());
  } else if (auto* ag = dynamic_cast<optim::AdagradParamState*>(&s)) {
    d.set("step", step_value(ag->step()));
    d.set("sum", ag->sum());
  }
  return d;
}

std::unique_ptr<optim::OptimizerParamState> make_param_state(const std::string& kind, const Value& d,
                                                             const at::Tensor& p, bool amsgrad) {
  auto opt_tensor = [&](const char* k) -> at::Tensor {
    const Value* v = d.find(k);
    return (v && v->is_tensor()) ? like_param(*v, p, k) : at::Tensor();
  };
  if (kind == "adam") return adam_state_from<optim::AdamParamState>(d, p, opt_tensor, amsgrad);
  if (kind == "adamw") return adam_state_from<optim::AdamWParamState>(d, p, opt_tensor, amsgrad);
  if (kind == "sgd") {
    auto s = std::make_unique<optim::SGDParamState>();
    s->momentum_buffer(opt_tensor("momentum_buffer"));
    return s;
  }
  if (kind == "rmsprop") {
    auto s = std::make_unique<optim::RMSpropParamState>();
    s->step(step_from(d.at("step")));
    s->square_avg(like_param(d.at("square_avg"), p, "square_avg"));
    s->momentum_buffer(opt_tensor("momentum_buffer"));
    s->grad_avg(opt_tensor("grad_avg"));
    return s;
  }
  if (kind == "adagrad") {
    auto s = std::make_unique<optim::AdagradParamState>();
    s->step(step_from(d.at("step")));
    s->sum(like_param(d.at("sum"), p, "sum"));
    return s;
  }
  throw std::runtime_error("cannot restore state of optimizer kind " + kind);
}
}  // namespace

std::string optimizer_kind(torch::optim::Optimizer& optimizer) {
  if (optimizer.param_groups().empty()) return "unknown";
  return kind_of(optimizer.param_groups()[0].options());
}

Value optimizer_state_dict(torch::optim::Optimizer& optimizer) {
  auto& state = optimizer.state();
  Value states = Value::dict();
  Value groups = Value::list();
  int64_t index = 0;
  for (auto& group : optimizer.param_groups()) {
    Value g = group_options(group.options());
    Value params = Value::list();
    for (const auto& p : group.params()) {
      auto it = state.find(state_key(state, p));
      if (it != state.end() && it->second) states.set(index, param_state(*it->second));
      params.push_back(index++);
    }
    g.set("params", std::move(params));
    groups.push_back(std::move(g));
  }
  Value d = Value::dict();
  d.set("state", std::move(states));
  d.set("param_groups", std::move(groups));
  d.set("cairn_kind", optimizer_kind(optimizer));
  return d;
}

void load_optimizer_state_dict(torch::optim::Optimizer& optimizer, const Value& saved) {
  const std::string kind = optimizer_kind(optimizer);
  if (const Value* k = saved.find("cairn_kind")) {
    if (k->to_string() != kind) {
      throw std::runtime_error("the checkpoint's optimizer is '" + k->to_string() + "' but this run uses '" + kind + "'");
    }
  }
  const Value& groups = saved.at("param_groups");
  auto& live_groups = optimizer.param_groups();
  if (groups.size() != live_groups.size()) {
    throw std::runtime_error("the checkpoint has " + std::to_string(groups.size()) +
                             " optimizer param groups, this optimizer has " + std::to_string(live_groups.size()));
  }
  const Value& states = saved.at("state");
  auto& state = optimizer.state();
  for (size_t gi = 0; gi < live_groups.size(); ++gi) {
    auto& group = live_groups[gi];
    const Value& g = groups.items()[gi];
    const auto ids = g.at("params").to_int_list();
    if (ids.size() != group.params().size()) {
      throw std::runtime_error("optimizer param group " + std::to_string(gi) + " has " +
                               std::to_string(ids.size()) + " parameters in the checkpoint, " +
                               std::to_string(group.params().size()) + " here");
    }
    set_group_options(group.options(), g);
    for (size_t j = 0; j < ids.size(); ++j) {
      const auto& p = group.params()[j];
      const auto key = state_key(state, p);
      if (const Value* s = states.find(ids[j])) {
        state[key] = make_param_state(kind, *s, p, amsgrad_of(group.options()));
      } else {
        state.erase(key);
      }
    }
  }
}

}  // namespace cairn
