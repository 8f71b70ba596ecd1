// LR schedulers: step by step against PyTorch's own schedulers (computed by
// /usr/bin/python3 with torch.optim.lr_scheduler), and their state across resume.
#include "support.h"

#include <map>

namespace {
using Factory = std::function<std::shared_ptr<cairn::Scheduler>(torch::optim::Optimizer&)>;

std::map<std::string, std::vector<double>> reference() {
  auto r = test::python("scheduler_reference.py", {});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  std::map<std::string, std::vector<double>> out;
  std::istringstream lines(r.output);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string name;
    words >> name;
    double v;
    while (words >> v) out[name].push_back(v);
  }
  return out;
}

const std::vector<double> kMetrics = [] {
  std::vector<double> m = {1.0, 0.9, 0.95, 0.95, 0.96, 0.97, 0.5, 0.6, 0.6, 0.6,
                           0.6, 0.6, 0.49, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7};
  std::vector<double> twice = m;
  twice.insert(twice.end(), m.begin(), m.end());
  return twice;
}();

cairn::ReduceLROnPlateau::Options plateau_min() {
  cairn::ReduceLROnPlateau::Options o;
  o.factor = 0.5;
  o.patience = 2;
  o.threshold = 0.01;
  o.cooldown = 1;
  o.min_lr = 0.01;
  return o;
}
cairn::ReduceLROnPlateau::Options plateau_max_abs() {
  cairn::ReduceLROnPlateau::Options o;
  o.mode = cairn::Mode::max;
  o.factor = 0.2;
  o.patience = 1;
  o.threshold = 0.05;
  o.relative = false;
  return o;
}

const std::map<std::string, Factory>& factories() {
  static const std::map<std::string, Factory> f = {
      {"step", [](auto& o) { return std::make_shared<cairn::StepLR>(o, 7, 0.5); }},
      {"multistep", [](auto& o) { return std::make_shared<cairn::MultiStepLR>(o, std::vector<int64_t>{5, 12, 30}, 0.3); }},
      {"exponential", [](auto& o) { return std::make_shared<cairn::ExponentialLR>(o, 0.93); }},
      {"cosine", [](auto& o) { return std::make_shared<cairn::CosineLR>(o, 40, 0, 0.001, cairn::Interval::epoch); }},
      {"linear_warmup", [](auto& o) { return std::make_shared<cairn::LinearWarmupLR>(o, 10, 0.25, 1.0); }},
      {"one_cycle", [](auto& o) { return std::make_shared<cairn::OneCycleLR>(o, 41, 0.5, 0.25, 20.0, 100.0); }},
      {"plateau_min", [](auto& o) { return std::make_shared<cairn::ReduceLROnPlateau>(o, plateau_min()); }},
      {"plateau_max_abs", [](auto& o) { return std::make_shared<cairn::ReduceLROnPlateau>(o, plateau_max_abs()); }},
  };
  return f;
}

void advance(cairn::Scheduler& s, int64_t i) {
  if (s.name() == "plateau") {
    s.step_with_metric(kMetrics[static_cast<size_t>(i)]);
  } else {
    s.step();
  }
}
}  // namespace

TEST_CASE("every scheduler matches PyTorch's scheduler of the same name, step by step") {
  const auto ref = reference();
  REQUIRE(ref.size() == factories().size());
  for (const auto& entry : factories()) {
    const auto& name = entry.first;
    const auto& make = entry.second;
    CAPTURE(name);
    const auto it = ref.find(name);
    REQUIRE(it != ref.end());
    auto p = torch::zeros({1}, torch::requires_grad());
    torch::optim::SGD opt({p}, torch::optim::SGDOptions(0.1));
    auto sched = make(opt);
    for (size_t i = 0; i < it->second.size(); ++i) {
      CAPTURE(i);
      REQUIRE(opt.param_groups()[0].options().get_lr() == doctest::Approx(it->second[i]).epsilon(1e-9));
      advance(*sched, static_cast<int64_t>(i));
    }
  }
}

TEST_CASE("a scheduler restored from its state continues the same curve") {
  for (const auto& entry : factories()) {
    const auto& name = entry.first;
    const auto& make = entry.second;
    CAPTURE(name);
    auto p = torch::zeros({1}, torch::requires_grad());
    torch::optim::SGD a_opt({p}, torch::optim::SGDOptions(0.1));
    auto a = make(a_opt);
    for (int64_t i = 0; i < 17; ++i) advance(*a, i);
    // A fresh optimizer and scheduler, as after a restart; the optimizer's lr
    // comes back with the optimizer state, the rest with the scheduler's.
    torch::optim::SGD b_opt({p}, torch::optim::SGDOptions(0.1));
    auto b = make(b_opt);
    cairn::load_optimizer_state_dict(b_opt, cairn::optimizer_state_dict(a_opt));
    b->load_state_dict(a->state_dict());
    for (int64_t i = 17; i < 40; ++i) {
      advance(*a, i);
      advance(*b, i);
      REQUIRE(b_opt.param_groups()[0].options().get_lr() == a_opt.param_groups()[0].options().get_lr());
    }
  }
}

TEST_CASE("schedulers are configured from YAML, with their options checked") {
  test::TempDir dir("sched_yaml");
  const std::string base = "data: {name: synthetic}\nmodel: {name: mlp, hidden: [4]}\noptimizer: {name: sgd, lr: 0.1}\n";
  for (const std::string s : {"{name: step, step_size: 2}", "{name: multistep, milestones: [2, 4]}",
                              "{name: exponential, gamma: 0.9}", "{name: cosine, warmup_steps: 3, min_lr: 0.001}",
                              "{name: linear_warmup, warmup_steps: 5}", "{name: one_cycle, max_lr: 0.5}",
                              "{name: plateau, monitor: valid/acc, mode: max, patience: 1}"}) {
    CAPTURE(s);
    test::write_file(dir / "c.yaml", base + "scheduler: " + s + "\n");
    auto r = test::cairn_cli({"print-config", "--config", dir / "c.yaml"});
    CHECK_MESSAGE(r.exit_code == 0, r.output);
  }
  for (const std::string s : {"{name: exponential}", "{name: multistep, milestones: 3}",
                              "{name: plateau, interval: step}", "{name: one_cycle, pct_start: 1.5}",
                              "{name: cosine, warmup: 3}"}) {
    CAPTURE(s);
    test::write_file(dir / "c.yaml", base + "scheduler: " + s + "\n");
    auto r = test::cairn_cli({"print-config", "--config", dir / "c.yaml"});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("scheduler.") != std::string::npos);
  }
}
