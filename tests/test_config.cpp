// Strict YAML: every malformed config is exit code 2 with file, line, column and key.
#include "support.h"

namespace {
const char* kGood =
    "name: t\n"                                                      // 1
    "seed: 1\n"                                                      // 2
    "data: {name: synthetic, train_size: 64, batch_size: 16}\n"      // 3
    "model: {name: mlp, hidden: [8]}\n"                              // 4
    "optimizer: {name: sgd, lr: 0.1, momentum: 0.9}\n"               // 5
    "trainer: {max_epochs: 1}\n"                                     // 6
    "callbacks:\n"                                                   // 7
    "  - {name: checkpoint, monitor: valid/acc, mode: max}\n";       // 8

struct Bad {
  const char* what;
  std::string yaml;
  std::string key;       //!< the key path the message must name
  std::string location;  //!< ":line:" (or "--set ...") the message must contain
};

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const auto p = s.find(from);
  REQUIRE_MESSAGE(p != std::string::npos, from);
  return s.replace(p, from.size(), to);
}
}  // namespace

TEST_CASE("the reference config is valid") {
  test::TempDir dir("cfg_ok");
  test::write_file(dir / "c.yaml", kGood);
  auto r = test::cairn_cli({"print-config", "--config", dir / "c.yaml"});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("momentum: 0.9") != std::string::npos);
  CHECK(r.output.find("save_top_k: 1") != std::string::npos);  // defaults are resolved
  CHECK(r.output.find("name: csv_logger") != std::string::npos);  // default callbacks are listed
}

TEST_CASE("malformed configs: exit code 2, naming file, line, column and key") {
  const std::string g = kGood;
  const std::vector<Bad> cases = {
      {"unknown top-level key", g + "trainr: {max_epochs: 2}\n", "trainr", ":9:1"},
      {"unknown nested key", replace(g, "lr: 0.1", "lrr: 0.1"), "optimizer.lrr", ":5:"},
      {"duplicate top-level key", g + "seed: 2\n", "seed", ":9:1"},
      {"duplicate nested key", replace(g, "{max_epochs: 1}", "{max_epochs: 1, max_epochs: 2}"), "trainer.max_epochs", ":6:"},
      {"string for an integer", replace(g, "max_epochs: 1", "max_epochs: ten"), "trainer.max_epochs", ":6:"},
      {"float for an integer", replace(g, "max_epochs: 1", "max_epochs: 1.5"), "trainer.max_epochs", ":6:"},
      {"negative epochs", replace(g, "max_epochs: 1", "max_epochs: -1"), "trainer.max_epochs", ":6:"},
      {"zero learning rate", replace(g, "lr: 0.1", "lr: 0"), "optimizer.lr", ":5:"},
      {"momentum above 1", replace(g, "momentum: 0.9", "momentum: 1.5"), "optimizer.momentum", ":5:"},
      {"bad enum", replace(g, "mode: max", "mode: maxx"), "callbacks[0].mode", ":8:"},
      {"unknown callback", replace(g, "name: checkpoint", "name: chekpoint"), "callbacks[0].name", ":8:"},
      {"unknown model", replace(g, "name: mlp", "name: transformer"), "model.name", ":4:"},
      {"unknown optimizer", replace(g, "name: sgd", "name: lamb"), "optimizer.name", ":5:"},
      {"list expected", replace(g, "hidden: [8]", "hidden: 8"), "model.hidden", ":4:"},
      {"mapping expected", replace(g, "trainer: {max_epochs: 1}", "trainer: fast"), "trainer", ":6:"},
      {"callbacks not a list", replace(g, "callbacks:\n  - {name: checkpoint, monitor: valid/acc, mode: max}\n", "callbacks: {name: csv_logger}\n"), "callbacks", ":7:"},
      {"missing data section", replace(g, "data: {name: synthetic, train_size: 64, batch_size: 16}\n", ""), "data", ":1:"},
      {"missing model name", replace(g, "{name: mlp, hidden: [8]}", "{hidden: [8]}"), "model.name", ":4:"},
      {"boolean expected", replace(g, "mode: max}", "mode: max, save_last: maybe}"), "callbacks[0].save_last", ":8:"},
      {"bad filename format", replace(g, "mode: max}", "mode: max, filename: \"{valid/acc:%d}\"}"), "callbacks[0].filename", ":8:"},
      {"yaml syntax error", replace(g, "hidden: [8]}", "hidden: [8}"), "", ":4:"},
      {"bad device", replace(g, "{max_epochs: 1}", "{max_epochs: 1, device: tpu}"), "trainer.device", ":6:"},
      {"nesterov without momentum", replace(g, "momentum: 0.9}", "nesterov: true}"), "optimizer.nesterov", ":5:"},
  };
  REQUIRE(cases.size() >= 15);
  test::TempDir dir("cfg_bad");
  for (const auto& c : cases) {
    CAPTURE(std::string(c.what));
    const std::string file = dir / "bad.yaml";
    test::write_file(file, c.yaml);
    for (const char* cmd : {"print-config", "fit"}) {
      auto r = test::cairn_cli({cmd, "--config", file, "--run-dir", dir / "run"});
      CAPTURE(std::string(cmd));
      CAPTURE(r.output);
      CHECK(r.exit_code == 2);
      CHECK(r.output.find(file + c.location) != std::string::npos);
      if (!c.key.empty()) CHECK(r.output.find(c.key + ":") != std::string::npos);
      CHECK(r.output.find("terminate called") == std::string::npos);  // no uncaught exception
    }
  }
}

