// CUDA: runs only where LibTorch and the machine have CUDA. Elsewhere CTest
// reports test_cuda "Skipped" with the reason (tests/main.cpp,
// --cairn-needs-gpu). bench/gpu_check.sh runs it on a GPU machine.
#include "support.h"

#include <cairn/async_writer.h>
#include <cairn/callbacks.h>

#include "../framework/core/src/pinned/pinned_host.h"
#include <cairn/distributed.h>

#include <torch/cuda.h>

#include <csignal>
#include <thread>

TEST_CASE("CUDA generator states round-trip through a checkpoint file" * doctest::skip(!torch::cuda::is_available())) {
  test::TempDir dir("cuda_rng");
  torch::manual_seed(5);
  cairn::Loop loop;
  torch::rand({7}, torch::kCUDA);  // advance the CUDA generator
  cairn::write_checkpoint(dir / "rng.ckpt", loop.make_checkpoint());
  const auto expected_cuda = torch::rand({1000}, torch::kCUDA).cpu();
  const auto expected_cpu = torch::rand({10});
  torch::manual_seed(123);  // scramble both generators
  const cairn::Value c = cairn::read_checkpoint(dir / "rng.ckpt");
  REQUIRE(c.at("rng_states").contains("cuda"));
  CHECK(c.at("rng_states").at("cuda").size() == static_cast<size_t>(torch::cuda::device_count()));
  cairn::restore_rng_states(c.at("rng_states"));
  CHECK(torch::rand({1000}, torch::kCUDA).cpu().equal(expected_cuda));
  CHECK(torch::rand({10}).equal(expected_cpu));
}

TEST_CASE("device auto trains on CUDA and checkpoints hold CPU tensors" * doctest::skip(!torch::cuda::is_available())) {
  test::TempDir dir("cuda_fit");
  cairn::SyntheticOptions so;
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(2).device("auto"));
  t.set_model(cairn::Model::wrap(cairn::make_mlp({{so.features}, {32}, so.num_classes, 0.2})));
  t.set_data(std::make_shared<cairn::SyntheticData>(so));
  t.loop().set_run_dir(dir.str());
  auto ckpt = std::make_shared<cairn::Checkpoint>();
  t.add_callback(ckpt);
  t.fit();
  CHECK(t.device().is_cuda());
  CHECK(t.model().module->parameters()[0].is_cuda());
  const cairn::Value c = cairn::read_checkpoint(dir / "checkpoints/last.ckpt");
  CHECK(c.at("state_dict").at("1.weight").to_tensor().device().is_cpu());
  CHECK(c.at("optimizer_states").items()[0].at("state").at(int64_t{0}).at("exp_avg").to_tensor().device().is_cpu());
  // Restoring into a CUDA model puts optimizer state back on the GPU.
  cairn::Trainer u(cairn::TrainerOptions().max_epochs(3).device("cuda"));
  u.set_model(cairn::Model::wrap(cairn::make_mlp({{so.features}, {32}, so.num_classes, 0.2})));
  u.set_data(std::make_shared<cairn::SyntheticData>(so));
  u.loop().set_run_dir(dir.str());
  u.add_callback(std::make_shared<cairn::Checkpoint>());
  u.resume_from(dir / "checkpoints");
  u.fit();
  CHECK(u.resume_info().resumed);
  CHECK(u.loop().state().global_step == 3 * 16);
}

