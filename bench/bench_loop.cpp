// Loop overhead and speed: `cairn fit`'s Trainer with the default callbacks
// against a hand-written LibTorch loop doing the same work (same data order,
// model, optimizer, batch size, threads, per-step loss/accuracy, a validation
// pass per epoch), measured alternately in one process; Python PyTorch's same
// loop too when CAIRN_PYTHON has torch, and Lightning's
// (bench/lightning_loop.py) when it has lightning. Each of cairn's speed
// levers is measured on its own (prefetch, foreach, fused; on CUDA also the
// data kept on the CPU and CUDA graphs), so its share shows; so is the
// Checkpoint callback's (the default leg saves durably every epoch, the
// hand-written loop saves nothing).
//
//   ./build/bench_loop [--epochs N] [--repeats R] [--device cpu|cuda] [--steps S] [--width W] [--ops 1]
//
// --steps S limits an epoch to S training batches (a smoke run for CI).
// --width W trains 784-W-W-10 instead (a large model: cairn's per-step cost
// as a share of a long step; without the Python legs).
// --ops 1 times nothing: it counts the ATen ops each loop dispatches in one
// epoch (training thread and prefetch thread apart) and prints, per training
// step, those whose counts differ between cairn and the hand-written loop:
// where cairn's per-step cost on the CPU comes from.
#include <cairn/cairn.h>
#include <cairn/callbacks.h>

#include <ATen/record_function.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

namespace {
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The job: 784-256-128-10. --width W makes it 784-W-W-10, a large
// model whose step the arithmetic sets, so cairn's fixed per-step cost shows
// as a share of a long step (the "large models: at most 2%" target).
int64_t g_width = 0;
torch::nn::Sequential make_model() {
  if (g_width > 0) return cairn::make_mlp({{1, 28, 28}, {g_width, g_width}, 10, 0.1});
  return cairn::make_mlp({{1, 28, 28}, {256, 128}, 10, 0.1});
}

// --ops: ATen ops dispatched while counting is on, by name ("[prefetch] "
// before those of other threads than the training thread).
struct OpCounts {
  std::mutex mutex;
  std::map<std::string, int64_t> counts;
  std::atomic<bool> on{false};
  std::thread::id training_thread;
};
OpCounts g_ops;

void count_ops() {
  g_ops.training_thread = std::this_thread::get_id();
  at::addGlobalCallback(at::RecordFunctionCallback([](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
    if (g_ops.on.load()) {
      const bool helper = std::this_thread::get_id() != g_ops.training_thread;
      std::lock_guard<std::mutex> lock(g_ops.mutex);
      ++g_ops.counts[(helper ? "[prefetch] " : "") + std::string(fn.name())];
    }
    return nullptr;
  }).scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
}

// The loop a LibTorch user writes by hand.
double hand_written(cairn::DataModule& data, int64_t epochs, const torch::Device& device) {
  torch::manual_seed(0);
  auto model = make_model();
  model->to(device);
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
      b = cairn::Batch{b.x.to(device), b.y.to(device)};
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
      b = cairn::Batch{b.x.to(device), b.y.to(device)};
      auto logits = model->forward(b.x);
      sink += torch::cross_entropy_loss(logits, b.y).item<double>() + logits.argmax(1).eq(b.y).sum().item<double>();
    }
    sink += loss_sum + acc_sum;
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (sink == 42.4242) std::puts("");
  return static_cast<double>(steps) / s;
}

//! A DataModule holding the same tensors as `src` (the Trainer may move its
//! own copy's tensors to the device; the other legs keep theirs on the CPU).
struct SameData : cairn::DataModule {
  explicit SameData(const cairn::DataModule& src) {
    train = src.train;
    valid = src.valid;
    test = src.test;
    batch_size = src.batch_size;
    seed = src.seed;
    num_classes = src.num_classes;
    input_shape = src.input_shape;
  }
  void setup() override {}
  std::string name() const override { return "fashion_mnist"; }
};

struct Leg {
  std::string label;
  std::string data_device = "auto", prefetch = "auto";
  cairn::StepMode step = cairn::StepMode::automatic;
  bool cuda_graphs = false;
  bool checkpoint = true;  //!< the Checkpoint callback (a durable save, fsync included, each epoch)
};

// cairn's Trainer with what `cairn fit` attaches by default plus early stopping.
double with_cairn(const cairn::DataModule& src, int64_t epochs, const std::string& device, const Leg& leg,
                  const std::string& run_dir, std::FILE* devnull) {
  if (std::system(("rm -rf '" + run_dir + "'").c_str()) != 0) std::fprintf(stderr, "cleanup failed\n");
  torch::manual_seed(0);
  cairn::Trainer t(cairn::TrainerOptions()
                       .max_epochs(epochs)
                       .threads(1)
                       .run_test(false)
                       .device(device)
                       .data_device(leg.data_device)
                       .prefetch(leg.prefetch)
                       .cuda_graphs(leg.cuda_graphs));
  auto model = make_model();
  t.set_model(cairn::Model::wrap(model)).set_data(std::make_shared<SameData>(src));
  t.set_optimizer(std::make_shared<cairn::Adam>(model->parameters(), torch::optim::AdamOptions(1e-3), leg.step));
  t.loop().set_run_dir(run_dir);
  if (leg.checkpoint) {
    t.add_callback(std::make_shared<cairn::Checkpoint>(
        cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max)));
  }
  t.add_callback(std::make_shared<cairn::EarlyStopping>(cairn::EarlyStoppingOptions().patience(100)));
  t.add_callback(std::make_shared<cairn::CsvLogger>());
  t.add_callback(std::make_shared<cairn::ProgressBar>(cairn::ProgressBarOptions{}, devnull));
  // cairn's own "data on cuda" line would land in the table.
  std::streambuf* out = std::cout.rdbuf(nullptr);
  const auto t0 = Clock::now();
  t.fit();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::cout.rdbuf(out);
  return static_cast<double>(t.loop().state().global_step) / s;
}
}  // namespace

