// Your own model and data from Python: `model: {name: torchscript}` trains a
// module saved by torch.jit.script / torch.jit.trace, `data: {name: tensors}`
// reads a dict of tensors saved by torch.save. Real files written by
// python3-torch, real `cairn fit` processes, a real SIGKILL.
#include "support.h"

#include <cmath>
#include <csignal>
#include <thread>

namespace {
std::string user_config(const test::fs::path& dir, const std::string& run, int epochs) {
  std::ostringstream c;
  c << "name: user_model\nseed: 3\nrun: {dir: " << (dir / run) << "}\n"
    << "data: {name: tensors, path: " << (dir / "data.pt") << ", batch_size: 16, valid_fraction: 0.125}\n"
    << "model: {name: torchscript, path: " << (dir / "model.pt") << "}\n"
    << "optimizer: {name: adam, lr: 0.01}\n"
    << "trainer: {max_epochs: " << epochs << ", threads: 1, log_every_n_steps: 8}\n"
    << "callbacks:\n"
    << "  - {name: checkpoint, monitor: valid/acc, mode: max, every_n_train_steps: 4}\n";
  return c.str();
}
}  // namespace

TEST_CASE("a scripted CNN from Python trains, resumes bit-identically after SIGKILL and loads back into Python") {
  test::TempDir dir("user_model");
  auto made = test::python("user_model.py", {"make", dir.path.string()});
  REQUIRE_MESSAGE(made.exit_code == 0, made.output);
  test::write_file(dir / "ref.yaml", user_config(dir.path, "ref", 4));
  test::write_file(dir / "run.yaml", user_config(dir.path, "run", 4));

  auto ref = test::cairn_cli({"fit", "--config", dir / "ref.yaml"});
  REQUIRE_MESSAGE(ref.exit_code == 0, ref.output);

  // The same run, killed once it has saved, then resumed to the end.
  const pid_t pid = test::spawn({CAIRN_CLI, "fit", "--config", dir / "run.yaml"}, dir / "killed.log");
  REQUIRE(test::wait_for_file(dir / "run/checkpoints/last.ckpt"));
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  ::kill(pid, SIGKILL);
  REQUIRE(test::wait_exit(pid) == 128 + SIGKILL);
  const cairn::Value partial = cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt");
  REQUIRE_FALSE(partial.at("loop").at("finished").to_bool());
  auto resumed = test::cairn_cli({"fit", "--config", dir / "run.yaml"});
  REQUIRE_MESSAGE(resumed.exit_code == 0, resumed.output);
  CHECK(resumed.output.find("resum") != std::string::npos);

  const cairn::Value a = cairn::read_checkpoint(dir / "ref/checkpoints/last.ckpt");
  const cairn::Value b = cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt");
  const auto x = test::comparable(a), y = test::comparable(b);
  CHECK_MESSAGE(x.first_difference(y) == "", x.first_difference(y));

  // The Python module's own names, BatchNorm's buffers included.
  const cairn::Value& sd = a.at("state_dict");
  for (const char* k : {"conv.weight", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "head.1.bias"}) {
    CHECK_MESSAGE(sd.contains(k), k);
  }
  CHECK(sd.at("bn.num_batches_tracked").to_tensor().item<int64_t>() > 0);  // train() reached the scripted BatchNorm

  // Python: load_state_dict (strict) into the scripted module and evaluate the
  // weights fit's test pass used (the best checkpoint, when one was kept).
  std::string tested = dir / "ref/checkpoints/last.ckpt";
  for (const auto& m : cairn::run_checkpoint::monitor_summaries(a, tested)) {  // names read in last.ckpt's folder
    if (!m.best_path.empty()) tested = m.best_path;
  }
  CHECK(ref.output.find("cairn: testing the " + std::string(tested.find("last.ckpt") == std::string::npos
                                                                 ? "best checkpoint " + tested
                                                                 : "final weights")) != std::string::npos);
  auto check = test::python("user_model.py", {"check", dir.path.string(), tested});
  REQUIRE_MESSAGE(check.exit_code == 0, check.output);
  double py_acc = -1;
  std::istringstream(check.output.substr(check.output.find("acc ") + 4)) >> py_acc;
  const std::vector<double> test_acc = a.at("metrics").at("test/acc").at("value").to_double_list();
  REQUIRE(test_acc.size() == 1);
  CHECK(py_acc == doctest::Approx(test_acc[0]).epsilon(1e-6));
  CHECK(test_acc[0] > 0.75);  // three noisy clusters: learnable, not trivial
}

TEST_CASE("a traced module trains too, and a missing or broken model file is a clear error") {
  test::TempDir dir("user_model_traced");
  auto made = test::python("user_model.py", {"make", dir.path.string(), "traced"});
  REQUIRE_MESSAGE(made.exit_code == 0, made.output);
  test::write_file(dir / "c.yaml", user_config(dir.path, "run", 1));
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt").at("state_dict").contains("bn.running_var"));

  // A file that is not TorchScript: exit 2 naming the file.
  test::write_file(dir / "model.pt", "not a zip");
  r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "run.dir=" + (dir / "other")});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(r.output.find("cannot load the TorchScript module " + (dir / "model.pt")) != std::string::npos,
                r.output);
  // A path that does not exist: a config error at its line, before anything runs.
  r = test::cairn_cli({"print-config", "--config", dir / "c.yaml", "--set", "model.path=" + (dir / "none.pt")});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(r.output.find("model.path: no such file") != std::string::npos, r.output);
}