TEST_CASE("checkpoint snapshots of CUDA tensors: large ones page-locked in pieces and copied exactly across the "
          "pieces' boundaries; the buffers are reused from one save to the next" *
          doctest::skip(!torch::cuda::is_available())) {
  // The piecewise path itself, not LibTorch's pinned allocator as a fallback.
  std::string why;
  const at::Tensor direct = cairn::detail::pinned_host_tensor({3, 1 << 23}, torch::kFloat, 0, &why);  // 96 MiB
  REQUIRE_MESSAGE(direct.defined(), why);
  CHECK(why.empty());
  CHECK(direct.is_pinned());

  torch::manual_seed(9);
  const auto on_gpu = torch::TensorOptions().device(torch::kCUDA);
  const int64_t piece = static_cast<int64_t>(cairn::detail::kPinPiece);
  // Each of the large ones spans at least two 64 MiB pieces: 4-byte floats
  // with an odd tail, a transposed (not contiguous) matrix, a strided 1-D
  // view, 1-byte bools, 2-byte halves, 16-byte complex doubles, and exactly
  // two pieces of int64. The last is small (LibTorch's pinned allocator).
  std::vector<std::pair<std::string, at::Tensor>> tensors{
      {"float", torch::randn({21 * 1024 * 1024 + 3}, on_gpu)},
      {"transposed", torch::randn({4096, 5000}, on_gpu).t()},
      {"strided", torch::randn({2 * (piece / 4) + 10}, on_gpu).slice(0, 0, 2 * (piece / 4) + 10, 2)},
      {"bool", torch::rand({piece + 7}, on_gpu).gt(0.5)},
      {"half", torch::randn({piece / 2 + 5}, on_gpu.dtype(torch::kHalf))},
      {"complex", torch::randn({piece / 16 + 3}, on_gpu.dtype(torch::kComplexDouble))},
      {"two_pieces", torch::randint(0, 1 << 30, {2 * piece / 8}, on_gpu.dtype(torch::kLong))},
      {"small", torch::randint(0, 1000, {5}, on_gpu.dtype(torch::kLong))}};
  auto state = [&] {
    cairn::Value v = cairn::Value::dict();
    for (const auto& t : tensors) v.set(t.first, t.second);
    return v;
  };
  cairn::StateSnapshot snapshot;
  snapshot.reserve(cairn::StateSnapshot::layout(state()));
  std::vector<const void*> first;
  for (int save = 0; save < 2; ++save) {
    const cairn::Value copy = snapshot.take(state());
    for (size_t i = 0; i < tensors.size(); ++i) {
      CAPTURE(tensors[i].first);
      const at::Tensor& host = copy.at(tensors[i].first).to_tensor();
      CHECK(host.device().is_cpu());
      CHECK(host.is_pinned());
      CHECK(host.equal(tensors[i].second.cpu()));
      if (save == 0) {
        first.push_back(host.data_ptr());
      } else {
        CHECK(host.data_ptr() == first[i]);
      }
    }
    // The next save must see these values, not the first ones.
    for (auto& t : tensors) t.second = t.second.dtype() == torch::kBool ? t.second.logical_not() : t.second * 2;
  }
}

namespace {
std::string cuda_job_config(const std::string& run, int batch, const std::string& backend) {
  return "name: cuda_dist\nseed: 5\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 1000, valid_size: 200, test_size: 200, features: 16, num_classes: 4, "
         "noise: 1.0, batch_size: " + std::to_string(batch) + "}\n"
         "model: {name: mlp, hidden: [64]}\noptimizer: {name: sgd, lr: 0.1}\n"
         "trainer: {max_epochs: 4, threads: 1, device: cuda, log_every_n_steps: 5}\n"
         "distributed: {timeout: 60, backend: " + backend + "}\n"
         "callbacks:\n  - {name: checkpoint, monitor: valid/acc, mode: max, save_top_k: 1, every_n_train_steps: 4}\n";
}
}  // namespace

