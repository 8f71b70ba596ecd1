// After training: `cairn test`, `cairn validate` and `cairn predict` on any
// checkpoint of a run, fit's final test on the best checkpoint, and every
// config shipped in configs/ trained (briefly) for real.
#include "support.h"

#include <cairn/callbacks.h>

#include <cmath>

namespace {
std::string shipped(const std::string& name) { return std::string(CAIRN_SOURCE_DIR) + "/configs/" + name; }

//! A short run of a shipped config: a few hundred real Fashion-MNIST images.
std::vector<std::string> brief(const std::string& config, const std::string& run_dir, int epochs = 1) {
  return {"--config", config, "--run-dir", run_dir, "--set", "data.limit_train=640", "--set",
          "data.limit_test=300", "--set", "trainer.max_epochs=" + std::to_string(epochs), "--set",
          "trainer.log_every_n_steps=5", "--set", "trainer.threads=1"};
}
std::vector<std::string> with(std::vector<std::string> head, const std::vector<std::string>& tail) {
  head.insert(head.end(), tail.begin(), tail.end());
  return head;
}
}  // namespace

TEST_CASE("every config in configs/ is valid and trains (briefly) on the real data") {
  test::TempDir dir("configs");
  int n = 0;
  for (const auto& e : test::fs::directory_iterator(std::string(CAIRN_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    const std::string name = e.path().stem().string();
    CAPTURE(name);
    auto pc = test::cairn_cli({"print-config", "--config", e.path().string()});
    CHECK_MESSAGE(pc.exit_code == 0, pc.output);
    // Fashion-MNIST configs on a few hundred images; the others' data is small already.
    std::vector<std::string> args =
        name.rfind("fashion_mnist", 0) == 0
            ? with({"fit"}, brief(e.path().string(), dir / name))
            : std::vector<std::string>{"fit", "--config", e.path().string(), "--run-dir", dir / name, "--set",
                                       "trainer.max_epochs=2", "--set", "trainer.threads=1"};
    if (name.find("2proc") != std::string::npos) args.insert(args.end(), {"--nproc", "2"});
    if (name.find("shards") != std::string::npos) {
      // Its shards are made first, by the documented converter (python/fashion_mnist_to_shards.py).
      const std::string data = dir / (name + "-data");
      auto made = test::run({CAIRN_PYTHON, std::string(CAIRN_SOURCE_DIR) + "/python/fashion_mnist_to_shards.py", data,
                             "--limit", "2000", "--per-shard", "700"});
      REQUIRE_MESSAGE(made.exit_code == 0, made.output);
      args.insert(args.end(), {"--set", "data.path=" + data + "/train", "--set", "data.valid_path=" + data + "/valid",
                               "--set", "data.test_path=" + data + "/test"});
    }
    auto r = test::cairn_cli(args);
    CHECK_MESSAGE(r.exit_code == 0, r.output);
    CHECK(r.output.find("cairn: finished") != std::string::npos);
    CHECK(test::fs::exists(dir / (name + "/checkpoints/last.ckpt")));
    // Each config's own metrics reached the test split, with finite values.
    const cairn::Value last = cairn::read_checkpoint(dir / (name + "/checkpoints/last.ckpt"));
    const cairn::Value& metrics = last.at("metrics");
    for (const auto& m : last.at("hyper_parameters").at("metrics").items()) {
      const std::string logged = m.at("name").to_string() == "accuracy" ? "acc"
                                 : m.at("name").to_string() == "f1"     ? "f1_" + m.at("average").to_string()
                                                                        : m.at("name").to_string();
      CAPTURE(logged);
      REQUIRE(metrics.contains("test/" + logged));
      CHECK(std::isfinite(metrics.at("test/" + logged).at("value").to_tensor()[-1].item<double>()));
    }
  }
  CHECK(n >= 6);
}

TEST_CASE("fit tests the best checkpoint and says so; test and validate evaluate any checkpoint without changing the run") {
  test::TempDir dir("after");
  const std::string run = dir / "run", cfg = shipped("fashion_mnist_mlp.yaml");
  auto fit = test::cairn_cli(with({"fit"}, brief(cfg, run, 2)));
  REQUIRE_MESSAGE(fit.exit_code == 0, fit.output);
  const cairn::Value last = cairn::read_checkpoint(run + "/checkpoints/last.ckpt");
  // The run keeps its files by name, in its checkpoint folder.
  const std::string best_name =
      last.at("callbacks").at("Checkpoint{monitor=valid/acc,mode=max}").at("best_model_path").to_string();
  REQUIRE(!best_name.empty());
  CHECK(best_name.find('/') == std::string::npos);
  const std::string best = run + "/checkpoints/" + best_name;
  CHECK_MESSAGE(fit.output.find("cairn: testing the best checkpoint " + best) != std::string::npos, fit.output);
  // The run's own state keeps the final weights (last.ckpt is what a resume continues).
  const cairn::Value best_file = cairn::read_checkpoint(best);
  CHECK(last.at("global_step").to_int() >= best_file.at("global_step").to_int());

  const auto before = test::read_file(run + "/metrics.csv");
  const auto mtime = test::fs::last_write_time(run + "/checkpoints/last.ckpt");
  auto t = test::cairn_cli({"test", "--config", cfg, "--run-dir", run, "--ckpt", "best", "--json", "--set",
                            "data.limit_test=300"});
  REQUIRE_MESSAGE(t.exit_code == 0, t.output);
  CHECK(t.output.find("\"checkpoint\": \"" + best + "\"") != std::string::npos);
  CHECK(t.output.find("\"test/acc\": ") != std::string::npos);
  // The same number fit's own test pass logged (same weights, same 300 images).
  const double logged = last.at("metrics").at("test/acc").at("value").to_tensor()[-1].item<double>();
  const std::string acc = t.output.substr(t.output.find("\"test/acc\": ") + 12);
  CHECK(std::stod(acc) == doctest::Approx(logged).epsilon(1e-9));
  auto v = test::cairn_cli({"validate", "--config", cfg, "--run-dir", run, "--ckpt", "last", "--set",
                            "data.limit_train=640"});
  REQUIRE_MESSAGE(v.exit_code == 0, v.output);
  CHECK(v.output.find("valid/acc") != std::string::npos);
  CHECK(v.output.find("checkpoint   " + run + "/checkpoints/last.ckpt") != std::string::npos);
  // Nothing of the run changed.
  CHECK(test::read_file(run + "/metrics.csv") == before);
  CHECK(test::fs::last_write_time(run + "/checkpoints/last.ckpt") == mtime);

  // predict: a torch.load-able dict of tensors, and a CSV, one row per example.
  auto p = test::cairn_cli({"predict", "--config", cfg, "--run-dir", run, "--ckpt", "best", "--set",
                            "data.limit_test=300", "--out", dir / "pred.pt"});
  REQUIRE_MESSAGE(p.exit_code == 0, p.output);
  const cairn::Value pred = cairn::read_checkpoint(dir / "pred.pt");
  CHECK(pred.at("outputs").to_tensor().sizes() == std::vector<int64_t>{300, 10});
  CHECK(pred.at("predictions").to_tensor().sizes() == std::vector<int64_t>{300});
  const double agree = pred.at("predictions").to_tensor().eq(pred.at("targets").to_tensor()).to(torch::kDouble).mean().item<double>();
  CHECK(agree == doctest::Approx(logged).epsilon(1e-9));
  auto py = test::python("read_predictions.py", {dir / "pred.pt"});
  CHECK_MESSAGE(py.exit_code == 0, py.output);
  CHECK(py.output.find("outputs (300, 10)") != std::string::npos);
  auto c = test::cairn_cli({"predict", "--config", cfg, "--run-dir", run, "--ckpt", "last", "--split", "valid",
                            "--set", "data.limit_train=640", "--out", dir / "pred.csv"});
  REQUIRE_MESSAGE(c.exit_code == 0, c.output);
  const std::string csv = test::read_file(dir / "pred.csv");
  CHECK(csv.rfind("index,prediction,output_0,", 0) == 0);
  CHECK(std::count(csv.begin(), csv.end(), '\n') > 10);  // a header and a row per validation example
  CHECK(csv.find("\n0,") != std::string::npos);
}

TEST_CASE("test, validate and predict refuse what cannot be met, with exit 2 naming what exists") {
  test::TempDir dir("after_bad");
  const std::string run = dir / "run", cfg = shipped("fashion_mnist_mlp.yaml");
  // No checkpoint yet.
  auto none = test::cairn_cli({"test", "--config", cfg, "--run-dir", run});
  CHECK(none.exit_code == 2);
  CHECK(none.output.find("the run has no checkpoint in " + run + "/checkpoints") != std::string::npos);
  // A run without a monitor: --ckpt best names the newest file instead.
  auto fit = test::cairn_cli(with({"fit"}, with(brief(cfg, run), {"--set", "callbacks=[{name: checkpoint}]"})));
  REQUIRE_MESSAGE(fit.exit_code == 0, fit.output);
  CHECK(fit.output.find("cairn: testing the final weights (no best checkpoint") != std::string::npos);
  auto best = test::cairn_cli({"test", "--config", cfg, "--run-dir", run, "--ckpt", "best"});
  CHECK(best.exit_code == 2);
  CHECK_MESSAGE(best.output.find("no checkpoint callback monitors one") != std::string::npos, best.output);
  CHECK_MESSAGE(best.output.find("the newest is " + run + "/checkpoints/last.ckpt, which last chooses") != std::string::npos, best.output);
  // Another model than the checkpoint's: every differing key and shape named.
  auto other = test::cairn_cli({"test", "--config", cfg, "--run-dir", run, "--ckpt", "last", "--set",
                                "model.hidden=[64]"});
  CHECK(other.exit_code == 2);
  CHECK_MESSAGE(other.output.find("does not match the config's model") != std::string::npos, other.output);
  CHECK(other.output.find("1.weight (checkpoint [256, 784], model [64, 784])") != std::string::npos);
  auto txt = test::cairn_cli({"predict", "--config", cfg, "--run-dir", run, "--ckpt", "last", "--out", dir / "p.txt"});
  CHECK(txt.exit_code == 2);
  CHECK(txt.output.find("must end in .pt or .csv") != std::string::npos);
  auto missing = test::cairn_cli({"predict", "--config", cfg, "--run-dir", run, "--ckpt", dir / "nope.ckpt", "--out",
                                  dir / "p.pt"});
  CHECK(missing.exit_code == 2);
  // Help is not an error.
  auto help = test::cairn_cli({"fit", "--help"});
  CHECK(help.exit_code == 0);
  CHECK(help.output.find("cairn predict") != std::string::npos);
}

TEST_CASE("predict --input: examples from a file (.pt or .csv, labels optional); a file of the wrong shape is exit 2") {
  test::TempDir dir("predict_input");
  const std::string cfg = shipped("tabular_csv.yaml"), run = dir / "run";
  auto fit = test::cairn_cli({"fit", "--config", cfg, "--run-dir", run, "--set", "trainer.max_epochs=2"});
  REQUIRE_MESSAGE(fit.exit_code == 0, fit.output);
  auto predict = [&](const std::string& input, const std::string& out) {
    return test::cairn_cli({"predict", "--config", cfg, "--run-dir", run, "--ckpt", "best", "--input", input, "--out", out});
  };
  // The test split's own file, and the same rows without the label column, predict the same outputs.
  const std::string test_csv = std::string(CAIRN_SOURCE_DIR) + "/configs/data/tabular_test.csv";
  REQUIRE(predict(test_csv, dir / "a.pt").exit_code == 0);
  std::string no_label, line;
  {
    std::istringstream in(test::read_file(test_csv));
    while (std::getline(in, line)) no_label += line.substr(0, line.rfind(',')) + "\n";
  }
  test::write_file(dir / "features.csv", no_label);
  auto b = predict(dir / "features.csv", dir / "b.pt");
  REQUIRE_MESSAGE(b.exit_code == 0, b.output);
  CHECK(b.output.find("wrote 300 predictions of " + (dir / "features.csv")) != std::string::npos);
  const cairn::Value pa = cairn::read_checkpoint(dir / "a.pt"), pb = cairn::read_checkpoint(dir / "b.pt");
  CHECK(torch::equal(pa.at("outputs").to_tensor(), pb.at("outputs").to_tensor()));
  CHECK(pa.contains("targets"));
  CHECK_FALSE(pb.contains("targets"));
  // The same examples as a torch.save dict {'x': ...}.
  cairn::Value x = cairn::Value::dict();
  x.set("x", cairn::read_checkpoint(dir / "a.pt").at("outputs").to_tensor().new_zeros({7, 5}));
  cairn::write_checkpoint(dir / "x.pt", x);
  auto c = predict(dir / "x.pt", dir / "c.csv");
  REQUIRE_MESSAGE(c.exit_code == 0, c.output);
  CHECK(test::read_file(dir / "c.csv").rfind("index,prediction,output_0,output_1\n", 0) == 0);
  // Wrong inputs name the key and both shapes.
  x.set("x", torch::zeros({7, 4}));
  cairn::write_checkpoint(dir / "narrow.pt", x);
  auto d = predict(dir / "narrow.pt", dir / "d.csv");
  CHECK(d.exit_code == 2);
  CHECK_MESSAGE(d.output.find("'x' holds examples shaped [4] but the model was trained on examples shaped [5]") != std::string::npos, d.output);
  // Columns in another order: the same count, other features: refused, naming both orders.
  {
    std::string swapped;
    std::istringstream in(test::read_file(test_csv));
    while (std::getline(in, line)) {
      const auto a = line.find(','), b = line.find(',', a + 1);
      swapped += line.substr(a + 1, b - a - 1) + "," + line.substr(0, a) + line.substr(b) + "\n";
    }
    test::write_file(dir / "swapped.csv", swapped);
    auto s = predict(dir / "swapped.csv", dir / "s.csv");
    CHECK(s.exit_code == 2);
    CHECK_MESSAGE(s.output.find("has the feature columns monthly, tenure, tickets, age, discount; the model was trained on "
                                "tenure, monthly, tickets, age, discount") != std::string::npos,
                  s.output);
  }
  cairn::Value wrong = cairn::Value::dict();
  wrong.set("inputs", torch::zeros({7, 5}));
  cairn::write_checkpoint(dir / "wrong.pt", wrong);
  auto e = predict(dir / "wrong.pt", dir / "e.csv");
  CHECK(e.exit_code == 2);
  CHECK_MESSAGE(e.output.find("expected a dict with a tensor 'x'") != std::string::npos, e.output);
}

TEST_CASE("each subcommand refuses options it does not use; test and validate --input measure a labelled file; "
          "predict defaults --ckpt as test does") {
  test::TempDir dir("after_options");
  const std::string cfg = shipped("tabular_csv.yaml"), run = dir / "run";
  // Refused before anything is read or trained: exit 2 naming the option and who takes it.
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> refused{
      {{"test", "--config", cfg, "--split", "train"}, "--split is not an option of test; it goes with: predict"},
      {{"validate", "--config", cfg, "--out", "x.csv"}, "--out is not an option of validate; it goes with: export, predict, report"},
      {{"fit", "--config", cfg, "--ckpt", "best"}, "--ckpt is not an option of fit; it goes with: export, predict, test, validate"},
      {{"fit", "--config", cfg, "--json"}, "--json is not an option of fit; it goes with: inspect, test, validate"},
      {{"predict", "--config", cfg, "--overwrite"}, "--overwrite is not an option of predict; it goes with: fit"},
      {{"inspect", "x.ckpt", "--config", cfg}, "--config is not an option of inspect"},
      {{"fit", "--config", cfg, "stray"}, "fit takes no plain argument ('stray')"},
      // A switch takes no value: --overwrite=false must never mean "overwrite".
      {{"fit", "--config", cfg, "--overwrite=false"}, "unknown option --overwrite=false"},
      {{"fit", "--config", cfg, "--allow-config-change=no"}, "unknown option --allow-config-change=no"},
  };
  for (const auto& c : refused) {
    auto r = test::cairn_cli(c.args);
    CAPTURE(c.says);
    CHECK_MESSAGE(r.exit_code == 2, r.output);
    CHECK_MESSAGE(r.output.find(c.says) != std::string::npos, r.output);
  }
  CHECK_FALSE(test::fs::exists(run));

  auto fit = test::cairn_cli({"fit", "--config", cfg, "--run-dir", run, "--set", "trainer.max_epochs=2"});
  REQUIRE_MESSAGE(fit.exit_code == 0, fit.output);
  // test --input on the test split's own file measures what test measures.
  const std::string test_csv = std::string(CAIRN_SOURCE_DIR) + "/configs/data/tabular_test.csv";
  auto split = test::cairn_cli({"test", "--config", cfg, "--run-dir", run, "--json"});
  auto input = test::cairn_cli({"test", "--config", cfg, "--run-dir", run, "--json", "--input", test_csv});
  REQUIRE_MESSAGE(split.exit_code == 0, split.output);
  REQUIRE_MESSAGE(input.exit_code == 0, input.output);
  const auto metrics_of = [](const std::string& json) { return json.substr(json.find("\"metrics\"")); };
  CHECK(metrics_of(split.output) == metrics_of(input.output));
  CHECK(input.output.find("\"input\": \"" + test_csv + "\"") != std::string::npos);
  // A few rows of it measure something else, on validate too.
  std::string head, line;
  {
    std::istringstream in(test::read_file(test_csv));
    for (int i = 0; i < 41 && std::getline(in, line); ++i) head += line + "\n";
  }
  test::write_file(dir / "head.csv", head);
  auto few = test::cairn_cli({"validate", "--config", cfg, "--run-dir", run, "--json", "--input", dir / "head.csv"});
  REQUIRE_MESSAGE(few.exit_code == 0, few.output);
  CHECK(few.output.find("\"split\": \"valid\"") != std::string::npos);
  CHECK(few.output.find("valid/") != std::string::npos);
  // Without labels there is nothing to measure: exit 2, pointing at predict.
  std::string unlabelled;
  {
    std::istringstream in(head);
    while (std::getline(in, line)) unlabelled += line.substr(0, line.rfind(',')) + "\n";
  }
  test::write_file(dir / "unlabelled.csv", unlabelled);
  auto none = test::cairn_cli({"test", "--config", cfg, "--run-dir", run, "--input", dir / "unlabelled.csv"});
  CHECK(none.exit_code == 2);
  CHECK_MESSAGE(none.output.find("has no labels") != std::string::npos, none.output);
  CHECK(none.output.find("predict writes outputs for unlabelled examples") != std::string::npos);
  // predict without --ckpt takes the best checkpoint, as test does.
  auto predicted = test::cairn_cli({"predict", "--config", cfg, "--run-dir", run, "--out", dir / "p.pt"});
  REQUIRE_MESSAGE(predicted.exit_code == 0, predicted.output);
  const std::string used = cairn::read_checkpoint(dir / "p.pt").at("checkpoint").to_string();
  CHECK_MESSAGE(split.output.find("\"checkpoint\": \"" + used + "\"") != std::string::npos, (split.output + used));
}