TEST_CASE("data: tensors reads Python's dict of tensors and names what is wrong with a bad one") {
  test::TempDir dir("user_data");
  auto made = test::python("user_model.py", {"make", dir.path.string()});
  REQUIRE_MESSAGE(made.exit_code == 0, made.output);
  auto bad = test::python("user_model.py", {"bad", dir.path.string()});
  REQUIRE_MESSAGE(bad.exit_code == 0, bad.output);

  cairn::TensorFileOptions o;
  o.path = (dir / "data.pt");
  o.valid_fraction = 0.125;
  o.seed = 3;
  cairn::TensorFileData data(o);
  data.setup();
  CHECK(data.train.size() == 672);
  CHECK(data.valid.size() == 96);
  CHECK(data.test.size() == 192);
  CHECK(data.num_classes == 3);
  CHECK(data.input_shape == std::vector<int64_t>{1, 8, 8});
  CHECK((data.train.x.scalar_type() == torch::kFloat32));
  CHECK((data.train.y.scalar_type() == torch::kLong));
  // The valid split is carved from the seed: the same seed, the same examples.
  cairn::TensorFileData again(o);
  again.setup();
  CHECK(torch::equal(again.valid.x, data.valid.x));
  o.seed = 4;
  cairn::TensorFileData other(o);
  other.setup();
  CHECK_FALSE(torch::equal(other.valid.x, data.valid.x));

  const std::vector<std::pair<std::string, std::string>> cases = {
      {"bad_missing.pt", "has 'train_x' but no 'train_y'"},
      {"bad_length.pt", "'train_x' has 768 examples but 'train_y' has 10"},
      {"bad_dtype.pt", "'train_y' must be an integer tensor of class labels"},
      {"bad_key.pt", "unknown key 'extra'"},
      {"bad_shape.pt", "'test_x' has examples shaped [1, 4, 4] but train_x's are [1, 8, 8]"},
      {"bad_list.pt", "expected a dict of tensors"},
  };
  for (const auto& bad_case : cases) {
    const std::string& file = bad_case.first;
    const std::string& message = bad_case.second;
    cairn::TensorFileOptions b;
    b.path = (dir / file);
    std::string error;
    try {
      cairn::TensorFileData(b).setup();
    } catch (const cairn::DataError& e) {
      error = e.what();
    }
    CHECK_MESSAGE(error.find(message) != std::string::npos, file << ": " << error);
    CHECK_MESSAGE(error.find(b.path) != std::string::npos, file << ": " << error);
  }
  // Through the CLI: exit 2 with the message.
  test::write_file(dir / "c.yaml", user_config(dir.path, "run", 1));
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "data.path=" + (dir / "bad_length.pt")});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(r.output.find("data error: data file " + (dir / "bad_length.pt")) != std::string::npos, r.output);
}

TEST_CASE("data: csv trains on tabular files and names the file, line and column of a bad field") {
  test::TempDir dir("user_csv");
  // Two features; the class is which side of a line the point lies on.
  auto rows = [](int n, int offset) {
    std::ostringstream os;
    os << "x1, x2, label\n";
    for (int i = 0; i < n; ++i) {
      const double a = std::sin(0.7 * (i + offset)) * 2, b = std::cos(1.3 * (i + offset)) * 2;
      os << a << "," << b << "," << (a + b > 0 ? 1 : 0) << "\n";
    }
    return os.str();
  };
  test::write_file(dir / "train.csv", rows(400, 0));
  test::write_file(dir / "test.csv", rows(100, 1000));
  const std::string cfg = "name: tabular\nseed: 1\nrun: {dir: " + (dir / "run") + "}\n"
                          "data: {name: csv, path: " + (dir / "train.csv") + ", test_path: " + (dir / "test.csv") +
                          ", batch_size: 20}\n"
                          "model: {name: mlp, hidden: [16]}\noptimizer: {name: adam, lr: 0.02}\n"
                          "trainer: {max_epochs: 8, threads: 1}\n";
  test::write_file(dir / "c.yaml", cfg);
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const cairn::Value c = cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt");
  const auto acc = c.at("metrics").at("test/acc").at("value").to_double_list();
  REQUIRE(acc.size() == 1);
  CHECK(acc[0] > 0.9);  // a linear boundary
  CHECK(c.at("state_dict").at("1.weight").to_tensor().size(1) == 2);  // Flatten, then Linear(2 features, 16)

  cairn::CsvOptions o;
  o.path = dir / "train.csv";
  cairn::CsvData data(o);
  data.setup();
  CHECK(data.train.size() + data.valid.size() == 400);
  CHECK(data.valid.size() == 40);
  CHECK(data.input_shape == std::vector<int64_t>{2});
  CHECK(data.num_classes == 2);

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"x1,x2,label\n1,2,0\n3,oops,1\n", "bad.csv:3: column 'x2': 'oops' is not a finite number"},
      {"x1,x2,label\n1,2,0\n3,4\n", "bad.csv:3: expected 3 fields, got 2"},
      {"x1,x2,label\n1,2,0.5\n", "bad.csv:2: column 'label': class label '0.5' is not an integer"},
      {"x1,x2,y\n1,2,0\n", "no column named 'label' (columns: x1, x2, y; set data.label)"},
      {"x1,x2,label\n", "has a header but no rows"},
  };
  for (const auto& b : bad) {
    test::write_file(dir / "bad.csv", b.first);
    cairn::CsvOptions bo;
    bo.path = dir / "bad.csv";
    std::string error;
    try {
      cairn::CsvData(bo).setup();
    } catch (const cairn::DataError& e) {
      error = e.what();
    }
    CHECK_MESSAGE(error.find(b.second) != std::string::npos, b.first << " -> " << error);
  }
}
