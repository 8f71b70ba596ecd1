// A hand-written LibTorch loop in another project, with cairn's checkpoint
// and early stopping attached: kill it and run it again, and it continues.
//   consumer RUN_DIR EPOCHS [PAUSE_AFTER]   (PAUSE_AFTER: stop, resumable, after that many epochs)
#include <cairn/callbacks/checkpoint.h>
#include <cairn/callbacks/early_stopping.h>
#include <cairn/data.h>
#include <cairn/loop.h>
#include <cairn/run_dir.h>

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::cerr << "usage: consumer RUN_DIR EPOCHS [PAUSE_AFTER]\n";
    return 2;
  }
  const std::string run_dir = argv[1];
  const int64_t epochs = std::stoll(argv[2]);
  const int64_t pause_after = argc == 4 ? std::stoll(argv[3]) : -1;
  torch::set_num_threads(1);
  torch::manual_seed(3);

  // Two Gaussian clusters, made here: the consumer owns its data.
  auto gen = at::detail::createCPUGenerator(11);
  auto make = [&](int64_t n) {
    auto y = torch::randint(2, {n}, gen, torch::kLong);
    auto x = torch::randn({n, 8}, gen) + y.unsqueeze(1).to(torch::kFloat) * 2.0;
    return cairn::TensorDataset{x, y};
  };
  const cairn::TensorDataset train = make(256), valid = make(64);
  auto model = torch::nn::Sequential(torch::nn::Linear(8, 16), torch::nn::ReLU(), torch::nn::Linear(16, 2));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05));
  cairn::EpochSampler sampler(train.size(), 32, /*seed=*/5);

  cairn::Loop loop;
  loop.set_run_dir(run_dir);
  loop.track(*model);
  loop.track(optimizer);
  loop.add(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().monitor("valid/loss").mode(cairn::Mode::min)));
  // Stops once valid/loss has not improved by 0.05 for 2 epochs.
  loop.add(std::make_shared<cairn::EarlyStopping>(
      cairn::EarlyStoppingOptions().monitor("valid/loss").min_delta(0.05).patience(2)));
  loop.state().max_epochs = epochs;
  loop.state().batches_per_epoch = sampler.batches_per_epoch();

  const cairn::ResumeInfo resumed = cairn::resume(loop, run_dir + "/checkpoints");
  if (resumed.resumed) std::cout << "resumed at epoch " << resumed.epoch << "\n";
  if (resumed.finished) {
    std::cout << "already finished\n";
    return 0;
  }
  loop.fit_begin();
  while (loop.state().epoch < epochs && !loop.should_stop()) {
    loop.epoch_begin();
    model->train();
    for (int64_t k = loop.state().batch_in_epoch; k < sampler.batches_per_epoch() && !loop.should_stop(); ++k) {
      cairn::Batch b = train.gather(sampler.batch_indices(loop.state().epoch, k));
      loop.batch_begin();
      optimizer.zero_grad();
      auto loss = torch::cross_entropy_loss(model->forward(b.x), b.y);
      loss.backward();
      loop.before_optimizer_step();
      optimizer.step();
      loop.log_step("train/loss", loss.item<double>(), static_cast<double>(b.size()));
      loop.batch_end();
    }
    {
      torch::NoGradGuard no_grad;
      model->eval();
      loop.validation_begin();
      auto logits = model->forward(valid.x);
      loop.metrics().accumulate("valid/loss", torch::cross_entropy_loss(logits, valid.y).item<double>());
      loop.metrics().accumulate("valid/acc", logits.argmax(1).eq(valid.y).to(torch::kFloat).mean().item<double>());
      loop.validation_end();
    }
    loop.epoch_end();
    // Like a spot machine taken back: an interrupt saves, and the run resumes later.
    if (loop.state().epoch == pause_after) loop.state().request_interrupt(0, "paused by the consumer");
  }
  loop.fit_end();
  if (loop.state().stop.interrupt) std::cout << "paused\n";
  std::cout << "epochs " << loop.state().epoch << ", global step " << loop.state().global_step << "\n";
  if (!loop.state().stop.reason.empty()) std::cout << "stopped: " << loop.state().stop.reason << "\n";
  const double acc = loop.metrics().last("valid/acc").value_or(0.0);
  std::cout << "valid/acc " << acc << "\n";
  return 0;
}
