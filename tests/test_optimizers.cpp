// Optimizer step modes (cairn/optimizers.h): on the CPU the foreach step
// equals LibTorch's per-parameter step bit for bit (parameters and state; the
// CUDA comparison is in test_cuda.cpp), the fused
// step's rounding difference is measured, checkpoints keep PyTorch's layout,
// and the YAML keys `foreach` and `fused` behave as PyTorch's arguments.
#include "support.h"

#include <cairn/callbacks.h>
#include <cairn/config_drift.h>
#include <cairn/optimizers.h>

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <cmath>

namespace {

using cairn::StepMode;

struct Net : torch::nn::Module {
  torch::nn::Linear a{nullptr}, b{nullptr}, side{nullptr};
  Net() {
    a = register_module("a", torch::nn::Linear(12, 16));
    b = register_module("b", torch::nn::Linear(16, 3));
    side = register_module("side", torch::nn::Linear(12, 3));
  }
  //! `side` takes part only when `use_side`: its parameters miss steps, so
  //! their step counts fall behind the others' (two buckets of bias corrections).
  torch::Tensor forward(const torch::Tensor& x, bool use_side) {
    auto y = b(torch::tanh(a(x)));
    return use_side ? y + side(x) : y;
  }
};

using Factory = std::function<std::shared_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>, StepMode)>;

//! Trains a fresh Net (same initial weights every time) for `steps` steps with
//! the optimizer `make` builds; returns the parameters and the state_dict.
std::pair<std::vector<torch::Tensor>, cairn::Value> train(const Factory& make, StepMode mode, int steps = 30) {
  torch::manual_seed(11);
  auto net = std::make_shared<Net>();
  auto opt = make(net->parameters(), mode);
  torch::manual_seed(12);
  for (int i = 0; i < steps; ++i) {
    const auto x = torch::randn({20, 12});
    const auto y = torch::randint(0, 3, {20}, torch::kLong);
    opt->zero_grad();
    // zero_grad leaves `side`'s gradients undefined (2.x) or zero (1.13); on
    // odd steps they are reset to undefined, so those steps skip them.
    if (i % 3 == 1) {
      for (auto& p : net->side->parameters()) p.mutable_grad() = torch::Tensor();
    }
    torch::nn::functional::cross_entropy(net->forward(x, i % 3 != 1), y).backward();
    if (i % 3 == 1) {
      for (auto& p : net->side->parameters()) p.mutable_grad() = torch::Tensor();
    }
    opt->step();
  }
  std::vector<torch::Tensor> params;
  for (const auto& p : net->parameters()) params.push_back(p.detach().clone());
  return {params, cairn::optimizer_state_dict(*opt)};
}

double max_relative_difference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, ((a[i] - b[i]).abs().max() / b[i].abs().max().clamp_min(1e-30)).item<double>());
  }
  return m;
}

bool all_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

struct Case {
  std::string name;
  Factory make;
  bool fused;  //!< fused offered
};

std::vector<Case> cases() {
  using namespace torch::optim;
  return {
      {"adam", [](auto p, StepMode m) { return std::make_shared<cairn::Adam>(p, AdamOptions(3e-3), m); }, true},
      {"adam weight_decay", [](auto p, StepMode m) {
         return std::make_shared<cairn::Adam>(p, AdamOptions(3e-3).weight_decay(0.05).betas({0.8, 0.99}).eps(1e-6), m);
       }, true},
      {"adam amsgrad", [](auto p, StepMode m) {
         return std::make_shared<cairn::Adam>(p, AdamOptions(3e-3).amsgrad(true).weight_decay(0.01), m);
       }, true},
      {"adamw", [](auto p, StepMode m) {
         return std::make_shared<cairn::AdamW>(p, AdamWOptions(3e-3).weight_decay(0.1), m);
       }, true},
      {"adamw amsgrad", [](auto p, StepMode m) {
         return std::make_shared<cairn::AdamW>(p, AdamWOptions(2e-3).weight_decay(0.02).amsgrad(true), m);
       }, true},
      {"sgd", [](auto p, StepMode m) { return std::make_shared<cairn::SGD>(p, SGDOptions(0.05), m); }, false},
      {"sgd momentum dampening weight_decay", [](auto p, StepMode m) {
         return std::make_shared<cairn::SGD>(p, SGDOptions(0.05).momentum(0.9).dampening(0.1).weight_decay(0.01), m);
       }, false},
      {"sgd nesterov", [](auto p, StepMode m) {
         return std::make_shared<cairn::SGD>(p, SGDOptions(0.05).momentum(0.9).nesterov(true), m);
       }, false},
  };
}

}  // namespace

