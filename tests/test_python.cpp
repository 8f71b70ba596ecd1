// Interop with Python PyTorch (Debian's python3-torch at /usr/bin/python3).
#include "support.h"

#include <cairn/callbacks.h>

TEST_CASE("Python reads every key of a cairn checkpoint with weights_only=True") {
  test::TempDir dir("py_read");
  test::write_file(dir / "c.yaml", test::small_config(dir / "run", "", 1, 320));
  auto fit = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  REQUIRE_MESSAGE(fit.exit_code == 0, fit.output);
  const auto files = cairn::list_checkpoints(dir / "run/checkpoints");
  REQUIRE(files.size() >= 2);
  for (const auto& f : files) {
    auto r = test::python("read_checkpoint.py", {f});
    CHECK_MESSAGE(r.exit_code == 0, f << ": " << r.output);
    CHECK(r.output.rfind("OK ", 0) == 0);
    CHECK(r.output.find("\"1.weight\": [32, 784]") != std::string::npos);
    CHECK(r.output.find("\"valid/acc\"") != std::string::npos);
  }
}

TEST_CASE("user values of every kind reach Python") {
  test::TempDir dir("py_values");
  cairn::Loop loop;
  loop.values().set("n_classes", int64_t{1000});
  loop.values().set("name", std::string("resnet"));
  loop.values().set("ratios", std::vector<double>{0.5, 0.25});
  loop.values().set("mean", torch::tensor({0.1, 0.2, 0.3}));
  cairn::write_checkpoint(dir / "v.ckpt", loop.make_checkpoint());
  auto r = test::python("read_checkpoint.py", {dir / "v.ckpt"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("\"n_classes\": 1000") != std::string::npos);
  CHECK(r.output.find("\"name\": \"resnet\"") != std::string::npos);
  CHECK(r.output.find("\"ratios\": [0.5, 0.25]") != std::string::npos);
  CHECK(r.output.find("\"mean\": [0.1") != std::string::npos);
}

TEST_CASE("cairn starts a model from a state_dict saved by Python's torch.save") {
  test::TempDir dir("py_finetune");
  auto r = test::python("save_state_dict.py", {dir / "pre.pt", "mlp32"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const double expected = std::stod(r.output);
  auto model = cairn::make_mlp({{1, 28, 28}, {32}, 10, 0.2});
  cairn::load_weights(*model, dir / "pre.pt");
  double sum = 0;
  for (const auto& p : model->parameters()) sum += p.to(torch::kDouble).sum().item<double>();
  CHECK(sum == doctest::Approx(expected).epsilon(1e-12));

  // The same through YAML: model.init_from.
  std::string cfg = test::small_config(dir / "run", "", 1, 320);
  cfg.replace(cfg.find("dropout: 0.2}"), 13, "dropout: 0.2, init_from: " + (dir / "pre.pt") + "}");
  test::write_file(dir / "c.yaml", cfg);
  auto fit = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK_MESSAGE(fit.exit_code == 0, fit.output);
}

TEST_CASE("weights that do not match the model are refused with every difference listed") {
  test::TempDir dir("py_mismatch");
  auto r = test::python("save_state_dict.py", {dir / "wrong.pt", "wrong"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  auto model = cairn::make_mlp({{1, 28, 28}, {32}, 10, 0.2});
  std::string message;
  try {
    cairn::load_weights(*model, dir / "wrong.pt");
  } catch (const cairn::CheckpointMismatch& e) {
    message = e.what();
  }
  CHECK(message.find("missing in the checkpoint") != std::string::npos);
  CHECK(message.find("4.bias") != std::string::npos);
  CHECK(message.find("unexpected in the checkpoint") != std::string::npos);
  CHECK(message.find("9.extra") != std::string::npos);
  CHECK(message.find("shape mismatch") != std::string::npos);
  CHECK(message.find("1.weight (checkpoint [16, 784], model [32, 784])") != std::string::npos);

  // Through the CLI: exit code 3.
  std::string cfg = test::small_config(dir / "run", "", 1, 320);
  cfg.replace(cfg.find("dropout: 0.2}"), 13, "dropout: 0.2, init_from: " + (dir / "wrong.pt") + "}");
  test::write_file(dir / "c.yaml", cfg);
  auto fit = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK(fit.exit_code == 3);
  CHECK(fit.output.find("9.extra") != std::string::npos);
}
