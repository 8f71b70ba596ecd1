// Data: the epoch-seeded sampler, real Fashion-MNIST, synthetic data.
#include "support.h"

TEST_CASE("an epoch's order depends on (seed, epoch) alone") {
  cairn::EpochSampler a(1000, 64, 42), b(1000, 64, 42), c(1000, 64, 43);
  const std::vector<int64_t> e3 = a.order(3);  // copies: order() returns the cached epoch
  const std::vector<int64_t> e4 = a.order(4);
  CHECK(e3 == b.order(3));
  CHECK(e3 != e4);
  CHECK(e3 != c.order(3));
  std::vector<int64_t> o = a.order(5);
  std::sort(o.begin(), o.end());
  for (int64_t i = 0; i < 1000; ++i) REQUIRE(o[static_cast<size_t>(i)] == i);
  CHECK(a.batches_per_epoch() == 16);
  CHECK(cairn::EpochSampler(1000, 64, 1, true, true).batches_per_epoch() == 15);
}

TEST_CASE("starting mid-epoch gives exactly the remaining batches, without replay") {
  cairn::EpochSampler full(500, 32, 7);
  std::vector<at::Tensor> all;
  for (int64_t k = 0; k < full.batches_per_epoch(); ++k) all.push_back(full.batch_indices(2, k));
  cairn::EpochSampler resumed(500, 32, 7);  // a fresh process
  for (int64_t k = 9; k < resumed.batches_per_epoch(); ++k) {
    CHECK(resumed.batch_indices(2, k).equal(all[static_cast<size_t>(k)]));
  }
  CHECK(all.back().size(0) == 500 - 15 * 32);
  CHECK_THROWS_AS(full.batch_indices(2, 16), std::out_of_range);
}

TEST_CASE("the sampler's order is pinned (same on every platform and library)") {
  // Our own Fisher-Yates over mt19937_64: these values must never change, or
  // resumed runs from older checkpoints would see different batches.
  const auto p = cairn::seeded_permutation(10, 42, 0x5eed0000ULL);
  const auto q = cairn::seeded_permutation(10, 42, 0x5eed0000ULL);
  CHECK(p == q);
  CHECK(p != cairn::seeded_permutation(10, 42, 0x5eed0001ULL));
}

TEST_CASE("real Fashion-MNIST loads from the gzipped IDX files with a seeded validation split") {
  cairn::FashionMnistOptions o;
  o.seed = 5;
  cairn::FashionMnist a(o);
  a.setup();
  CHECK(a.train.size() == 54000);
  CHECK(a.valid.size() == 6000);
  CHECK(a.test.size() == 10000);
  CHECK(a.train.x.sizes() == std::vector<int64_t>{54000, 1, 28, 28});
  CHECK(a.train.y.min().item<int64_t>() == 0);
  CHECK(a.train.y.max().item<int64_t>() == 9);
  CHECK(a.train.x.mean().item<double>() == doctest::Approx(0.0).epsilon(0.05));
  CHECK(a.num_classes == 10);
  // The split depends on the seed only.
  cairn::FashionMnist b(o);
  b.setup();
  CHECK(a.valid.y.equal(b.valid.y));
  CHECK(a.valid.x.equal(b.valid.x));
  o.seed = 6;
  cairn::FashionMnist c(o);
  c.setup();
  CHECK(!a.valid.x.equal(c.valid.x));
}

TEST_CASE("limit_train caps the training set") {
  cairn::FashionMnistOptions o;
  o.limit_train = 1000;
  o.limit_test = 200;
  cairn::FashionMnist d(o);
  d.setup();
  CHECK(d.train.size() == 1000);
  CHECK(d.valid.size() == 100);
  CHECK(d.test.size() == 200);
}

TEST_CASE("missing Fashion-MNIST files name the package to install") {
  cairn::FashionMnistOptions o;
  o.root = "/nonexistent/fashion";
  cairn::FashionMnist d(o);
  std::string msg;
  try {
    d.setup();
  } catch (const cairn::DataError& e) {
    msg = e.what();
  }
  CHECK(msg.find("apt-get install dataset-fashion-mnist") != std::string::npos);
  CHECK(msg.find("/nonexistent/fashion") != std::string::npos);
}

TEST_CASE("synthetic data is deterministic and leaves the global RNG alone") {
  torch::manual_seed(1);
  const auto before = torch::rand({1});
  torch::manual_seed(1);
  cairn::SyntheticData a(cairn::SyntheticOptions{});
  a.setup();
  const auto after = torch::rand({1});
  CHECK(before.equal(after));
  cairn::SyntheticData b(cairn::SyntheticOptions{});
  b.setup();
  CHECK(a.train.x.equal(b.train.x));
}
