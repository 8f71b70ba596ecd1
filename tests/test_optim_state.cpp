// Optimizer state in PyTorch's layout, group options included.
#include "support.h"

namespace {
using MakeOpt = std::function<std::shared_ptr<torch::optim::Optimizer>(std::vector<at::Tensor>)>;

std::vector<at::Tensor> params(int seed) {
  torch::manual_seed(seed);
  return {torch::randn({4, 3}).requires_grad_(), torch::randn({3}).requires_grad_()};
}

void train_steps(torch::optim::Optimizer& opt, const std::vector<at::Tensor>& ps, int steps, int seed) {
  torch::manual_seed(seed);
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    auto x = torch::randn({5, 4});
    auto loss = (x.matmul(ps[0]) + ps[1]).pow(2).mean();
    loss.backward();
    opt.step();
  }
}
}  // namespace

TEST_CASE("optimizer state and group options survive a save and load, and training continues identically") {
  const std::vector<std::pair<std::string, MakeOpt>> kinds = {
      {"sgd", [](std::vector<at::Tensor> p) {
         return std::make_shared<torch::optim::SGD>(p, torch::optim::SGDOptions(0.123).momentum(0.9).nesterov(true));
       }},
      {"adam", [](std::vector<at::Tensor> p) {
         return std::make_shared<torch::optim::Adam>(p, torch::optim::AdamOptions(0.123).betas({0.8, 0.95}).weight_decay(0.01).amsgrad(true));
       }},
      {"adamw", [](std::vector<at::Tensor> p) {
         return std::make_shared<torch::optim::AdamW>(p, torch::optim::AdamWOptions(0.123).weight_decay(0.05));
       }},
      {"rmsprop", [](std::vector<at::Tensor> p) {
         return std::make_shared<torch::optim::RMSprop>(p, torch::optim::RMSpropOptions(0.0123).momentum(0.9).centered(true));
       }},
      {"adagrad", [](std::vector<at::Tensor> p) {
         return std::make_shared<torch::optim::Adagrad>(p, torch::optim::AdagradOptions(0.123).lr_decay(0.01));
       }},
  };
  test::TempDir dir("optim");
  for (const auto& k : kinds) {
    CAPTURE(k.first);
    // Reference: 6 uninterrupted steps.
    auto ref_p = params(1);
    auto ref = k.second(ref_p);
    train_steps(*ref, ref_p, 3, 10);
    train_steps(*ref, ref_p, 3, 11);

    // Interrupted: 3 steps, save, fresh objects with DEFAULT options, load, 3 steps.
    auto a_p = params(1);
    auto a = k.second(a_p);
    train_steps(*a, a_p, 3, 10);
    cairn::Value saved = cairn::Value::dict();
    saved.set("p0", a_p[0].detach());
    saved.set("p1", a_p[1].detach());
    saved.set("opt", cairn::optimizer_state_dict(*a));
    cairn::write_checkpoint(dir / (k.first + ".ckpt"), saved);

    const cairn::Value back = cairn::read_checkpoint(dir / (k.first + ".ckpt"));
    auto b_p = params(2);
    {
      torch::NoGradGuard g;
      b_p[0].copy_(back.at("p0").to_tensor());
      b_p[1].copy_(back.at("p1").to_tensor());
    }
    std::shared_ptr<torch::optim::Optimizer> b;
    if (k.first == "sgd") b = std::make_shared<torch::optim::SGD>(b_p, torch::optim::SGDOptions(0.001));
    if (k.first == "adam") b = std::make_shared<torch::optim::Adam>(b_p, torch::optim::AdamOptions());
    if (k.first == "adamw") b = std::make_shared<torch::optim::AdamW>(b_p, torch::optim::AdamWOptions());
    if (k.first == "rmsprop") b = std::make_shared<torch::optim::RMSprop>(b_p, torch::optim::RMSpropOptions());
    if (k.first == "adagrad") b = std::make_shared<torch::optim::Adagrad>(b_p, torch::optim::AdagradOptions());
    cairn::load_optimizer_state_dict(*b, back.at("opt"));
    CHECK(b->param_groups()[0].options().get_lr() == a->param_groups()[0].options().get_lr());
    CHECK(cairn::optimizer_state_dict(*b).first_difference(cairn::optimizer_state_dict(*a)) == "");
    train_steps(*b, b_p, 3, 11);
    CHECK(b_p[0].equal(ref_p[0]));
    CHECK(b_p[1].equal(ref_p[1]));
  }
}

TEST_CASE("the saved layout is PyTorch's: state by index, param_groups with params lists") {
  auto p = params(1);
  torch::optim::SGD sgd(p, torch::optim::SGDOptions(0.5).momentum(0.9));
  train_steps(sgd, p, 1, 3);
  const cairn::Value s = cairn::optimizer_state_dict(sgd);
  CHECK(s.at("param_groups").items()[0].at("lr").to_double() == 0.5);
  CHECK(s.at("param_groups").items()[0].at("momentum").to_double() == 0.9);
  CHECK(s.at("param_groups").items()[0].at("params").to_int_list() == std::vector<int64_t>{0, 1});
  CHECK(s.at("state").at(int64_t{1}).at("momentum_buffer").to_tensor().sizes() == std::vector<int64_t>{3});
}

TEST_CASE("loading state for another optimizer kind is refused") {
  auto p = params(1);
  torch::optim::SGD sgd(p, torch::optim::SGDOptions(0.5));
  torch::optim::Adam adam(p, torch::optim::AdamOptions());
  CHECK_THROWS_WITH_AS(cairn::load_optimizer_state_dict(adam, cairn::optimizer_state_dict(sgd)),
                       "the checkpoint's optimizer is 'sgd' but this run uses 'adam'", std::runtime_error);
}