TEST_CASE("on the CPU foreach steps equal LibTorch's per-parameter steps bit for bit: parameters and state, with skipped parameters") {
  for (const auto& c : cases()) {
    CAPTURE(c.name);
    const auto loop = train(c.make, StepMode::for_loop);
    const auto each = train(c.make, StepMode::foreach);
    // The reference is LibTorch's own optimizer class, not cairn's for_loop mode.
    const auto plain = train(
        [&](auto p, StepMode) -> std::shared_ptr<torch::optim::Optimizer> {
          auto o = c.make(p, StepMode::for_loop);
          using namespace torch::optim;
          if (auto* a = dynamic_cast<cairn::Adam*>(o.get())) return std::make_shared<Adam>(p, static_cast<AdamOptions&>(a->defaults()));
          if (auto* w = dynamic_cast<cairn::AdamW*>(o.get())) return std::make_shared<AdamW>(p, static_cast<AdamWOptions&>(w->defaults()));
          auto* s = dynamic_cast<cairn::SGD*>(o.get());
          REQUIRE(s);
          return std::make_shared<SGD>(p, static_cast<SGDOptions&>(s->defaults()));
        },
        StepMode::for_loop);
    CHECK(all_equal(loop.first, plain.first));
    CHECK(all_equal(each.first, plain.first));
    CHECK_MESSAGE(each.second.first_difference(plain.second) == "", each.second.first_difference(plain.second));
    // The weights moved (the comparison is not of untouched parameters).
    CHECK(max_relative_difference(train(c.make, StepMode::foreach, 1).first, each.first) > 1e-3);
    if (c.name.rfind("adam", 0) == 0) {
      // Adam's `side` parameters missed every third step: their counts lag.
      const cairn::Value& state = each.second.at("state");
      CHECK(state.at(cairn::Value(int64_t{0})).at("step").to_tensor().item<double>() == 30);
      CHECK(state.at(cairn::Value(int64_t{4})).at("step").to_tensor().item<double>() == 20);
    }
  }
}

TEST_CASE("fused Adam and AdamW: the difference from the per-parameter step measured; refused where this LibTorch has no kernel") {
  const c10::Device cpu(c10::kCPU);
  if (!cairn::fused_adam_available(cpu)) {
    MESSAGE("LibTorch " << TORCH_VERSION << " has no fused Adam on the CPU: checking that it is refused");
    for (const auto& c : cases()) {
      torch::manual_seed(1);
      auto net = std::make_shared<Net>();
      auto opt = c.make(net->parameters(), StepMode::fused);
      auto* m = dynamic_cast<cairn::MultiTensorOptimizer*>(opt.get());
      REQUIRE(m);
      CHECK_THROWS_WITH_AS(m->check_device(cpu), doctest::Contains("fused"), std::invalid_argument);
    }
    return;
  }
  for (const auto& c : cases()) {
    CAPTURE(c.name);
    if (!c.fused) {
      torch::manual_seed(1);
      auto net = std::make_shared<Net>();
      auto opt = c.make(net->parameters(), StepMode::fused);
      CHECK_THROWS_WITH_AS(dynamic_cast<cairn::MultiTensorOptimizer&>(*opt).check_device(cpu),
                           doctest::Contains("adam and adamw only"), std::invalid_argument);
      continue;
    }
    const auto loop = train(c.make, StepMode::for_loop, 100);
    const auto fused = train(c.make, StepMode::fused, 100);
    const double d = max_relative_difference(fused.first, loop.first);
    MESSAGE(c.name << ": fused vs per-parameter after 100 steps, max relative difference " << d);
    CHECK(d < 1e-5);
    // The same layout and step counts; the moments agree to rounding.
    const cairn::Value& fs = fused.second.at("state");
    const cairn::Value& ls = loop.second.at("state");
    REQUIRE(fs.keys().size() == ls.keys().size());
    for (size_t i = 0; i < fs.keys().size(); ++i) {
      CHECK(fs.values()[i].keys().size() == ls.values()[i].keys().size());
      CHECK(torch::equal(fs.values()[i].at("step").to_tensor(), ls.values()[i].at("step").to_tensor()));
      CHECK(torch::allclose(fs.values()[i].at("exp_avg_sq").to_tensor(), ls.values()[i].at("exp_avg_sq").to_tensor(),
                            1e-4, 1e-12));
    }
    CHECK(fused.second.at("param_groups").first_difference(loop.second.at("param_groups")) == "");
  }
}

TEST_CASE("automatic mode: foreach on CUDA, the per-parameter loop on the CPU (PyTorch's default)") {
  torch::manual_seed(1);
  auto net = std::make_shared<Net>();
  cairn::Adam adam(net->parameters());
  CHECK(adam.requested_mode() == StepMode::automatic);
  CHECK(adam.mode_on(c10::Device(c10::kCPU)) == StepMode::for_loop);
  CHECK(adam.mode_on(c10::Device(c10::kCUDA, 0)) == StepMode::foreach);
  cairn::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.1), StepMode::foreach);
  CHECK(sgd.mode_on(c10::Device(c10::kCPU)) == StepMode::foreach);
}

