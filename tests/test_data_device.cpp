// Where the data lives and how batches reach the model (TrainerOptions
// data_device and prefetch; YAML data.device and data.prefetch): prefetched
// batches on a helper thread give the same run bit for bit, also across a
// stop and resume mid-epoch; data.device that cannot be honoured is exit 2
// naming the key and the sizes; trainer.cuda_graphs where it cannot capture
// trains as without, saying why. (The CUDA side, data gathered on the device,
// pinned copies and captured steps, is in test_cuda.cpp.)
#include "support.h"

#include <cairn/callbacks.h>

#include "../framework/core/src/graph/cuda_graph.h"
#include "../framework/core/src/pinned/pinned_host.h"
#include "../framework/core/src/prefetch.h"

#include <torch/cuda.h>
#include <torch/version.h>

#include <atomic>
#include <set>
#include <thread>

namespace {

std::string config(const std::string& run, const std::string& data_extra) {
  return "name: placement\nseed: 5\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 200, valid_size: 40, test_size: 40, num_classes: 4, batch_size: 16" +
         data_extra + "}\n"
         "model: {name: mlp, hidden: [24], dropout: 0.3}\n"
         "optimizer: {name: adam, lr: 0.01}\n"
         "trainer: {max_epochs: 3, threads: 1, enable_progress_bar: false}\n"
         "callbacks:\n  - {name: checkpoint, monitor: valid/acc, mode: max, every_n_train_steps: 5}\n";
}

//! Fits `path` in-process, stopped (as SIGTERM would) at global step `stop`
//! (0: never) and resumed; the final checkpoint, comparable across runs.
cairn::Value fit(const std::string& path, int64_t stop, int* stops = nullptr) {
  return test::fit_stop_resume(path, "", stop, [stops](const cairn::Value&) {
    if (stops) ++*stops;
  });
}

}  // namespace

TEST_CASE("prefetching batches on a helper thread gives the same run bit for bit, also stopped and resumed mid-epoch") {
  test::TempDir dir("prefetch");
  test::write_file(dir / "plain.yaml", config(dir / "plain", ", prefetch: false"));
  test::write_file(dir / "pre.yaml", config(dir / "pre", ", prefetch: true"));
  test::write_file(dir / "cut.yaml", config(dir / "cut", ", prefetch: true"));
  const cairn::Value plain = fit(dir / "plain.yaml", 0);
  const cairn::Value pre = fit(dir / "pre.yaml", 0);
  int stops = 0;
  const cairn::Value cut = fit(dir / "cut.yaml", 17, &stops);  // batch 5 of epoch 2 (13 batches an epoch)
  CHECK(stops == 1);
  CHECK_MESSAGE(plain.first_difference(pre) == "", plain.first_difference(pre));
  CHECK_MESSAGE(plain.first_difference(cut) == "", plain.first_difference(cut));
  CHECK(test::read_file(dir / "plain/metrics.csv") == test::read_file(dir / "pre/metrics.csv"));
  // The run trained (the comparison is not of untouched weights).
  CHECK(plain.at("global_step").to_int() == 39);
}

namespace {
//! Augments on the device side, as a user might: noise from the global
//! generator, which dropout also draws from. Records the threads it ran on.
struct NoisyTrainer : cairn::Trainer {
  using cairn::Trainer::Trainer;
  std::set<std::thread::id> threads;
  cairn::Batch to_device(const cairn::Batch& b) override {
    threads.insert(std::this_thread::get_id());
    cairn::Batch out = cairn::Trainer::to_device(b);
    if (out.x.defined() && loop().state().stage == cairn::Stage::train) out.x = out.x + 0.1 * torch::randn_like(out.x);
    return out;
  }
};

std::vector<at::Tensor> noisy_fit(const std::string& prefetch, std::set<std::thread::id>& threads) {
  torch::manual_seed(3);
  NoisyTrainer t(cairn::TrainerOptions().max_epochs(2).prefetch(prefetch).run_test(false));
  cairn::SyntheticOptions so;
  so.train_size = 160;
  so.batch_size = 16;
  t.set_model(cairn::Model::wrap(cairn::make_mlp({{so.features}, {16}, so.num_classes, 0.3})));
  t.set_data(std::make_shared<cairn::SyntheticData>(so));
  t.fit();
  threads = t.threads;
  std::vector<at::Tensor> w;
  for (const auto& p : t.model().module->parameters()) w.push_back(p.detach().clone());
  return w;
}
}  // namespace

