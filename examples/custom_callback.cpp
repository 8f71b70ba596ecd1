// A custom callback with state that survives resume.
//
// GradNormMonitor logs the gradient norm after every backward pass
// (`train/grad_norm`) and keeps the largest norm seen over the whole run in its
// state, so a resumed run still knows it. It plugs into the Trainer like any
// built-in callback. Run:  ./build/example_custom_callback [run_dir] [epochs]
#include <cairn/datasets.h>
#include <cairn/models.h>
#include <cairn/callbacks.h>
#include <cairn/trainer.h>

#include <torch/torch.h>

#include <iostream>

class GradNormMonitor : public cairn::Callback {
 public:
  //! Largest gradient norm seen so far (saved in checkpoints).
  double max_norm = 0.0;
  //! Batches observed (saved in checkpoints).
  int64_t batches = 0;

  std::string key() const override { return "GradNormMonitor"; }
  cairn::Order order() const override { return cairn::Order::producer; }

  void on_after_backward(cairn::Loop& loop) override {
    double sq = 0.0;
    for (const auto& p : loop.model()->parameters()) {
      if (p.grad().defined()) sq += p.grad().pow(2).sum().item<double>();
    }
    const double norm = std::sqrt(sq);
    max_norm = std::max(max_norm, norm);
    ++batches;
    loop.log_step("train/grad_norm", norm);
  }

  cairn::Value state_dict() const override {
    auto d = cairn::Value::dict();
    d.set("max_norm", max_norm);
    d.set("batches", batches);
    return d;
  }
  void load_state_dict(const cairn::Value& s) override {
    max_norm = s.at("max_norm").to_double();
    batches = s.at("batches").to_int();
  }
};

int main(int argc, char** argv) {
  const std::string run_dir = argc > 1 ? argv[1] : "runs/example_custom_callback";
  const int64_t epochs = argc > 2 ? std::stoll(argv[2]) : 3;
  torch::manual_seed(0);

  cairn::SyntheticOptions so;
  so.train_size = 1024;
  auto data = std::make_shared<cairn::SyntheticData>(so);
  cairn::Trainer trainer(cairn::TrainerOptions().max_epochs(epochs).log_every_n_steps(8));
  trainer.set_model(cairn::Model::wrap(cairn::make_mlp({{so.features}, {32}, so.num_classes, 0.0})));
  trainer.set_data(data);
  trainer.loop().set_run_dir(run_dir);
  auto monitor = std::make_shared<GradNormMonitor>();
  trainer.add_callback(monitor);
  trainer.add_callback(std::make_shared<cairn::Checkpoint>());
  trainer.add_callback(std::make_shared<cairn::CsvLogger>());
  trainer.resume_from(run_dir + "/checkpoints");
  try {
    trainer.fit();
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  std::cout << "batches observed " << monitor->batches << ", largest gradient norm " << monitor->max_norm
            << ", epoch mean of the last epoch " << trainer.loop().metrics().last("train/grad_norm").value_or(-1.0)
            << "\n";
  // The saved state counts every batch of the run, across resumes.
  return monitor->batches == trainer.loop().state().global_step ? 0 : 1;
}
