// Quick iterations: trainer.max_steps (a stop after a step, resumed exactly
// with more steps) and cairn fit --fast-dev-run (a few batches of each split,
// nothing written to the run folder). data.limit_* is in test_objectives.
#include "support.h"

#include <cairn/run_checkpoint.h>

namespace {
std::string config(const std::string& run, const std::string& trainer_extra, const std::string& callbacks = "", int epochs = 5) {
  return "name: quick\nseed: 9\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 256, valid_size: 64, test_size: 64, batch_size: 32}\n"
         "model: {name: mlp, hidden: [16]}\noptimizer: {name: adam, lr: 0.01}\n"
         "trainer: {max_epochs: " + std::to_string(epochs) + ", threads: 1, enable_progress_bar: false" + trainer_extra + "}\n" + callbacks;
}
}  // namespace

TEST_CASE("trainer.max_steps stops after that step, mid-epoch; more steps resume at that batch, bit-identical") {
  test::TempDir dir("max_steps");
  const std::string ref = dir / "ref", run = dir / "run";
  test::write_file(dir / "ref.yaml", config(ref, ", max_steps: 20"));
  auto r = test::cairn_cli({"fit", "--config", dir / "ref.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const cairn::Value a = cairn::read_checkpoint(ref + "/checkpoints/last.ckpt");
  CHECK(a.at("global_step").to_int() == 20);  // 8 steps an epoch: epoch 2, batch 4
  CHECK(a.at("epoch").to_int() == 2);
  CHECK(a.at("batch_in_epoch").to_int() == 4);
  CHECK(a.at("loop").at("stop_reason").to_string() == "max_steps: 20 optimizer steps done");

  test::write_file(dir / "run.yaml", config(run, ", max_steps: 12"));
  auto first = test::cairn_cli({"fit", "--config", dir / "run.yaml"});
  REQUIRE_MESSAGE(first.exit_code == 0, first.output);
  CHECK(cairn::read_checkpoint(run + "/checkpoints/last.ckpt").at("global_step").to_int() == 12);
  // The same max_steps again: finished, nothing to do.
  auto again = test::cairn_cli({"fit", "--config", dir / "run.yaml"});
  CHECK(again.exit_code == 0);
  CHECK(again.output.find("already finished (max_steps: 12") != std::string::npos);
  // More steps: it continues at epoch 1, batch 4 and ends where the reference ended.
  auto more = test::cairn_cli({"fit", "--config", dir / "run.yaml", "--set", "trainer.max_steps=20"});
  REQUIRE_MESSAGE(more.exit_code == 0, more.output);
  const cairn::Value b = cairn::read_checkpoint(run + "/checkpoints/last.ckpt");
  CHECK(b.at("global_step").to_int() == 20);
  CHECK(b.at("state_dict").equals(a.at("state_dict")));
  CHECK(b.at("optimizer_states").equals(a.at("optimizer_states")));
  // Bad input names the key.
  test::write_file(dir / "bad.yaml", config(dir / "bad", ", max_steps: 0"));
  auto bad = test::cairn_cli({"fit", "--config", dir / "bad.yaml"});
  CHECK(bad.exit_code == 2);
  CHECK(bad.output.find("trainer.max_steps") != std::string::npos);
}

TEST_CASE("cairn fit --fast-dev-run [N]: N batches of each split, one epoch, nothing written to the run folder") {
  test::TempDir dir("fast_dev_run");
  const std::string run = dir / "run";
  test::write_file(dir / "q.yaml", config(run, "", "callbacks:\n  - {name: checkpoint, monitor: valid/acc, mode: max}\n"));
  auto r = test::cairn_cli({"fit", "--config", dir / "q.yaml", "--fast-dev-run", "2"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("fast dev run: 2 batch(es) of 32 examples from each split") != std::string::npos);
  CHECK(r.output.find("fast dev run passed: ") != std::string::npos);
  CHECK(r.output.find("valid/acc") != std::string::npos);
  CHECK(r.output.find("test/acc") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(run));
  // The scratch folder it named is gone.
  const auto at = r.output.find(" in /");
  REQUIRE(at != std::string::npos);
  const std::string scratch = r.output.substr(at + 4, r.output.find(" (removed", at) - at - 4);
  CHECK(scratch.find("cairn-fast-dev-run-") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(scratch));
  // Default N is 1; a callback writing to a path of its own is refused, not allowed to write.
  auto one = test::cairn_cli({"fit", "--config", dir / "q.yaml", "--fast-dev-run"});
  CHECK(one.exit_code == 0);
  CHECK(one.output.find("1 batch(es) of 32") != std::string::npos);
  test::write_file(dir / "p.yaml", config(run, "", "callbacks:\n  - {name: csv_logger, path: " + (dir / "m.csv") + "}\n"));
  auto p = test::cairn_cli({"fit", "--config", dir / "p.yaml", "--fast-dev-run"});
  CHECK(p.exit_code == 2);
  CHECK(p.output.find("callbacks[0].path is set") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "m.csv"));
  CHECK_FALSE(std::filesystem::exists(run));
}

TEST_CASE("trainer.val_check_interval validates inside the epoch; checkpoints rank those scores; a resume at such a "
          "point runs the validation it missed and ends bit-identical") {
  test::TempDir dir("val_check");
  const std::string cb = "callbacks:\n  - {name: checkpoint, monitor: valid/acc, mode: max, save_top_k: -1, every_n_train_steps: 2}\n";
  const std::string ref = dir / "ref", run = dir / "run";
  // 8 batches an epoch: validation after batches 4 and 8 (the epoch's end), as 0.5 of the epoch or every 4.
  test::write_file(dir / "ref.yaml", config(ref, ", val_check_interval: 0.5", cb, 3));
  auto r = test::cairn_cli({"fit", "--config", dir / "ref.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const cairn::Value a = cairn::read_checkpoint(ref + "/checkpoints/last.ckpt");
  const cairn::run_checkpoint::View va(a);
  std::vector<int64_t> steps;
  for (const auto& s : va.series()) {
    if (s.name == "valid/loss") steps = s.step;
  }
  CHECK(steps == std::vector<int64_t>{4, 8, 12, 16, 20, 24});
  // A file for each validation's score, the mid-epoch ones included.
  int mid = 0;
  for (const auto& e : std::filesystem::directory_iterator(ref + "/checkpoints")) {
    const std::string f = e.path().filename().string();
    if (f.find("step=12-valid_acc=") != std::string::npos || f.find("step=4-valid_acc=") != std::string::npos) ++mid;
  }
  CHECK(mid == 2);
  // Stopped at step 12 (max_steps: before that point's validation), resumed: it validates first, then goes on.
  test::write_file(dir / "run.yaml", config(run, ", val_check_interval: 4, max_steps: 12", cb, 3));
  auto first = test::cairn_cli({"fit", "--config", dir / "run.yaml"});
  REQUIRE_MESSAGE(first.exit_code == 0, first.output);
  auto rest = test::cairn_cli({"fit", "--config", dir / "run.yaml", "--set", "trainer.max_steps=100"});
  REQUIRE_MESSAGE(rest.exit_code == 0, rest.output);
  const cairn::Value b = cairn::read_checkpoint(run + "/checkpoints/last.ckpt");
  CHECK(b.at("state_dict").equals(a.at("state_dict")));
  for (const char* m : {"valid/loss", "valid/acc", "train/loss", "train/acc"}) {
    INFO(m);
    CHECK(b.at("metrics").at(m).at("step").equals(a.at("metrics").at(m).at("step")));
    CHECK(b.at("metrics").at(m).at("value").equals(a.at("metrics").at(m).at("value")));
  }
  // Larger than an epoch: refused before training, naming the key and the epoch's batches.
  test::write_file(dir / "big.yaml", config(dir / "big", ", val_check_interval: 9", cb));
  auto big = test::cairn_cli({"fit", "--config", dir / "big.yaml"});
  CHECK(big.exit_code == 2);
  CHECK(big.output.find("trainer.val_check_interval is 9 batches, but an epoch has 8") != std::string::npos);
}

TEST_CASE("a callback's stop at the step max_steps reaches is the run's reason: more steps do not reopen it") {
  test::TempDir dir("max_steps_early");
  // max_steps at an epoch's last batch (8 an epoch): that epoch validates, and early stopping stops there.
  test::write_file(dir / "e.yaml", config(dir / "run", ", max_steps: 8",
                                          "callbacks:\n  - {name: early_stopping, monitor: valid/loss, stopping_threshold: 100}\n"));
  auto r = test::cairn_cli({"fit", "--config", dir / "e.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const cairn::Value c = cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt");
  CHECK(c.at("loop").at("stop_reason").to_string().rfind("early stopping", 0) == 0);
  auto more = test::cairn_cli({"fit", "--config", dir / "e.yaml", "--set", "trainer.max_steps=100"});
  CHECK(more.exit_code == 0);
  CHECK_MESSAGE(more.output.find("already finished (early stopping") != std::string::npos, more.output);
  CHECK(cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt").at("global_step").to_int() == 8);
}

TEST_CASE("SWA's model_weights tag names the average only until a run given more epochs trains on from it") {
  test::TempDir dir("swa_more");
  const std::string swa = "callbacks:\n  - {name: swa, swa_lrs: 0.005, swa_epoch_start: 1, annealing_epochs: 1}\n";
  test::write_file(dir / "s.yaml", config(dir / "run", "", swa, 3));
  auto r = test::cairn_cli({"fit", "--config", dir / "s.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(cairn::run_checkpoint::View(cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt")).evaluated_kind() == "swa");
  test::write_file(dir / "s4.yaml", config(dir / "run", "", swa, 4));
  auto more = test::cairn_cli({"fit", "--config", dir / "s4.yaml"});
  REQUIRE_MESSAGE(more.exit_code == 0, more.output);
  const cairn::Value c = cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt");
  CHECK(c.at("epoch").to_int() == 4);
  CHECK(cairn::run_checkpoint::View(c).evaluated_kind() == "model");
}