TEST_CASE("with prefetching, a subclass's to_device still runs on the training thread, in step order: random draws stay exact") {
  std::set<std::thread::id> with, without;
  const auto a = noisy_fit("true", with);
  const auto b = noisy_fit("false", without);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i], b[i]));
  CHECK(with.size() == 1);
  CHECK(with == std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST_CASE("Prefetcher: batches come back for the index asked, in order; an error on the helper thread reaches the step") {
  std::atomic<int> made{0};
  cairn::detail::Prefetcher p([&](const at::Tensor& idx) {
    ++made;
    if (idx[0].item<int64_t>() == 30) throw std::runtime_error("cannot read row 30");
    return cairn::Batch{idx.to(torch::kFloat) * 2, idx};
  });
  for (int64_t k = 0; k < 3; ++k) {
    const at::Tensor idx = torch::arange(k * 10, k * 10 + 4);
    const cairn::Batch b = p.take(k, idx);
    CHECK(torch::equal(b.y, idx));
    p.start(k + 1, torch::arange((k + 1) * 10, (k + 1) * 10 + 4));
  }
  // Batch 3 (row 30) failed on the helper thread: take() rethrows it.
  CHECK_THROWS_WITH_AS(p.take(3, torch::arange(30, 34)), "cannot read row 30", std::runtime_error);
  // A batch that was not started (or another one was) is made on the spot.
  p.start(5, torch::arange(50, 52));
  const cairn::Batch other = p.take(4, torch::arange(40, 42));
  CHECK(torch::equal(other.y, torch::arange(40, 42)));
  CHECK(p.started(5));
  CHECK(torch::equal(p.take(5, torch::arange(50, 52)).y, torch::arange(50, 52)));
  CHECK(made.load() == 6);
}

TEST_CASE("data.device and data.prefetch: values that cannot work are exit 2 naming the key and the data's sizes") {
  test::TempDir dir("data_device");
  const std::string cfg = dir / "c.yaml";
  test::write_file(cfg, config(dir / "run", ", device: gpu"));
  auto r = test::cairn_cli({"fit", "--config", cfg});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(r.output.find("c.yaml:4:") != std::string::npos, r.output);
  CHECK(r.output.find("data.device") != std::string::npos);
  CHECK(r.output.find("auto, cpu, cuda") != std::string::npos);

  test::write_file(cfg, config(dir / "run", ", prefetch: sometimes"));
  r = test::cairn_cli({"fit", "--config", cfg});
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("data.prefetch") != std::string::npos);

  if (!torch::cuda::is_available()) {
    // The data set's sizes are named: 200x16 float features + int64 labels, and so on.
    test::write_file(cfg, config(dir / "run", ", device: cuda"));
    r = test::cairn_cli({"fit", "--config", cfg});
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(r.output.find("c.yaml:4:") != std::string::npos, r.output);
    CHECK(r.output.find("data.device: cuda asked for, but this LibTorch build or machine has no CUDA") != std::string::npos);
    CHECK(r.output.find("(train 14.1 KB, valid 2.8 KB, test 2.8 KB)") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir / "run/checkpoints"));
    // The C++ route says the same from fit().
    cairn::SyntheticOptions so;
    so.train_size = 64;
    cairn::Trainer t(cairn::TrainerOptions().max_epochs(1).device("cpu").data_device("cuda"));
    t.set_model(cairn::Model::wrap(cairn::make_mlp({{so.features}, {8}, so.num_classes, 0.0})));
    t.set_data(std::make_shared<cairn::SyntheticData>(so));
    CHECK_THROWS_WITH_AS(t.fit(), doctest::Contains("data.device: cuda asked for"), std::invalid_argument);
  } else {
    MESSAGE("CUDA is present: the no-CUDA refusal is not reachable here (test_cuda covers data on the device)");
  }
  // Explicit cpu on the CPU trains as before.
  test::write_file(cfg, config(dir / "run2", ", device: cpu"));
  r = test::cairn_cli({"fit", "--config", cfg});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
}

