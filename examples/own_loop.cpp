// Way 3: keep your own LibTorch loop and attach cairn to it.
//
// A plain `for` loop over Fashion-MNIST. cairn's Loop adds metrics.csv, a
// progress bar, checkpoints and exact resume: kill this program at any moment
// and run it again, and it continues where it stopped.
// Run:  ./build/example_own_loop [run_dir] [epochs] [limit_train]
#include <cairn/datasets.h>
#include <cairn/models.h>
#include <cairn/callbacks.h>
#include <cairn/data.h>
#include <cairn/loop.h>
#include <cairn/run_dir.h>
#include <cairn/signals.h>

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  const std::string run_dir = argc > 1 ? argv[1] : "runs/example_own_loop";
  const int64_t epochs = argc > 2 ? std::stoll(argv[2]) : 3;
  const int64_t limit = argc > 3 ? std::stoll(argv[3]) : -1;
  torch::set_num_threads(1);
  torch::manual_seed(1);

  // The user's own data, model and optimizer.
  cairn::FashionMnistOptions opts;
  opts.limit_train = limit;
  cairn::FashionMnist data(opts);
  data.setup();
  auto model = torch::nn::Sequential(torch::nn::Flatten(), torch::nn::Linear(784, 128), torch::nn::ReLU(),
                                     torch::nn::Linear(128, 10));
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  const int64_t batch_size = 64;
  cairn::EpochSampler sampler(data.train.size(), batch_size, /*seed=*/1);

  // cairn: what to save, what to attach, where to resume from.
  cairn::Loop loop;
  loop.set_run_dir(run_dir);
  loop.track(*model);
  loop.track(optimizer);
  loop.values().set("n_classes", int64_t{10});
  loop.add(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().every_n_train_steps(20)));
  loop.add(std::make_shared<cairn::CsvLogger>());
  loop.add(std::make_shared<cairn::ProgressBar>());
  loop.state().max_epochs = epochs;
  loop.state().batches_per_epoch = sampler.batches_per_epoch();
  cairn::signals::install();  // SIGTERM/SIGINT: save at the next batch, then exit 128+signal

  try {
    const cairn::ResumeInfo resumed = cairn::resume(loop, run_dir + "/checkpoints");
    if (resumed.resumed) std::cout << "resumed at epoch " << resumed.epoch << ", batch " << resumed.batch_in_epoch << "\n";
    if (resumed.finished) {
      std::cout << "already finished\n";
      return 0;
    }
    std::cout << "n_classes from the run's values: " << loop.values().get<int64_t>("n_classes") << "\n";

    loop.fit_begin();
    while (loop.state().epoch < epochs && !loop.should_stop()) {
      loop.epoch_begin();
      model->train();
      for (int64_t k = loop.state().batch_in_epoch; k < sampler.batches_per_epoch() && !loop.should_stop(); ++k) {
        cairn::Batch b = data.train.gather(sampler.batch_indices(loop.state().epoch, k));
        loop.batch_begin();
        optimizer.zero_grad();
        auto logits = model->forward(b.x);
        auto loss = torch::cross_entropy_loss(logits, b.y);
        loss.backward();
        loop.before_optimizer_step();  // past here a failing step cannot be rolled back
        optimizer.step();
        // The one way to report the loss: it also becomes loop.state().batch_loss,
        // which TerminateOnNaN and the progress bar read.
        loop.log_step("train/loss", loss.item<double>(), static_cast<double>(b.size()));
        loop.batch_end();
      }
      if (loop.should_stop() && loop.state().batch_in_epoch < sampler.batches_per_epoch()) break;
      // Validation: cairn averages valid/* values over the pass.
      {
        torch::NoGradGuard no_grad;
        model->eval();
        loop.validation_begin();
        auto logits = model->forward(data.valid.x);
        loop.metrics().accumulate("valid/acc", logits.argmax(1).eq(data.valid.y).to(torch::kFloat).mean().item<double>());
        loop.validation_end();
      }
      loop.epoch_end();
    }
    loop.fit_end();
  } catch (const std::exception& e) {
    // Lets the checkpoint keep a clean state (rolled back to the last batch boundary).
    if (loop.state().stage != cairn::Stage::idle) loop.exception(std::current_exception());
    std::cerr << "error: " << e.what() << "\n";
    return 3;
  }
  if (!loop.state().final_save_error.empty()) return 5;  // what the run reached is not on disk
  if (loop.state().stop.interrupt) return 128 + loop.state().stop.signal;
  const double acc = loop.metrics().last("valid/acc").value_or(0.0);
  std::cout << "final valid/acc " << acc << "\n";
  return acc > 0.5 ? 0 : 1;
}