int main(int argc, char** argv) {
  int64_t epochs = 2, repeats = 3, steps = 0;
  std::string device = "cpu";
  bool ops = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--epochs") epochs = std::stoll(argv[i + 1]);
    if (a == "--repeats") repeats = std::stoll(argv[i + 1]);
    if (a == "--steps") steps = std::stoll(argv[i + 1]);
    if (a == "--device") device = argv[i + 1];
    if (a == "--width") g_width = std::stoll(argv[i + 1]);
    if (a == "--ops") ops = std::string(argv[i + 1]) == "1";
  }
  const torch::Device dev(device);
  const bool cuda = dev.is_cuda();
  cairn::set_threads(1);
  cairn::FashionMnistOptions fo;
  if (steps > 0) fo.limit_train = steps * 64;
  auto data = std::make_shared<cairn::FashionMnist>(fo);
  data->setup();
  const int64_t per_epoch = (data->train.size() + 63) / 64;
  std::FILE* devnull = std::fopen("/dev/null", "w");
  const std::string run_dir = "bench_tmp/loop_run";

  // cairn's default first; then each lever switched against it.
  std::vector<Leg> legs = {{"cairn Trainer + checkpoint/ES/CSV/progress"}};
  if (cuda) {
    legs.push_back({"  data kept on the CPU (pinned, prefetched)", "cpu", "auto"});
    legs.push_back({"  data on the CPU, no prefetch", "cpu", "false"});
    legs.push_back({"  per-parameter optimizer step (foreach off)", "auto", "auto", cairn::StepMode::for_loop});
  } else {
    legs.push_back({"  no prefetch (batch gathered in the step)", "auto", "false"});
    legs.push_back({"  foreach optimizer step", "auto", "auto", cairn::StepMode::foreach});
  }
  if (cairn::fused_adam_available(dev)) {
    legs.push_back({"  fused optimizer step", "auto", "auto", cairn::StepMode::fused});
  }
  // The share of the durable save (snapshot, write, fsync) in the default's ratio.
  legs.push_back({"  without the checkpoint callback", "auto", "auto", cairn::StepMode::automatic, false, false});
  if (cuda) {
    // The step captured once and replayed (trainer.cuda_graphs), alone and with the fused step.
    legs.push_back({"  CUDA graphs (trainer.cuda_graphs)", "auto", "auto", cairn::StepMode::automatic, true});
    if (cairn::fused_adam_available(dev)) {
      legs.push_back({"  CUDA graphs + fused optimizer step", "auto", "auto", cairn::StepMode::fused, true});
    }
  }
  if (ops) {
    count_ops();
    std::map<std::string, int64_t> counted[2];
    for (int k = 0; k < 2; ++k) {
      g_ops.on = true;
      if (k == 0) {
        hand_written(*data, 1, dev);
      } else {
        with_cairn(*data, 1, device, legs[0], run_dir, devnull);
      }
      g_ops.on = false;
      std::lock_guard<std::mutex> lock(g_ops.mutex);
      counted[k].swap(g_ops.counts);
    }
    std::map<std::string, std::pair<int64_t, int64_t>> both;
    for (const auto& c : counted[0]) both[c.first].first = c.second;
    for (const auto& c : counted[1]) both[c.first].second = c.second;
    std::printf("\n== ATen ops per training step (one epoch of %lld steps, validation included), where they differ ==\n",
                static_cast<long long>(per_epoch));
    std::printf("%-48s %10s %10s\n", "op", "by hand", "cairn");
    int64_t total[2] = {0, 0};
    for (const auto& b : both) {
      total[0] += b.second.first;
      total[1] += b.second.second;
      if (b.second.first == b.second.second) continue;
      std::printf("%-48s %10.2f %10.2f\n", b.first.c_str(), static_cast<double>(b.second.first) / per_epoch,
                  static_cast<double>(b.second.second) / per_epoch);
    }
    std::printf("%-48s %10.2f %10.2f\n", "all ops", static_cast<double>(total[0]) / per_epoch,
                static_cast<double>(total[1]) / per_epoch);
    std::fclose(devnull);
    if (std::system("rm -rf bench_tmp/loop_run") != 0) std::fprintf(stderr, "cleanup failed\n");
    return 0;
  }
  std::vector<double> hand;
  std::vector<std::vector<double>> rates(legs.size());
  hand_written(*data, 1, dev);  // warm-up
  for (int64_t r = 0; r < repeats; ++r) {
    hand.push_back(hand_written(*data, epochs, dev));
    for (size_t i = 0; i < legs.size(); ++i) rates[i].push_back(with_cairn(*data, epochs, device, legs[i], run_dir, devnull));
  }
  const double h = median(hand), c = median(rates[0]);
  const std::string shape = g_width > 0 ? "784-" + std::to_string(g_width) + "-" + std::to_string(g_width) + "-10"
                                        : std::string("784-256-128-10");
  std::printf("\n== loop speed: Fashion-MNIST MLP %s, Adam, batch 64, 1 thread, %s, %lld epochs x %lld "
              "(%lld training steps + validation per epoch) ==\n",
              shape.c_str(), device.c_str(), static_cast<long long>(epochs), static_cast<long long>(repeats),
              static_cast<long long>(per_epoch));
  std::printf("%-48s %10s %10s %8s\n", "loop", "steps/s", "s/epoch", "ratio");
  auto row = [&](const std::string& label, double rate, const char* note) {
    std::printf("%-48s %10.1f %10.3f %8.3f%s\n", label.c_str(), rate, static_cast<double>(per_epoch) / rate, rate / h, note);
  };
  row("hand-written LibTorch loop (baseline)", h, "");
  row(legs[0].label, c, g_width > 0 ? "   target >= 0.98 (overhead <= 2%)" : cuda ? "" : "   target >= 0.97");
  for (size_t i = 1; i < legs.size(); ++i) row(legs[i].label, median(rates[i]), "");

  // The same job in Python: PyTorch's loop, and Lightning's where it is installed.
  auto python_rate = [&](const char* script) {
    const std::string cmd = std::string(CAIRN_PYTHON) + " " + std::string(CAIRN_BENCH_DIR) + "/" + script + " " +
                            std::to_string(epochs) + " " + std::to_string(repeats) + " " + device + " " +
                            std::to_string(steps) + " 2>/dev/null";
    double rate = 0;
    if (std::FILE* p = ::popen(cmd.c_str(), "r")) {
      char buf[256] = {0};
      if (std::fgets(buf, sizeof buf, p)) rate = std::atof(buf);
      ::pclose(p);
    }
    return rate;
  };
  if (g_width > 0) {
    // The Python legs are the job only: the large model is cairn against LibTorch by hand.
    std::fclose(devnull);
    if (std::system("rm -rf bench_tmp/loop_run") != 0) std::fprintf(stderr, "cleanup failed\n");
    return 0;
  }
  if (const double py = python_rate("python_loop.py"); py > 0) {
    row("Python PyTorch, same loop", py, "");
    std::printf("%-48s %10s %10s %8.3f%s\n", "cairn vs Python PyTorch", "", "", c / py, cuda ? "   target >= 3" : "");
  } else {
    std::printf("Python PyTorch: not measured (" CAIRN_PYTHON " with torch not found)\n");
  }
  if (const double li = python_rate("lightning_loop.py"); li > 0) {
    row("Lightning, same job (its default callbacks)", li, "");
    std::printf("%-48s %10s %10s %8.3f%s\n", "cairn vs Lightning", "", "", c / li, cuda ? "   target >= 5" : "");
  } else {
    std::printf("Lightning: not measured (not installed for " CAIRN_PYTHON ")\n");
  }
  std::fclose(devnull);
  if (std::system("rm -rf bench_tmp/loop_run") != 0) std::fprintf(stderr, "cleanup failed\n");
  return 0;
}
