// Worker threads against decoding: PNG images decoded (libpng) for every
// batch while a model trains on them, cairn's Trainer with data.workers 0, 1,
// 2 (up to --max-workers) against a hand-written torch::data::DataLoader loop
// with the same number of workers on the same files and the same decoder.
// Decoding a batch costs about as much as a training step, so workers should
// take the decode off the step's path until the cores run out.
//
//   ./build/bench_data [--images N] [--size S] [--batch B] [--max-workers W] [--epochs E]
// It writes its images into a temporary folder and removes it at the end.
#include <cairn/datasets.h>
#include <cairn/trainer.h>

#include <png.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <ftw.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void write_png(const std::string& path, const at::Tensor& chw) {
  const at::Tensor hwc = chw.permute({1, 2, 0}).contiguous();
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(chw.size(2));
  image.height = static_cast<png_uint_32>(chw.size(1));
  image.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&image, path.c_str(), 0, hwc.data_ptr<uint8_t>(), static_cast<png_int_32>(chw.size(2) * 3),
                               nullptr)) {
    throw std::runtime_error("cannot write " + path);
  }
}

torch::nn::Sequential make_model(int64_t size) {
  return torch::nn::Sequential(torch::nn::Flatten(), torch::nn::Linear(3 * size * size, 48), torch::nn::ReLU(),
                               torch::nn::Linear(48, 10));
}

// The baseline: torch::data's own Dataset and DataLoader, reading and
// decoding the same files with the same decoder.
class PngFiles : public torch::data::datasets::Dataset<PngFiles> {
 public:
  explicit PngFiles(std::vector<std::pair<std::string, int64_t>> files) : files_(std::move(files)) {}
  torch::data::Example<> get(size_t i) override {
    std::ifstream in(files_[i].first, std::ios::binary);
    std::ostringstream os;
    os << in.rdbuf();
    return {cairn::decode_image(os.str(), 3), torch::tensor(files_[i].second, torch::kLong)};
  }
  torch::optional<size_t> size() const override { return files_.size(); }

 private:
  std::vector<std::pair<std::string, int64_t>> files_;
};

double baseline_steps_per_s(const std::vector<std::pair<std::string, int64_t>>& files, int64_t size, int64_t batch,
                            int64_t workers, int epochs) {
  torch::manual_seed(0);
  auto model = make_model(size);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  auto loader = torch::data::make_data_loader<torch::data::samplers::RandomSampler>(
      PngFiles(files).map(torch::data::transforms::Stack<>()),
      torch::data::DataLoaderOptions().batch_size(static_cast<size_t>(batch)).workers(static_cast<size_t>(workers)));
  int64_t steps = 0;
  double seconds = 0;
  for (int e = 0; e < epochs + 1; ++e) {  // the first epoch warms up
    const auto t0 = Clock::now();
    int64_t n = 0;
    for (auto& b : *loader) {
      opt.zero_grad();
      auto loss = torch::cross_entropy_loss(model->forward(b.data), b.target);
      loss.backward();
      opt.step();
      ++n;
    }
    if (e > 0) {
      seconds += since(t0);
      steps += n;
    }
  }
  return static_cast<double>(steps) / seconds;
}

double cairn_steps_per_s(const std::string& root, int64_t batch, int64_t workers, int epochs, int64_t size,
                         const std::string& prefetch = "auto") {
  torch::manual_seed(0);
  cairn::ImageFolderOptions o;
  o.path = root;
  o.batch_size = batch;
  o.valid_fraction = 0;
  auto data = std::make_shared<cairn::ImageFolderData>(o);
  // One warm-up epoch, then the measured ones (the fit's own epoch timer is not used:
  // the whole fit is timed, loop and callbacks included).
  cairn::Trainer warm(
      cairn::TrainerOptions().max_epochs(1).workers(workers).prefetch(prefetch).run_test(false).handle_signals(false));
  warm.set_model(cairn::Model::wrap(make_model(size))).set_data(data);
  warm.fit();
  cairn::Trainer t(
      cairn::TrainerOptions().max_epochs(epochs).workers(workers).prefetch(prefetch).run_test(false).handle_signals(false));
  t.set_model(cairn::Model::wrap(make_model(size))).set_data(data);
  const auto t0 = Clock::now();
  const cairn::FitResult r = t.fit();
  return static_cast<double>(r.global_step) / since(t0);
}
}  // namespace

