// Your own data: a cairn::Dataset that decodes each example when it is asked
// for (here Fashion-MNIST's raw bytes, as a reader of image files or records
// would), augmented with random crops and flips, on two worker threads.
//
// Every example's randomness comes from its own generator, seeded by (seed,
// epoch, example index): stop it (Ctrl-C) and run it again with another
// number of workers, and it ends with the same bits as a run never stopped.
// Run:  ./build/example_own_dataset [run_dir] [epochs] [limit_train] [workers]
#include <cairn/callbacks.h>
#include <cairn/datasets.h>
#include <cairn/models.h>
#include <cairn/trainer.h>
#include <cairn/transforms.h>

#include <torch/torch.h>

#include <iostream>

// The Dataset: size() and get(index, generator). get() runs on worker threads:
// it reads, it does not change shared state.
class FashionBytes : public cairn::Dataset {
 public:
  FashionBytes(at::Tensor images, at::Tensor labels) : images_(std::move(images)), labels_(std::move(labels)) {}
  int64_t size() const override { return images_.size(0); }
  cairn::Example get(int64_t i, cairn::Generator&) const override {
    return {images_[i].unsqueeze(0).to(torch::kFloat).div(255.0), labels_[i].to(torch::kLong)};
  }

 private:
  at::Tensor images_, labels_;  // uint8 [N, 28, 28], [N]
};

// The DataModule: which Dataset is each split, and the transforms.
class FashionData : public cairn::DataModule {
 public:
  explicit FashionData(int64_t limit) : limit_(limit) {}
  std::string name() const override { return "fashion_bytes"; }
  void setup() override {
    if (train_set) return;
    const std::string root = "/usr/share/datasets/fashion-mnist/";
    at::Tensor x = cairn::read_idx(root + "train-images-idx3-ubyte.gz"), y = cairn::read_idx(root + "train-labels-idx1-ubyte.gz");
    if (limit_ > 0) x = x.slice(0, 0, limit_), y = y.slice(0, 0, limit_);
    const int64_t n_valid = x.size(0) / 10;
    train_set = std::make_shared<FashionBytes>(x.slice(0, n_valid), y.slice(0, n_valid));
    valid_set = std::make_shared<FashionBytes>(x.slice(0, 0, n_valid), y.slice(0, 0, n_valid));
    test_set = std::make_shared<FashionBytes>(cairn::read_idx(root + "t10k-images-idx3-ubyte.gz").slice(0, 0, 2000),
                                              cairn::read_idx(root + "t10k-labels-idx1-ubyte.gz").slice(0, 0, 2000));
    auto normalize = std::make_shared<cairn::Normalize>(std::vector<double>{0.286}, std::vector<double>{0.353});
    train_transform = std::make_shared<cairn::Compose>(std::vector<std::shared_ptr<const cairn::Transform>>{
        std::make_shared<cairn::RandomCrop>(28, 28, /*padding=*/2), std::make_shared<cairn::HorizontalFlip>(0.5), normalize});
    eval_transform = normalize;
    batch_size = 64;
    num_classes = 10;
    input_shape = {1, 28, 28};
  }

 private:
  int64_t limit_;
};

int main(int argc, char** argv) {
  const std::string run_dir = argc > 1 ? argv[1] : "runs/example_own_dataset";
  const int64_t epochs = argc > 2 ? std::stoll(argv[2]) : 3;
  const int64_t limit = argc > 3 ? std::stoll(argv[3]) : -1;
  const int64_t workers = argc > 4 ? std::stoll(argv[4]) : 2;

  torch::manual_seed(0);
  cairn::Trainer trainer(cairn::TrainerOptions().max_epochs(epochs).threads(1).workers(workers));
  trainer.set_model(cairn::Model::wrap(cairn::make_mlp({{1, 28, 28}, {128}, 10, 0.0})));
  trainer.set_data(std::make_shared<FashionData>(limit));
  trainer.loop().set_run_dir(run_dir);
  trainer.add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max)));
  trainer.add_callback(std::make_shared<cairn::CsvLogger>());
  trainer.add_callback(std::make_shared<cairn::ProgressBar>());
  trainer.resume_from(run_dir + "/checkpoints");
  try {
    const cairn::FitResult r = trainer.fit();
    if (r.interrupted) return 128 + r.signal;
    const auto acc = trainer.loop().metrics().last("test/acc");
    std::cout << "test accuracy " << acc.value_or(0.0) << "\n";
    return acc && *acc > 0.5 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