TEST_CASE("unknown keys come with a suggestion") {
  test::TempDir dir("cfg_suggest");
  test::write_file(dir / "c.yaml", replace(kGood, "lr: 0.1", "lrr: 0.1"));
  auto r = test::cairn_cli({"print-config", "--config", dir / "c.yaml"});
  CHECK(r.output.find("did you mean 'lr'?") != std::string::npos);
}

TEST_CASE("--set overrides use the same paths and checks") {
  test::TempDir dir("cfg_set");
  test::write_file(dir / "c.yaml", kGood);
  auto ok = test::cairn_cli({"print-config", "--config", dir / "c.yaml", "--set", "optimizer.lr=0.5", "--set",
                             "callbacks[0].mode=min", "--set", "model.hidden=[16, 4]"});
  REQUIRE_MESSAGE(ok.exit_code == 0, ok.output);
  CHECK(ok.output.find("lr: 0.5") != std::string::npos);
  CHECK(ok.output.find("mode: min") != std::string::npos);
  CHECK(ok.output.find("hidden: [16, 4]") != std::string::npos);

  auto bad_value = test::cairn_cli({"print-config", "--config", dir / "c.yaml", "--set", "optimizer.lr=-1"});
  CHECK(bad_value.exit_code == 2);
  CHECK(bad_value.output.find("--set optimizer.lr=-1: optimizer.lr:") != std::string::npos);
  auto bad_key = test::cairn_cli({"print-config", "--config", dir / "c.yaml", "--set", "trainer.max_epoch=3"});
  CHECK(bad_key.exit_code == 2);
  CHECK(bad_key.output.find("trainer.max_epoch") != std::string::npos);
  CHECK(bad_key.output.find("did you mean 'max_epochs'?") != std::string::npos);
  auto bad_index = test::cairn_cli({"print-config", "--config", dir / "c.yaml", "--set", "callbacks[3].mode=min"});
  CHECK(bad_index.exit_code == 2);
  auto no_eq = test::cairn_cli({"print-config", "--config", dir / "c.yaml", "--set", "optimizer.lr"});
  CHECK(no_eq.exit_code == 2);
}

TEST_CASE("command-line mistakes are exit code 2 with usage, never a crash") {
  test::TempDir dir("cfg_cli");
  CHECK(test::cairn_cli({}).exit_code == 2);
  CHECK(test::cairn_cli({"train"}).exit_code == 2);
  CHECK(test::cairn_cli({"fit"}).exit_code == 2);
  CHECK(test::cairn_cli({"fit", "--config"}).exit_code == 2);
  CHECK(test::cairn_cli({"fit", "--config", dir / "missing.yaml"}).exit_code == 2);
  const auto folder = test::cairn_cli({"print-config", "--config", dir.path.string()});
  CHECK(folder.exit_code == 2);
  CHECK_MESSAGE(folder.output.find("is a folder, not a config file") != std::string::npos, folder.output);
  CHECK(test::cairn_cli({"fit", "--bogus"}).exit_code == 2);
  auto help = test::cairn_cli({"--help"});
  CHECK(help.exit_code == 0);
  CHECK(help.output.find("cairn fit --config FILE") != std::string::npos);
}

TEST_CASE("the shipped configs are valid") {
  for (const auto& e : test::fs::directory_iterator(std::string(CAIRN_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    CAPTURE(e.path().string());
    auto r = test::cairn_cli({"print-config", "--config", e.path().string()});
    CHECK_MESSAGE(r.exit_code == 0, r.output);
    // Real defaults, not placeholders: the checkpoint folder, file names, the loggers' files.
    CHECK_MESSAGE(r.output.find(": \"\"") == std::string::npos, r.output);
    CHECK(r.output.find("dirpath: runs/" + e.path().stem().string() + "/checkpoints") != std::string::npos);
    CHECK(r.output.find("path: runs/" + e.path().stem().string() + "/metrics.csv") != std::string::npos);
  }
}