int main(int argc, char** argv) {
  int64_t images = 1536, size = 96, batch = 64, max_workers = 2;
  int epochs = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const int64_t v = std::stoll(argv[i + 1]);
    if (k == "--images") images = v;
    else if (k == "--size") size = v;
    else if (k == "--batch") batch = v;
    else if (k == "--max-workers") max_workers = v;
    else if (k == "--epochs") epochs = static_cast<int>(v);
    else {
      std::cerr << "unknown option " << k << "\n";
      return 2;
    }
  }
  cairn::set_threads(1);  // one intra-op thread for the step: the other cores are the workers'
  const fs::path root = fs::temp_directory_path() / ("cairn-bench-data-" + std::to_string(::getpid()));
  std::vector<std::pair<std::string, int64_t>> files;
  torch::manual_seed(1);
  for (int64_t i = 0; i < images; ++i) {
    const int64_t cls = i % 10;
    fs::create_directories(root / std::to_string(cls));
    const std::string path = (root / std::to_string(cls) / (std::to_string(i) + ".png")).string();
    write_png(path, (torch::rand({3, size, size}) * 255).to(torch::kByte));  // noise: PNG's worst case, a real decode
    files.emplace_back(path, cls);
  }
  // What a batch's decode costs against a step, measured alone.
  {
    auto model = make_model(size);
    torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
    PngFiles ds(files);
    auto t0 = Clock::now();
    std::vector<at::Tensor> xs;
    for (int64_t i = 0; i < batch; ++i) xs.push_back(ds.get(static_cast<size_t>(i)).data);
    const double decode = since(t0);
    const at::Tensor x = torch::stack(xs), y = torch::randint(10, {batch});
    for (int w = 0; w < 3; ++w) {
      opt.zero_grad();
      torch::cross_entropy_loss(model->forward(x), y).backward();
      opt.step();
    }
    t0 = Clock::now();
    for (int s = 0; s < 10; ++s) {
      opt.zero_grad();
      torch::cross_entropy_loss(model->forward(x), y).backward();
      opt.step();
    }
    const double step = since(t0) / 10;
    std::printf("%lld PNG images of %lldx%lld RGB, batches of %lld, %ld cores: decoding a batch %.1f ms, a step %.1f ms\n",
                static_cast<long long>(images), static_cast<long long>(size), static_cast<long long>(size),
                static_cast<long long>(batch), sysconf(_SC_NPROCESSORS_ONLN), decode * 1e3, step * 1e3);
  }
  std::printf("%-8s %22s %22s %8s\n", "workers", "cairn steps/s", "torch::data steps/s", "ratio");
  {
    // cairn's workers 0 without the data.prefetch helper: every batch made on the training thread, as torch::data's 0.
    const double c = cairn_steps_per_s(root.string(), batch, 0, epochs, size, "false");
    std::printf("%-8s %14.2f\n", "0, no prefetch", c);
  }
  double first_cairn = 0, first_base = 0;
  for (int64_t w = 0; w <= max_workers; ++w) {
    const double c = cairn_steps_per_s(root.string(), batch, w, epochs, size);
    const double b = baseline_steps_per_s(files, size, batch, w, epochs);
    if (w == 0) first_cairn = c, first_base = b;
    std::printf("%-8lld %14.2f (x%4.2f) %14.2f (x%4.2f) %8.2f\n", static_cast<long long>(w), c, c / first_cairn, b,
                b / first_base, c / b);
  }
  std::printf("(xN: against 0 workers; ratio: cairn / torch::data at the same workers)\n");
  std::fflush(stdout);
  // (nftw, not std::filesystem::remove_all: the torch wheel's libtorch.so exports a broken one)
  ::nftw(root.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
         FTW_DEPTH | FTW_PHYS);
  return 0;
}
