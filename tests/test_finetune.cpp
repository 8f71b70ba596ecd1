// Fine-tuning: starting from other weights with strict/exclude/rename (a new
// head), freezing part of the model, and the finetuning callback that
// unfreezes it at an epoch with its own rate, resumed on either side of the
// unfreeze bit for bit.
#include "support.h"

#include <cairn/callbacks.h>
#include <cairn/finetune.h>

namespace {
torch::nn::Sequential net(int64_t classes) {
  return torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::ReLU(), torch::nn::Linear(8, classes));
}

cairn::Value state_of(torch::nn::Sequential& m, const std::string& prefix = "") {
  cairn::Value d = cairn::Value::dict();
  for (const auto& p : m->named_parameters()) d.set(prefix + p.key(), p.value().detach().clone());
  return d;
}
}  // namespace

TEST_CASE("load_weights: strict lists every mismatch; strict false, exclude and rename report what was loaded, "
          "skipped and left new; loading nothing is an error") {
  test::TempDir dir("finetune_load");
  torch::manual_seed(1);
  auto pre = net(3);
  cairn::write_checkpoint(dir / "pre.pt", state_of(pre));
  cairn::write_checkpoint(dir / "prefixed.pt", state_of(pre, "backbone."));
  auto fresh = net(5);  // a new head: 5 classes
  // strict (the default): the head's shapes differ, named.
  try {
    cairn::load_weights(*fresh.ptr(), dir / "pre.pt", cairn::WeightsOptions{});
    FAIL("a strict load of another head succeeded");
  } catch (const cairn::CheckpointMismatch& e) {
    CHECK(std::string(e.what()).find("2.weight (file [3, 8], model [5, 8])") != std::string::npos);
    CHECK(std::string(e.what()).find("strict: false") != std::string::npos);
  }
  cairn::WeightsOptions loose;
  loose.strict = false;
  auto r = cairn::load_weights(*fresh.ptr(), dir / "pre.pt", loose);
  CHECK(r.loaded == std::vector<std::string>{"0.weight", "0.bias"});
  CHECK(r.mismatched.size() == 2);
  CHECK(r.left_new == std::vector<std::string>{"2.weight", "2.bias"});
  CHECK(torch::equal(fresh[0]->as<torch::nn::Linear>()->weight, pre[0]->as<torch::nn::Linear>()->weight));
  CHECK(r.summary().find("left new 2 (2.weight, 2.bias)") != std::string::npos);
  // exclude: the head is never taken (even where shapes would fit).
  auto same = net(3);
  cairn::WeightsOptions ex;
  ex.strict = false;
  ex.exclude = {"^2\\."};
  r = cairn::load_weights(*same.ptr(), dir / "pre.pt", ex);
  CHECK(r.excluded == std::vector<std::string>{"2.weight", "2.bias"});
  CHECK_FALSE(torch::equal(same[2]->as<torch::nn::Linear>()->weight, pre[2]->as<torch::nn::Linear>()->weight));
  // strict with exclude: everything not excluded must fit; the excluded head is left new on purpose.
  auto strict_ex = net(3);
  cairn::WeightsOptions sx;
  sx.exclude = {"^2\\."};
  r = cairn::load_weights(*strict_ex.ptr(), dir / "pre.pt", sx);
  CHECK(r.loaded.size() == 2);
  CHECK(r.left_new == std::vector<std::string>{"2.weight", "2.bias"});
  // rename: the file's names onto the model's.
  auto renamed = net(3);
  cairn::WeightsOptions rn;
  rn.rename = {{"^backbone\\.", ""}};
  r = cairn::load_weights(*renamed.ptr(), dir / "prefixed.pt", rn);  // strict: everything fits after the rename
  CHECK(r.loaded.size() == 4);
  CHECK(torch::equal(renamed[2]->as<torch::nn::Linear>()->weight, pre[2]->as<torch::nn::Linear>()->weight));
  // Nothing fits (the names were not renamed): an error, not a silent no-op.
  cairn::WeightsOptions none;
  none.strict = false;
  CHECK_THROWS_WITH_AS(cairn::load_weights(*same.ptr(), dir / "prefixed.pt", none),
                       doctest::Contains("nothing in the file fits the model"), cairn::CheckpointMismatch);
  CHECK_THROWS_AS(cairn::load_weights(*same.ptr(), dir / "pre.pt", cairn::WeightsOptions{true, {"("}, {}}),
                  std::invalid_argument);

  // freeze: requires_grad off, a group of their own at the end with its rate; a pattern matching nothing is refused.
  auto m = net(3);
  torch::optim::SGD opt(m->parameters(), torch::optim::SGDOptions(0.1));
  const auto frozen = cairn::freeze(*m.ptr(), opt, {"^0\\."}, 0.01);
  CHECK(frozen == std::vector<std::string>{"0.weight", "0.bias"});
  CHECK_FALSE(m[0]->as<torch::nn::Linear>()->weight.requires_grad());
  REQUIRE(opt.param_groups().size() == 2);
  CHECK(opt.param_groups()[0].params().size() == 2);
  CHECK(opt.param_groups()[1].params().size() == 2);
  CHECK(opt.param_groups()[1].options().get_lr() == 0.01);
  auto m2 = net(3);
  torch::optim::SGD opt2(m2->parameters(), torch::optim::SGDOptions(0.1));
  CHECK_THROWS_WITH_AS(cairn::freeze(*m2.ptr(), opt2, {"^backbone"}, 0.01), doctest::Contains("matches no parameter"),
                       std::invalid_argument);
}

