// CUDA: runs only where LibTorch and the machine have CUDA (reported as
// skipped elsewhere, e.g. in CI). Checked on an H200 machine: see the README.
#include "support.h"

#include <cairn/callbacks.h>

#include <torch/cuda.h>

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