namespace {
std::string optim_config(const std::string& run, const std::string& optimizer) {
  return "name: optim\nseed: 3\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 120, valid_size: 40, test_size: 40, num_classes: 3, batch_size: 16}\n"
         "model: {name: mlp, hidden: [16], dropout: 0.2}\n"
         "optimizer: " + optimizer + "\n"
         "scheduler: {name: cosine, warmup_steps: 3}\n"
         "trainer: {max_epochs: 3, threads: 1, enable_progress_bar: false}\n"
         "callbacks:\n  - {name: checkpoint, monitor: valid/acc, mode: max, every_n_train_steps: 4}\n";
}

//! Fits config `first` in-process, stops it (as SIGTERM would) at global step
//! `stop` (0: never), then resumes it with config `second`; the final checkpoint.
cairn::Value fit_then_resume(const std::string& first, const std::string& second, int64_t stop) {
  return test::fit_stop_resume(first, second, stop);
}
}  // namespace

TEST_CASE("YAML on the CPU: foreach runs give the default run's results bit for bit, also when switched on at a resume") {
  test::TempDir dir("optim_yaml");
  for (const std::string name : {"adamw", "sgd"}) {
    CAPTURE(name);
    const std::string extra = name == "sgd" ? ", momentum: 0.9, nesterov: true" : "";
    auto write = [&](const std::string& run, const std::string& file, const std::string& foreach) {
      test::write_file(dir / file, optim_config(dir / run, "{name: " + name + ", lr: 0.01" + extra + foreach + "}"));
      return dir / file;
    };
    const cairn::Value ref = fit_then_resume(write(name + "_ref", name + "_ref.yaml", ""), "", 0);
    const cairn::Value each = fit_then_resume(write(name + "_each", name + "_each.yaml", ", foreach: true"), "", 0);
    CHECK_MESSAGE(ref.first_difference(each) == "", ref.first_difference(each));
    // Started with the per-parameter loop, stopped mid-epoch, resumed with foreach.
    const cairn::Value cut = fit_then_resume(write(name + "_cut", name + "_cut_a.yaml", ", foreach: false"),
                                             write(name + "_cut", name + "_cut_b.yaml", ", foreach: true"), 10);
    CHECK_MESSAGE(ref.first_difference(cut) == "", ref.first_difference(cut));
  }
}

TEST_CASE("YAML: foreach and fused keys: errors name the key; changing either at a resume is drift (CUDA's kernels may round differently)") {
  auto config = [](const std::string& optimizer) {
    return cairn::yaml_to_value(YAML::Load("seed: 1\nloss: {name: mse}\nmetrics: []\noptimizer: " + optimizer + "\n"));
  };
  // A run saved before the keys existed: its defaults are what it took.
  const cairn::Value old = config("{name: adam, lr: 0.001}");
  CHECK(cairn::diff_configs(old, config("{name: adam, lr: 0.001, foreach: null, fused: false}")).empty());
  const auto to_foreach = cairn::diff_configs(old, config("{name: adam, lr: 0.001, foreach: true, fused: false}"));
  REQUIRE(to_foreach.size() == 1);
  CHECK(to_foreach[0].key == "optimizer.foreach");
  CHECK_FALSE(to_foreach[0].safe);
  CHECK(to_foreach[0].why.find("CUDA") != std::string::npos);
  const auto to_fused = cairn::diff_configs(old, config("{name: adam, lr: 0.001, foreach: null, fused: true}"));
  REQUIRE(to_fused.size() == 1);
  CHECK(to_fused[0].key == "optimizer.fused");
  CHECK_FALSE(to_fused[0].safe);
  CHECK(to_fused[0].why.find("round") != std::string::npos);

  test::TempDir dir("optim_keys");
  auto error = [&](const std::string& optimizer) {
    test::write_file(dir / "c.yaml", optim_config(dir / "run", optimizer));
    try {
      cairn::parse_experiment(dir / "c.yaml");
    } catch (const cairn::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  CHECK(error("{name: adam, foreach: true, fused: true}").find("optimizer.fused: fused and foreach cannot both be true") != std::string::npos);
  CHECK(error("{name: rmsprop, foreach: true}").find("optimizer.foreach") != std::string::npos);
  CHECK(error("{name: sgd, fused: true}").find("optimizer.fused") != std::string::npos);
  CHECK(error("{name: adam, foreach: maybe}").find("optimizer.foreach") != std::string::npos);
  if (cairn::fused_adam_available(c10::Device(c10::kCPU))) {
    CHECK(error("{name: adamw, fused: true}") == "(accepted)");
  } else {
    const std::string e = error("{name: adamw, fused: true}");
    CHECK_MESSAGE(e.find("c.yaml:6:") != std::string::npos, e);
    CHECK(e.find("optimizer.fused: fused Adam needs LibTorch 2.4 or newer") != std::string::npos);
  }
}