TEST_CASE("cairn fit --nproc 2 on CUDA: Gloo ranks sharing one GPU, and NCCL with a GPU per rank, equal one process "
          "with the doubled batch; a stopped job resumes bit-identical; every rank's CUDA RNG state is saved" *
          doctest::skip(!torch::cuda::is_available())) {
  std::vector<std::pair<std::string, std::string>> cases{{"gloo", "0"}};  // both ranks on GPU 0
  const auto have = cairn::available_backends();
  if (std::find(have.begin(), have.end(), "nccl") != have.end() && torch::cuda::device_count() >= 2) {
    cases.emplace_back("nccl", "0,1");
  } else {
    MESSAGE("NCCL case not run: needs a build with NCCL and 2 GPUs (" << torch::cuda::device_count() << " here)");
  }
  for (const auto& one_case : cases) {
    const std::string backend = one_case.first, visible = one_case.second;
    CAPTURE(backend);
    test::TempDir dir("cuda_dist_" + backend);
    const std::map<std::string, std::string> env{{"CUDA_VISIBLE_DEVICES", visible}};
    test::write_file(dir / "one.yaml", cuda_job_config(dir / "one", 32, backend));
    test::write_file(dir / "two.yaml", cuda_job_config(dir / "two", 16, backend));
    test::write_file(dir / "cut.yaml", cuda_job_config(dir / "cut", 16, backend));
    REQUIRE(test::wait_exit(test::spawn({CAIRN_CLI, "fit", "--config", dir / "one.yaml"}, dir / "one.log", 0, env)) == 0);
    const int two = test::wait_exit(test::spawn({CAIRN_CLI, "fit", "--config", dir / "two.yaml", "--nproc", "2"},
                                                dir / "two.log", 0, env));
    REQUIRE_MESSAGE(two == 0, test::read_file(dir / "two.log"));
    const cairn::Value a = cairn::read_checkpoint(dir / "one/checkpoints/last.ckpt");
    const cairn::Value b = cairn::read_checkpoint(dir / "two/checkpoints/last.ckpt");
    const double dw = test::max_difference(a.at("state_dict"), b.at("state_dict"));
    MESSAGE(backend << ": 2 x 16 vs 1 x 32 on CUDA, max weight difference " << dw);
    CHECK(dw < 1e-4);
    REQUIRE(b.at("rng_states").at("ranks").size() == 2);
    for (const auto& r : b.at("rng_states").at("ranks").items()) CHECK(r.find("cuda") != nullptr);

    // Stopped by SIGTERM after its first checkpoint, resumed: equal to `two`.
    const pid_t job = test::spawn({CAIRN_CLI, "fit", "--config", dir / "cut.yaml", "--nproc", "2"}, dir / "cut.log", 0, env);
    for (int i = 0; i < 600 && !test::fs::exists(dir / "cut/checkpoints/last.ckpt"); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::kill(job, SIGTERM);
    const int stopped = test::wait_exit(job);
    CHECK_MESSAGE((stopped == 143 || stopped == 0), test::read_file(dir / "cut.log"));
    REQUIRE(test::wait_exit(test::spawn({CAIRN_CLI, "fit", "--config", dir / "cut.yaml", "--nproc", "2"},
                                        dir / "cut2.log", 0, env)) == 0);
    const cairn::Value c = cairn::read_checkpoint(dir / "cut/checkpoints/last.ckpt");
    CHECK(test::max_difference(b.at("state_dict"), c.at("state_dict")) == 0.0);
  }
}

namespace {
std::string placement_config(const std::string& run, const std::string& data_extra, const std::string& optimizer,
                             const std::string& trainer_extra = "") {
  return "name: cuda_placement\nseed: 9\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 6000, valid_size: 500, test_size: 500, num_classes: 4, noise: 1.0, "
         "batch_size: 32" + data_extra + "}\n"
         "model: {name: mlp, hidden: [64], dropout: 0.2}\noptimizer: " + optimizer + "\n"
         "trainer: {max_epochs: 3, threads: 1, device: cuda, enable_progress_bar: false" + trainer_extra + "}\n"
         "callbacks:\n  - {name: checkpoint, monitor: valid/acc, mode: max, every_n_train_steps: 7}\n";
}

//! `cairn fit` of run directory `run` (config `run`.yaml) killed with SIGKILL
//! once its first checkpoint exists, then run again to the end: its last
//! checkpoint, comparable across runs.
cairn::Value killed_and_resumed(const std::string& run) {
  const pid_t p = test::spawn({CAIRN_CLI, "fit", "--config", run + ".yaml"}, run + ".log");
  REQUIRE(test::wait_for_file(run + "/checkpoints/last.ckpt"));
  ::kill(p, SIGKILL);
  CHECK_MESSAGE(test::wait_exit(p) == 128 + SIGKILL, test::read_file(run + ".log"));
  const auto r = test::cairn_cli({"fit", "--config", run + ".yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK_MESSAGE(r.output.find("resumed from") != std::string::npos, r.output);
  return test::comparable(cairn::read_checkpoint(run + "/checkpoints/last.ckpt"));
}
}  // namespace

TEST_CASE("data on the GPU, or pinned and prefetched from the CPU: the same run bit for bit; auto says where" *
          doctest::skip(!torch::cuda::is_available())) {
  test::TempDir dir("cuda_placement");
  const std::string adam = "{name: adam, lr: 0.01}";
  std::map<std::string, cairn::Value> last;
  for (const std::string mode : {"auto", "cuda", "cpu"}) {
    const std::string run = dir / mode;
    test::write_file(run + ".yaml", placement_config(run, ", device: " + mode, adam));
    const auto r = test::cairn_cli({"fit", "--config", run + ".yaml"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    if (mode == "auto") CHECK_MESSAGE(r.output.find("cairn: data on cuda:0") != std::string::npos, r.output);
    last[mode] = test::comparable(cairn::read_checkpoint(run + "/checkpoints/last.ckpt"));
  }
  CHECK_MESSAGE(last["auto"].first_difference(last["cuda"]) == "", last["auto"].first_difference(last["cuda"]));
  CHECK_MESSAGE(last["cpu"].first_difference(last["cuda"]) == "", last["cpu"].first_difference(last["cuda"]));
  // Data on the device, killed with SIGKILL after its first checkpoint, resumed: the same end.
  const std::string cut = dir / "cut";
  test::write_file(cut + ".yaml", placement_config(cut, ", device: cuda", adam));
  const cairn::Value c = killed_and_resumed(cut);
  CHECK_MESSAGE(last["cuda"].first_difference(c) == "", last["cuda"].first_difference(c));
}

TEST_CASE("on CUDA the default Adam steps with foreach; foreach and fused against the per-parameter step" *
          doctest::skip(!torch::cuda::is_available())) {
  test::TempDir dir("cuda_optim");
  std::map<std::string, cairn::Value> last;
  for (const std::string mode : {"foreach: false", "foreach: true", "fused: true"}) {
    const std::string run = dir / std::to_string(last.size());
    test::write_file(run + ".yaml", placement_config(run, "", "{name: adamw, lr: 0.01, " + mode + "}"));
    const auto r = test::cairn_cli({"fit", "--config", run + ".yaml"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    last[mode] = cairn::read_checkpoint(run + "/checkpoints/last.ckpt");
  }
  const double each = test::max_difference(last["foreach: false"].at("state_dict"), last["foreach: true"].at("state_dict"));
  const double fused = test::max_difference(last["foreach: false"].at("state_dict"), last["fused: true"].at("state_dict"));
  MESSAGE("CUDA, 3 epochs of AdamW: max weight difference from the per-parameter step: foreach " << each << ", fused "
                                                                                                 << fused);
  CHECK(each < 1e-5);
  CHECK(fused < 1e-4);
  torch::manual_seed(1);
  auto net = cairn::make_mlp({{16}, {8}, 4, 0.0});
  net->to(torch::kCUDA);
  cairn::Adam adam(net->parameters());
  CHECK(adam.mode_on(net->parameters()[0].device()) == cairn::StepMode::foreach);
}

namespace {
std::string graphs_config(const std::string& run, const std::string& graphs) {
  return placement_config(run, "", "{name: adam, lr: 0.01}", ", cuda_graphs: " + graphs);
}
}  // namespace

TEST_CASE("trainer.cuda_graphs: the captured step equals the uncaptured run bit for bit (dropout too), also after SIGKILL "
          "and resume" * doctest::skip(!torch::cuda::is_available())) {
  // 6000 examples in batches of 32: 187 captured replays and a last batch of
  // 16 run uncaptured each epoch; checkpoints every 7 steps.
  test::TempDir dir("cuda_graphs");
  std::map<std::string, cairn::Value> last;
  for (const std::string graphs : {"false", "true"}) {
    const std::string run = dir / graphs;
    test::write_file(run + ".yaml", graphs_config(run, graphs));
    const auto r = test::cairn_cli({"fit", "--config", run + ".yaml"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    CHECK_MESSAGE(r.output.find("warning: trainer.cuda_graphs") == std::string::npos, r.output);
    if (graphs == "true") CHECK_MESSAGE(r.output.find("training step captured") != std::string::npos, r.output);
    last[graphs] = test::comparable(cairn::read_checkpoint(run + "/checkpoints/last.ckpt"));
  }
  CHECK_MESSAGE(last["false"].first_difference(last["true"]) == "", last["false"].first_difference(last["true"]));
  CHECK(test::read_file(dir / "false/metrics.csv") == test::read_file(dir / "true/metrics.csv"));
  // Killed with SIGKILL after its first checkpoint, resumed (captured again): the same end.
  const std::string cut = dir / "cut";
  test::write_file(cut + ".yaml", graphs_config(cut, "true"));
  const cairn::Value c = killed_and_resumed(cut);
  CHECK_MESSAGE(last["false"].first_difference(c) == "", last["false"].first_difference(c));
}

namespace {
//! A step that reads its loss on the host every time: it cannot be captured.
struct ReadingTrainer : cairn::Trainer {
  using cairn::Trainer::Trainer;
  bool read = false;
  double total = 0;
  at::Tensor training_step(const cairn::Batch& b) override {
    at::Tensor loss = cairn::Trainer::training_step(b);
    if (read) total += loss.item<double>();
    return loss;
  }
};

struct GraphRun {
  std::vector<at::Tensor> state;  //!< parameters and buffers (BatchNorm's running statistics)
  std::string err;
};

//! `freeze_at` > 0: a callback freezes the first layer's weight after that step.
GraphRun graph_run(bool graphs, bool read, int64_t freeze_at = 0) {
  torch::manual_seed(4);
  ReadingTrainer t(cairn::TrainerOptions().max_epochs(2).device("cuda").cuda_graphs(graphs).run_test(false));
  t.read = read;
  torch::nn::Sequential net(torch::nn::Linear(16, 32), torch::nn::BatchNorm1d(32), torch::nn::ReLU(),
                            torch::nn::Dropout(0.3), torch::nn::Linear(32, 4));
  t.set_model(cairn::Model::wrap(net));
  t.set_data(test::synthetic(1000, 16));
  if (freeze_at > 0) {
    at::Tensor weight = net->ptr(0)->as<torch::nn::Linear>()->weight;
    t.loop().on(cairn::Event::batch_end, [weight, freeze_at](cairn::Loop& l) mutable {
      if (l.state().global_step == freeze_at) weight.requires_grad_(false);
    });
  }
  std::ostringstream err;
  std::streambuf* old = std::cerr.rdbuf(err.rdbuf());
  try {
    t.fit();
  } catch (...) {
    std::cerr.rdbuf(old);
    throw;
  }
  std::cerr.rdbuf(old);
  GraphRun out{{}, err.str()};
  for (const auto& p : net->parameters()) out.state.push_back(p.detach().cpu());
  for (const auto& b : net->buffers()) out.state.push_back(b.detach().cpu());
  return out;
}
}  // namespace

TEST_CASE("trainer.cuda_graphs: BatchNorm buffers replay exactly; a step that reads the device trains uncaptured, warned "
          "once" * doctest::skip(!torch::cuda::is_available())) {
  const GraphRun off = graph_run(false, false);
  const GraphRun on = graph_run(true, false);
  CHECK_MESSAGE(on.err.find("trainer.cuda_graphs") == std::string::npos, on.err);
  REQUIRE(off.state.size() == on.state.size());
  for (size_t i = 0; i < off.state.size(); ++i) CHECK(torch::equal(off.state[i], on.state[i]));
  const GraphRun reading = graph_run(true, true);
  const std::string warning = "cairn: warning: trainer.cuda_graphs: the training step waits for the device";
  const size_t at = reading.err.find(warning);
  CHECK_MESSAGE(at != std::string::npos, reading.err);
  CHECK(reading.err.find("trainer.cuda_graphs", at + warning.size()) == std::string::npos);  // once
  for (size_t i = 0; i < off.state.size(); ++i) CHECK(torch::equal(off.state[i], reading.state[i]));
}

TEST_CASE("trainer.cuda_graphs: a parameter frozen mid-run makes the step captured again, and the run still equals the "
          "uncaptured one" * doctest::skip(!torch::cuda::is_available())) {
  const GraphRun off = graph_run(false, false, 20);
  const GraphRun on = graph_run(true, false, 20);
  CHECK_MESSAGE(on.err.find("changed since the capture; capturing the step again") != std::string::npos, on.err);
  REQUIRE(off.state.size() == on.state.size());
  for (size_t i = 0; i < off.state.size(); ++i) CHECK(torch::equal(off.state[i], on.state[i]));
}
