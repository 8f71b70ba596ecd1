// The data pipeline in one process, with threads (also built under
// ThreadSanitizer): per-example generators seeded by (seed, epoch, index),
// the transforms, a Dataset of one's own read by 0, 2 or 4 worker threads
// giving the same run bit for bit (also stopped and resumed with another
// count), and a failing example stopping the workers cleanly. The YAML side
// (image folders, shards, SIGKILLs, bad files) is in test_data_disk.cpp.
#include "support.h"

#include <cairn/callbacks.h>
#include <cairn/transforms.h>

#include "../framework/core/src/prefetch.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

namespace {

//! A Dataset of one's own, as docs/data.md shows it: 8x8 "images" made from
//! the index (as a file would be decoded), noted by the threads that made them.
class Squares : public cairn::Dataset {
 public:
  explicit Squares(int64_t n, int64_t bad = -1) : n_(n), bad_(bad) {}
  int64_t size() const override { return n_; }
  cairn::Example get(int64_t index, cairn::Generator&) const override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads_.insert(std::this_thread::get_id());
    }
    if (index == bad_) throw cairn::BadExample("squares", index, "a damaged square");
    const int64_t label = index % 3;
    at::Tensor x = torch::full({1, 8, 8}, 0.1 * static_cast<double>(label));
    x.index_put_({0, torch::indexing::Slice(label * 3, label * 3 + 2), torch::indexing::Slice()}, 2.0);
    x = x + torch::arange(64, torch::kFloat).view({1, 8, 8}) * (1e-3 * static_cast<double>(index % 7));
    return {x, torch::tensor(label, torch::kLong)};
  }
  std::set<std::thread::id> threads() const {
    std::lock_guard<std::mutex> lock(mu_);
    return threads_;
  }

 private:
  int64_t n_, bad_;
  mutable std::mutex mu_;
  mutable std::set<std::thread::id> threads_;
};

class SquaresData : public cairn::DataModule {
 public:
  explicit SquaresData(int64_t bad = -1) : bad_(bad) {}
  void setup() override {
    if (train_set) return;
    squares = std::make_shared<Squares>(150, bad_);
    train_set = squares;
    valid_set = std::make_shared<cairn::Subset>(std::make_shared<Squares>(40), std::vector<int64_t>{1, 3, 5, 7, 11, 13, 17, 19});
    batch_size = 10;
    seed = 21;
    num_classes = 3;
    input_shape = {1, 8, 8};
    train_transform = std::make_shared<cairn::Compose>(std::vector<std::shared_ptr<const cairn::Transform>>{
        std::make_shared<cairn::RandomCrop>(8, 8, 1), std::make_shared<cairn::HorizontalFlip>(0.5),
        std::make_shared<cairn::GaussianNoise>(0.05), std::make_shared<cairn::Normalize>(std::vector<double>{0.1}, std::vector<double>{0.3})});
    eval_transform = std::static_pointer_cast<const cairn::Compose>(train_transform)->deterministic_part();
  }
  std::string name() const override { return "squares"; }
  std::shared_ptr<Squares> squares;

 private:
  int64_t bad_;
};

struct Fitted {
  std::vector<at::Tensor> weights;
  std::vector<double> valid_acc;
  std::set<std::thread::id> threads;
};

//! Fits an MLP on SquaresData with `workers` threads; stopped (as SIGTERM
//! would) at global step `stop` and resumed with `resume_workers`.
Fitted fit(const std::string& dir, int64_t workers, int64_t stop = 0, int64_t resume_workers = 0) {
  test::remove_tree(dir);
  Fitted out;
  for (int round = 0; round < (stop > 0 ? 2 : 1); ++round) {
    torch::manual_seed(3);
    auto data = std::make_shared<SquaresData>();
    cairn::Trainer t(cairn::TrainerOptions().max_epochs(3).workers(round == 0 ? workers : resume_workers).run_test(false));
    t.set_model(cairn::Model::wrap(cairn::make_mlp({{1, 8, 8}, {16}, 3, 0.2}))).set_data(data);
    t.loop().set_run_dir(dir);
    t.add_callback(std::make_shared<cairn::Checkpoint>());
    t.resume_from(dir + "/checkpoints");
    if (round == 0 && stop > 0) {
      t.loop().on(cairn::Event::batch_end, [stop](cairn::Loop& l) {
        if (l.state().global_step == stop) l.state().request_interrupt(SIGTERM, "test stop");
      });
    }
    const cairn::FitResult r = t.fit();
    for (auto id : data->squares->threads()) out.threads.insert(id);
    if (r.interrupted) continue;
    for (const auto& p : t.model().module->parameters()) out.weights.push_back(p.detach().clone());
    for (const auto& pt : t.loop().metrics().series("valid/acc")) out.valid_acc.push_back(pt.value);
  }
  return out;
}