namespace {
std::string pretrain_config(const std::string& run) {
  return "name: pre\nseed: 3\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 256, valid_size: 64, test_size: 0, features: 16, num_classes: 4, batch_size: 32}\n"
         "model: {name: mlp, hidden: [16]}\noptimizer: {name: sgd, lr: 0.1}\n"
         "trainer: {max_epochs: 1, threads: 1, enable_progress_bar: false}\n";
}

std::string finetune_config(const std::string& run, const std::string& pre, int epochs) {
  return "name: ft\nseed: 5\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 256, valid_size: 64, test_size: 0, features: 16, num_classes: 3, batch_size: 32}\n"
         "model: {name: mlp, hidden: [16], init_from: {path: " + pre + ", strict: false, exclude: ['^3\\.']}}\n"
         "optimizer: {name: adam, lr: 0.01}\n"
         "trainer: {max_epochs: " + std::to_string(epochs) + ", threads: 1, enable_progress_bar: false, freeze: ['^1\\.']}\n"
         "callbacks:\n"
         "  - {name: finetuning, unfreeze_at_epoch: 2, lr: 0.001}\n";
}
}  // namespace

TEST_CASE("YAML fine-tuning: init_from with a new head, trainer.freeze and the finetuning callback; resumed before "
          "and after the unfreeze, bit-identical to an uninterrupted run") {
  test::TempDir dir("finetune_yaml");
  const std::string pre = dir / "pre";
  test::write_file(dir / "pre.yaml", pretrain_config(pre));
  auto p = test::cairn_cli({"fit", "--config", dir / "pre.yaml"});
  REQUIRE_MESSAGE(p.exit_code == 0, p.output);
  const std::string pre_ckpt = pre + "/checkpoints/last.ckpt";
  const cairn::Value pre_state = cairn::read_checkpoint(pre_ckpt).at("state_dict");

  const std::string ref = dir / "ref";
  test::write_file(dir / "ref.yaml", finetune_config(ref, pre_ckpt, 4));
  auto r = test::cairn_cli({"fit", "--config", dir / "ref.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("model.init_from " + pre_ckpt + ": loaded 2 tensor(s); skipped 2 (excluded: 3.weight, 3.bias); "
                      "left new 2 (3.weight, 3.bias)") != std::string::npos);
  CHECK(r.output.find("frozen 2 parameter tensor(s) matching '^1\\.'; the finetuning callback unfreezes them at epoch 2 "
                      "(lr 0.001)") != std::string::npos);
  CHECK(r.output.find("finetuning: epoch 2 unfreezes") != std::string::npos);
  const cairn::Value a = cairn::read_checkpoint(ref + "/checkpoints/last.ckpt");
  // The backbone trained only after the unfreeze: it differs from the pretrained one at the end...
  CHECK_FALSE(a.at("state_dict").at("1.weight").equals(pre_state.at("1.weight")));
  CHECK(a.at("callbacks").at("Finetuning").at("unfrozen").to_bool());
  CHECK(a.at("optimizer_states").items().at(0).at("param_groups").size() == 2);
  // ... and a run stopped at epoch 2 (before the unfreeze) still holds it unchanged.
  for (int stop : {2, 3}) {
    const std::string run = dir / ("run" + std::to_string(stop));
    test::write_file(dir / "a.yaml", finetune_config(run, pre_ckpt, stop));
    auto s1 = test::cairn_cli({"fit", "--config", dir / "a.yaml"});
    REQUIRE_MESSAGE(s1.exit_code == 0, s1.output);
    const cairn::Value mid = cairn::read_checkpoint(run + "/checkpoints/last.ckpt");
    CHECK(mid.at("callbacks").at("Finetuning").at("unfrozen").to_bool() == (stop == 3));
    if (stop == 2) CHECK(mid.at("state_dict").at("1.weight").equals(pre_state.at("1.weight")));
    test::write_file(dir / "b.yaml", finetune_config(run, pre_ckpt, 4));
    auto s2 = test::cairn_cli({"fit", "--config", dir / "b.yaml"});
    REQUIRE_MESSAGE(s2.exit_code == 0, s2.output);
    const cairn::Value b = cairn::read_checkpoint(run + "/checkpoints/last.ckpt");
    INFO("stopped after epoch " << stop);
    CHECK(b.at("state_dict").equals(a.at("state_dict")));
    CHECK(b.at("optimizer_states").equals(a.at("optimizer_states")));
  }
  // Bad input: a freeze pattern that matches nothing names the key and the model's names.
  std::string bad = finetune_config(dir / "bad", pre_ckpt, 1);
  bad.replace(bad.find("freeze: ['^1\\.']"), 16, "freeze: ['^backbone']");
  test::write_file(dir / "bad.yaml", bad);
  auto e = test::cairn_cli({"fit", "--config", dir / "bad.yaml"});
  CHECK(e.exit_code == 2);
  CHECK(e.output.find("trainer.freeze") != std::string::npos);
  CHECK(e.output.find("matches no parameter; the model's are 1.weight, 1.bias, 3.weight, 3.bias") != std::string::npos);
}
