// Way 2: subclass cairn::Trainer, like a LightningModule.
//
// A Fashion-MNIST MLP trained with label smoothing in a custom training step,
// an SGD optimizer with momentum from configure_optimizers(), and the stock
// callbacks. Run:  ./build/example_subclass_trainer [run_dir] [epochs] [limit_train]
//
// Ctrl-C or SIGTERM stops it at the next batch with a checkpoint (Trainer::fit
// handles both signals: TrainerOptions::handle_signals) and it exits with
// 128 + signal; run the same command again to continue where it stopped.
#include <cairn/datasets.h>
#include <cairn/models.h>
#include <cairn/callbacks.h>
#include <cairn/trainer.h>

#include <torch/torch.h>

#include <iostream>

class SmoothedTrainer : public cairn::Trainer {
 public:
  using cairn::Trainer::Trainer;
  double smoothing = 0.1;

 protected:
  at::Tensor training_step(const cairn::Batch& batch) override {
    at::Tensor logits = forward(batch.x);
    const int64_t classes = logits.size(1);
    // Cross-entropy against smoothed one-hot targets.
    auto target = torch::full_like(logits, smoothing / static_cast<double>(classes));
    target.scatter_(1, batch.y.unsqueeze(1), 1.0 - smoothing + smoothing / static_cast<double>(classes));
    at::Tensor loss = -(target * torch::log_softmax(logits, 1)).sum(1).mean();
    const double n = static_cast<double>(batch.size());
    loop().log_step("train/loss", loss.item<double>(), n);  // the returned loss is the batch loss
    loop().log_step("train/acc", logits.argmax(1).eq(batch.y).sum().item<double>() / n, n);
    return loss;
  }

  void configure_optimizers() override {
    set_optimizer(std::make_shared<torch::optim::SGD>(
        model().module->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true)));
  }
};

int main(int argc, char** argv) {
  const std::string run_dir = argc > 1 ? argv[1] : "runs/example_subclass";
  const int64_t epochs = argc > 2 ? std::stoll(argv[2]) : 3;
  const int64_t limit = argc > 3 ? std::stoll(argv[3]) : -1;

  torch::manual_seed(0);
  cairn::FashionMnistOptions data;
  data.limit_train = limit;
  data.seed = 0;
  auto mnist = std::make_shared<cairn::FashionMnist>(data);

  SmoothedTrainer trainer(cairn::TrainerOptions().max_epochs(epochs).threads(1));
  trainer.set_model(cairn::Model::wrap(cairn::make_mlp({{1, 28, 28}, {128}, 10, 0.0})));
  trainer.set_data(mnist);
  trainer.loop().set_run_dir(run_dir);
  trainer.add_callback(std::make_shared<cairn::Checkpoint>(
      cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max)));
  trainer.add_callback(std::make_shared<cairn::CsvLogger>());
  trainer.add_callback(std::make_shared<cairn::ProgressBar>());
  trainer.resume_from(run_dir + "/checkpoints");  // continues if a previous run was stopped

  try {
    const cairn::FitResult r = trainer.fit();
    if (r.interrupted) {
      std::cout << "interrupted at step " << r.global_step << "; checkpoint saved, run again to resume\n";
      return 128 + r.signal;
    }
    if (r.already_finished) std::cout << "already finished\n";
    const auto acc = trainer.loop().metrics().last("test/acc");
    std::cout << "test accuracy " << acc.value_or(0.0) << "\n";
    return acc && *acc > 0.5 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