bool same(const Fitted& a, const Fitted& b) {
  if (a.weights.size() != b.weights.size() || a.weights.empty()) return false;
  for (size_t i = 0; i < a.weights.size(); ++i) {
    if (!torch::equal(a.weights[i], b.weights[i])) return false;
  }
  return a.valid_acc == b.valid_acc;
}

}  // namespace

TEST_CASE("an example's randomness is a function of (seed, epoch, index) alone; the transforms do what their names say") {
  const auto crop = std::make_shared<cairn::RandomCrop>(4, 4, 1);
  const at::Tensor img = torch::arange(36, torch::kFloat).view({1, 6, 6});
  auto augment = [&](uint64_t seed) {
    cairn::Generator g(seed);
    return (*crop)(cairn::Example{img, {}}, g).x;
  };
  CHECK(cairn::example_seed(1, 2, 3) == cairn::example_seed(1, 2, 3));
  CHECK(cairn::example_seed(1, 2, 3) != cairn::example_seed(1, 3, 3));
  CHECK(cairn::example_seed(1, 2, 3) != cairn::example_seed(1, 2, 4));
  CHECK(cairn::example_seed(1, 2, 3) != cairn::example_seed(2, 2, 3));
  CHECK(torch::equal(augment(cairn::example_seed(1, 2, 3)), augment(cairn::example_seed(1, 2, 3))));
  // The crops of many seeds: always a 4x4 window of the zero-padded 8x8 image, and more than one place.
  const at::Tensor padded = at::constant_pad_nd(img, {1, 1, 1, 1}, 0);
  std::set<std::pair<int64_t, int64_t>> places;
  for (int64_t i = 0; i < 60; ++i) {
    const at::Tensor c = augment(cairn::example_seed(9, 0, i));
    REQUIRE(c.sizes() == at::IntArrayRef({1, 4, 4}));
    bool found = false;
    for (int64_t t = 0; t <= 4 && !found; ++t) {
      for (int64_t l = 0; l <= 4 && !found; ++l) {
        if (torch::equal(c, padded.narrow(1, t, 4).narrow(2, l, 4))) {
          places.emplace(t, l);
          found = true;
        }
      }
    }
    CHECK(found);
  }
  CHECK(places.size() > 10);
  // hflip with p = 1 mirrors, with p = 0 leaves; normalize is (x - mean) / std per channel.
  cairn::Generator g(5);
  CHECK(torch::equal(cairn::HorizontalFlip(1.0)(cairn::Example{img, {}}, g).x, img.flip({-1})));
  CHECK(torch::equal(cairn::HorizontalFlip(0.0)(cairn::Example{img, {}}, g).x, img));
  const at::Tensor rgb = torch::rand({3, 2, 2});
  const at::Tensor n = cairn::Normalize({0.5, 0.25, 0.0}, {2.0, 4.0, 1.0})(cairn::Example{rgb, {}}, g).x;
  CHECK(torch::allclose(n[0], (rgb[0] - 0.5) / 2.0));
  CHECK(torch::allclose(n[1], (rgb[1] - 0.25) / 4.0));
  CHECK(torch::allclose(n[2], rgb[2]));
  CHECK_THROWS_AS(cairn::Normalize({0.5, 0.5}, {1.0, 1.0})(cairn::Example{rgb, {}}, g), cairn::DataError);
  // noise: the same seed, the same noise; its spread is the std asked for.
  cairn::Generator g1(77), g2(77);
  const at::Tensor zeros = torch::zeros({1, 64, 64});
  const at::Tensor a = cairn::GaussianNoise(0.5)(cairn::Example{zeros, {}}, g1).x;
  CHECK(torch::equal(a, cairn::GaussianNoise(0.5)(cairn::Example{zeros, {}}, g2).x));
  CHECK(std::abs(a.std().item<double>() - 0.5) < 0.03);
  // resize and center_crop give the size asked for; resize to the same size is the input.
  CHECK(cairn::Resize(3, 5)(cairn::Example{img, {}}, g).x.sizes() == at::IntArrayRef({1, 3, 5}));
  CHECK(torch::equal(cairn::Resize(6, 6)(cairn::Example{img, {}}, g).x, img));
  CHECK(torch::equal(cairn::CenterCrop(2, 2)(cairn::Example{img, {}}, g).x, img.narrow(1, 2, 2).narrow(2, 2, 2)));
  // What evaluation applies by default: the parts that draw no random numbers.
  const cairn::Compose all({crop, std::make_shared<cairn::Normalize>(std::vector<double>{0.5}, std::vector<double>{2.0})});
  CHECK(all.random());
  CHECK(all.describe() == "[random_crop(size=[4, 4], padding=1), normalize(mean=[0.5], std=[2])]");
  CHECK(all.deterministic_part()->describe() == "[normalize(mean=[0.5], std=[2])]");
  CHECK(!all.deterministic_part()->random());
}

