// Loop overhead: `cairn fit`'s Trainer with the default callbacks against a
// hand-written LibTorch loop doing the same work (same data order, model,
// optimizer, batch size, threads, per-step loss/accuracy, a validation pass per
// epoch), measured alternately in one process; Python PyTorch's same loop too
// when CAIRN_PYTHON has torch, and Lightning's (bench/lightning_loop.py) when
// it has lightning.
//
//   ./build/bench_loop [--epochs N] [--repeats R]
#include <cairn/cairn.h>
#include <cairn/callbacks.h>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>

namespace {
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

torch::nn::Sequential make_model() { return cairn::make_mlp({{1, 28, 28}, {256, 128}, 10, 0.1}); }

// The loop a LibTorch user writes by hand.
double hand_written(cairn::FashionMnist& data, int64_t epochs) {
  torch::manual_seed(0);
  auto model = make_model();
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  cairn::EpochSampler sampler(data.train.size(), 64, 0);
  int64_t steps = 0;
  double sink = 0;
  const auto t0 = Clock::now();
  for (int64_t e = 0; e < epochs; ++e) {
    model->train();
    double loss_sum = 0, acc_sum = 0;
    for (int64_t k = 0; k < sampler.batches_per_epoch(); ++k) {
      cairn::Batch b = data.train.gather(sampler.batch_indices(e, k));
      opt.zero_grad();
      auto logits = model->forward(b.x);
      auto loss = torch::cross_entropy_loss(logits, b.y);
      loss.backward();
      opt.step();
      loss_sum += loss.item<double>() * b.size();
      acc_sum += logits.argmax(1).eq(b.y).sum().item<double>();
      ++steps;
    }
    torch::NoGradGuard g;
    model->eval();
    for (int64_t i = 0; i < data.valid.size(); i += 64) {
      cairn::Batch b = data.valid.slice(i, std::min(i + 64, data.valid.size()));
      auto logits = model->forward(b.x);
      sink += torch::cross_entropy_loss(logits, b.y).item<double>() + logits.argmax(1).eq(b.y).sum().item<double>();
    }
    sink += loss_sum + acc_sum;
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (sink == 42.4242) std::puts("");
  return static_cast<double>(steps) / s;
}

// cairn's Trainer with what `cairn fit` attaches by default plus early stopping.
double with_cairn(const std::shared_ptr<cairn::FashionMnist>& data, int64_t epochs, const std::string& run_dir,
                  std::FILE* devnull) {
  if (std::system(("rm -rf '" + run_dir + "'").c_str()) != 0) std::fprintf(stderr, "cleanup failed\n");
  torch::manual_seed(0);
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(epochs).threads(1).run_test(false).device("cpu"));
  t.set_model(cairn::Model::wrap(make_model())).set_data(data);
  t.loop().set_run_dir(run_dir);
  t.add_callback(std::make_shared<cairn::Checkpoint>(
      cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max)));
  t.add_callback(std::make_shared<cairn::EarlyStopping>(cairn::EarlyStoppingOptions().patience(100)));
  t.add_callback(std::make_shared<cairn::CsvLogger>());
  t.add_callback(std::make_shared<cairn::ProgressBar>(cairn::ProgressBarOptions{}, devnull));
  const auto t0 = Clock::now();
  t.fit();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return static_cast<double>(t.loop().state().global_step) / s;
}
}  // namespace

int main(int argc, char** argv) {
  int64_t epochs = 2, repeats = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--epochs") epochs = std::stoll(argv[i + 1]);
    if (a == "--repeats") repeats = std::stoll(argv[i + 1]);
  }
  cairn::set_threads(1);
  auto data = std::make_shared<cairn::FashionMnist>(cairn::FashionMnistOptions{});
  data->setup();
  std::FILE* devnull = std::fopen("/dev/null", "w");
  const std::string run_dir = "bench_tmp/loop_run";
  std::vector<double> hand, cairn_rates;
  hand_written(*data, 1);  // warm-up
  for (int64_t r = 0; r < repeats; ++r) {
    hand.push_back(hand_written(*data, epochs));
    cairn_rates.push_back(with_cairn(data, epochs, run_dir, devnull));
  }
  const double h = median(hand), c = median(cairn_rates);
  std::printf("\n== loop overhead: Fashion-MNIST MLP 784-256-128-10, Adam, batch 64, 1 thread, %lld epochs x %lld ==\n",
              static_cast<long long>(epochs), static_cast<long long>(repeats));
  std::printf("%-44s %10s %8s\n", "loop", "steps/s", "ratio");
  std::printf("%-44s %10.1f %8.3f\n", "hand-written LibTorch loop (baseline)", h, 1.0);
  std::printf("%-44s %10.1f %8.3f   target >= 0.97\n", "cairn Trainer + checkpoint/ES/CSV/progress", c, c / h);

  // The same job in Python: PyTorch's loop, and Lightning's where it is installed.
  auto python_rate = [&](const char* script) {
    const std::string cmd = std::string(CAIRN_PYTHON) + " " + std::string(CAIRN_BENCH_DIR) + "/" + script + " " +
                            std::to_string(epochs) + " " + std::to_string(repeats) + " 2>/dev/null";
    double rate = 0;
    if (std::FILE* p = ::popen(cmd.c_str(), "r")) {
      char buf[256] = {0};
      if (std::fgets(buf, sizeof buf, p)) rate = std::atof(buf);
      ::pclose(p);
    }
    return rate;
  };
  if (const double py = python_rate("python_loop.py"); py > 0) {
    std::printf("%-44s %10.1f %8.3f\n", "Python PyTorch, same loop", py, py / h);
    std::printf("%-44s %10s %8.3f\n", "cairn vs Python PyTorch", "", c / py);
  } else {
    std::printf("Python PyTorch: not measured (" CAIRN_PYTHON " with torch not found)\n");
  }
  if (const double li = python_rate("lightning_loop.py"); li > 0) {
    std::printf("%-44s %10.1f %8.3f\n", "Lightning, same job (its default callbacks)", li, li / h);
    std::printf("%-44s %10s %8.3f\n", "cairn vs Lightning", "", c / li);
  } else {
    std::printf("Lightning: not measured (not installed for " CAIRN_PYTHON ")\n");
  }
  std::fclose(devnull);
  if (std::system("rm -rf bench_tmp/loop_run") != 0) std::fprintf(stderr, "cleanup failed\n");
  return 0;
}