TEST_CASE("trainer.cuda_graphs where it cannot capture: one warning saying why, and the same run as without") {
  // On the CPU (and on 1.13) the step is never captured: the run must say
  // so once and train exactly as with cuda_graphs off. Switching the key at
  // a resume is a safe change (a captured step equals the uncaptured one).
  test::TempDir dir("graphs_cpu");
  auto with_graphs = [](std::string text, const std::string& value) {
    const std::string key = "enable_progress_bar: false";
    return text.replace(text.find(key), key.size(), key + ", cuda_graphs: " + value);
  };
  test::write_file(dir / "off.yaml", with_graphs(config(dir / "off", ""), "false"));
  test::write_file(dir / "on.yaml", with_graphs(config(dir / "on", ""), "true"));
  auto off = test::cairn_cli({"fit", "--config", dir / "off.yaml", "--set", "trainer.device=cpu"});
  REQUIRE_MESSAGE(off.exit_code == 0, off.output);
  CHECK(off.output.find("cuda_graphs") == std::string::npos);
  auto on = test::cairn_cli({"fit", "--config", dir / "on.yaml", "--set", "trainer.device=cpu"});
  REQUIRE_MESSAGE(on.exit_code == 0, on.output);
  const std::string warning = "cairn: warning: trainer.cuda_graphs: ";
  const size_t at = on.output.find(warning);
  REQUIRE_MESSAGE(at != std::string::npos, on.output);
  CHECK(on.output.find(warning, at + 1) == std::string::npos);  // once
  const std::string why = on.output.substr(at, on.output.find('\n', at) - at);
  // A build that can capture says the device is the reason; 1.13 says the build is.
  const std::string reason = cairn::detail::CudaGraph::built()
                                 ? "the model is on cpu and CUDA graphs need a CUDA device; training uncaptured"
                                 : "this LibTorch cannot capture CUDA graphs (they need a LibTorch 2.4 or newer built "
                                   "with CUDA); training uncaptured";
  CHECK_MESSAGE(why.find(reason) != std::string::npos, why);
  const cairn::Value a = test::comparable(cairn::read_checkpoint(dir / "off/checkpoints/last.ckpt"));
  const cairn::Value b = test::comparable(cairn::read_checkpoint(dir / "on/checkpoints/last.ckpt"));
  CHECK_MESSAGE(a.first_difference(b) == "", a.first_difference(b));
  CHECK(test::read_file(dir / "off/metrics.csv") == test::read_file(dir / "on/metrics.csv"));
  // Testing a trained run trains nothing: nothing to say about captured steps.
  auto tested = test::cairn_cli({"test", "--config", dir / "on.yaml", "--set", "trainer.device=cpu"});
  CHECK_MESSAGE(tested.exit_code == 0, tested.output);
  CHECK_MESSAGE(tested.output.find("cuda_graphs") == std::string::npos, tested.output);
  // A safe change at a resume: noted, not refused.
  auto more = test::cairn_cli({"fit", "--config", dir / "off.yaml", "--set", "trainer.device=cpu", "--set",
                               "trainer.max_epochs=4", "--set", "trainer.cuda_graphs=true"});
  CHECK_MESSAGE(more.exit_code == 0, more.output);
  CHECK_MESSAGE(more.output.find("config change on resume: trainer.cuda_graphs: false -> true") != std::string::npos,
                more.output);
  // Not a boolean: exit 2 at the key.
  test::write_file(dir / "bad.yaml", with_graphs(config(dir / "bad", ""), "sometimes"));
  auto bad = test::cairn_cli({"fit", "--config", dir / "bad.yaml"});
  CHECK(bad.exit_code == 2);
  CHECK_MESSAGE(bad.output.find("bad.yaml:7:") != std::string::npos, bad.output);
  CHECK(bad.output.find("trainer.cuda_graphs") != std::string::npos);
}

TEST_CASE("CUDA graphs are built exactly where the LibTorch can capture them: 2.4 or newer, built with CUDA") {
  // CMake picks graph/cuda_graph_cuda.cpp or cuda_graph_none.cpp; CI's 2.x
  // build (PyPI's CUDA wheel) must get the real one, 1.13 the refusal.
  const bool can = CAIRN_TORCH_CUDA_BUILD &&
                   (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4));
  CHECK(cairn::detail::CudaGraph::built() == can);
  CHECK(cairn::detail::CudaGraph::why_not_built().empty() == can);
}

TEST_CASE("checkpoint buffers for CUDA tensors are page-locked through the driver only where LibTorch has CUDA; "
          "without a device the refusal is a reason, not a crash" *
          doctest::skip(torch::cuda::is_available())) {  // with a device: test_cuda.cpp's snapshot case
  std::string why;
  const at::Tensor t = cairn::detail::pinned_host_tensor({int64_t{3} << 20}, torch::kFloat, 0, &why);  // 12 MB
  CHECK_FALSE(t.defined());
  // The CUDA wheel without a driver: selecting the device already fails.
  CHECK_MESSAGE(why.find(CAIRN_TORCH_CUDA_BUILD ? "CUDA device 0: " : "built without CUDA") != std::string::npos, why);
}

TEST_CASE("format_bytes names sizes in messages") {
  CHECK(cairn::format_bytes(512) == "512 bytes");
  CHECK(cairn::format_bytes(14400) == "14.1 KB");
  CHECK(cairn::format_bytes(int64_t{3} << 20) == "3.0 MB");
  CHECK(cairn::format_bytes((int64_t{5} << 30) + (int64_t{1} << 29)) == "5.5 GB");
  // No CUDA runtime to ask on the CPU.
  CHECK_FALSE(cairn::cuda_memory(torch::Device(torch::kCPU)).has_value());
}