TEST_CASE("a Dataset of one's own with augmentation: 0, 2 and 4 worker threads give the same run bit for bit") {
  test::TempDir dir("pipeline_workers");
  const Fitted zero = fit(dir / "w0", 0), two = fit(dir / "w2", 2), four = fit(dir / "w4", 4);
  REQUIRE(zero.valid_acc.size() == 3);
  CHECK(same(zero, two));
  CHECK(same(zero, four));
  // The workers did the reading: a started batch is never made by the step
  // itself, so threads besides the training thread made examples.
  CHECK(four.threads.size() >= 2);
  CHECK(zero.threads.size() >= 2);  // workers 0: the data.prefetch helper
  // It learns through the augmentation.
  CHECK(zero.valid_acc.back() > 0.5);
}

TEST_CASE("stopped mid-epoch and resumed with another number of workers: the same end as an uninterrupted run") {
  test::TempDir dir("pipeline_resume");
  const Fitted ref = fit(dir / "ref", 0);
  // 15 batches per epoch: step 22 is in the middle of the second epoch.
  CHECK(same(ref, fit(dir / "a", 0, 22, 4)));
  CHECK(same(ref, fit(dir / "b", 3, 7, 0)));
  CHECK(same(ref, fit(dir / "c", 2, 38, 1)));
}

TEST_CASE("a bad example on a worker thread ends the fit with its error, the workers stopped; skip_bad goes on") {
  // (no run directory: nothing is saved)
  for (int64_t workers : {0, 4}) {
    CAPTURE(workers);
    auto data = std::make_shared<SquaresData>(/*bad=*/37);
    cairn::Trainer t(cairn::TrainerOptions().max_epochs(2).workers(workers).run_test(false));
    t.set_model(cairn::Model::wrap(cairn::make_mlp({{1, 8, 8}, {16}, 3, 0.0}))).set_data(data);
    CHECK_THROWS_WITH_AS(t.fit(), "squares (example 37): a damaged square", cairn::BadExample);
  }
  // data.skip_bad: the example is left out of its batch, the same way for any number of workers.
  std::vector<at::Tensor> ends;
  for (int64_t workers : {0, 2}) {
    torch::manual_seed(3);
    auto data = std::make_shared<SquaresData>(37);
    data->setup();
    data->skip_bad = true;
    cairn::Trainer t(cairn::TrainerOptions().max_epochs(2).workers(workers).run_test(false));
    t.set_model(cairn::Model::wrap(cairn::make_mlp({{1, 8, 8}, {16}, 3, 0.0}))).set_data(data);
    CHECK(!t.fit().interrupted);
    ends.push_back(t.model().module->parameters().front().detach().clone());
  }
  CHECK(torch::equal(ends[0], ends[1]));
}

TEST_CASE("Prefetcher with several workers: every started batch comes back for its index; errors reach the step") {
  std::atomic<int> made{0};
  std::mutex mu;
  std::condition_variable cv;
  std::set<std::thread::id> threads;
  int first_two = 0;
  std::atomic<bool> hung{false};
  {
    cairn::detail::Prefetcher p(
        [&](const at::Tensor& idx) {
          ++made;
          {
            std::unique_lock<std::mutex> lock(mu);
            threads.insert(std::this_thread::get_id());
            // Batches 0 and 1 wait for each other: they are made at once, on two threads.
            if (idx[0].item<int64_t>() < 20) {
              ++first_two;
              cv.notify_all();
              if (!cv.wait_for(lock, std::chrono::seconds(600), [&] { return first_two == 2; })) hung = true;
            }
          }
          if (idx[0].item<int64_t>() == 70) throw std::runtime_error("cannot read row 70");
          return cairn::Batch{idx.to(torch::kFloat) * 2, idx};
        },
        3);
    for (int64_t k = 0; k < 12; ++k) p.start(k, torch::arange(k * 10, k * 10 + 4));
    for (int64_t k = 0; k < 7; ++k) CHECK(torch::equal(p.take(k, torch::arange(k * 10, k * 10 + 4)).y, torch::arange(k * 10, k * 10 + 4)));
    CHECK_THROWS_WITH_AS(p.take(7, torch::arange(70, 74)), "cannot read row 70", std::runtime_error);
    // Batch 9 asked for: 8 is dropped; batches 10 and 11 are still made or waiting when the prefetcher goes.
    CHECK(torch::equal(p.take(9, torch::arange(90, 94)).y, torch::arange(90, 94)));
    CHECK(!p.started(8));
    CHECK(p.started(10));
  }
  CHECK(made.load() >= 10);
  CHECK(made.load() <= 12);
  CHECK(threads.size() >= 2);
  CHECK(!hung.load());
}
