#include "cairn/data.h"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

namespace cairn {

Batch TensorDataset::gather(const at::Tensor& indices) const {
  return Batch{x.index_select(0, indices), y.index_select(0, indices)};
}

Batch TensorDataset::slice(int64_t begin, int64_t end) const {
  return Batch{x.slice(0, begin, end), y.slice(0, begin, end)};
}

TensorDataset TensorDataset::subset(const std::vector<int64_t>& indices) const {
  auto idx = torch::tensor(indices, torch::kLong);
  return TensorDataset{x.index_select(0, idx), y.index_select(0, idx)};
}

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(splitmix64(seed ^ splitmix64(stream)));
  // Fisher-Yates with our own bounded draw: std::shuffle's algorithm is not
  // specified, so it could differ between standard libraries.
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t bound = static_cast<uint64_t>(i) + 1;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t r;
    do { r = rng(); } while (r >= limit);
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(r % bound)]);
  }
  return p;
}

EpochSampler::EpochSampler(int64_t n, int64_t batch_size, uint64_t seed, bool shuffle, bool drop_last)
    : n_(n), batch_size_(batch_size), seed_(seed), shuffle_(shuffle), drop_last_(drop_last) {
  if (batch_size <= 0) throw std::invalid_argument("batch_size must be > 0");
}

int64_t EpochSampler::batches_per_epoch() const {
  return drop_last_ ? n_ / batch_size_ : (n_ + batch_size_ - 1) / batch_size_;
}

const std::vector<int64_t>& EpochSampler::order(int64_t epoch) {
  if (epoch != cached_epoch_) {
    if (shuffle_) {
      cached_order_ = seeded_permutation(n_, seed_, 0x5eed0000ULL + static_cast<uint64_t>(epoch));
    } else {
      cached_order_.resize(static_cast<size_t>(n_));
      for (int64_t i = 0; i < n_; ++i) cached_order_[static_cast<size_t>(i)] = i;
    }
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

at::Tensor EpochSampler::batch_indices(int64_t epoch, int64_t k) {
  const auto& o = order(epoch);
  const int64_t begin = k * batch_size_;
  const int64_t end = std::min(n_, begin + batch_size_);
  if (k < 0 || begin >= n_) throw std::out_of_range("batch " + std::to_string(k) + " is past the epoch's end");
  return torch::from_blob(const_cast<int64_t*>(o.data()) + begin, {end - begin}, torch::kLong).clone();
}

at::Tensor read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw DataError("cannot open " + path);
  auto close = std::unique_ptr<gzFile_s, int (*)(gzFile)>(f, gzclose);
  unsigned char magic[4];
  if (gzread(f, magic, 4) != 4 || magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08) {
    throw DataError(path + " is not an IDX file of unsigned bytes");
  }
  const int dims = magic[3];
  std::vector<int64_t> shape;
  int64_t total = 1;
  for (int i = 0; i < dims; ++i) {
    unsigned char b[4];
    if (gzread(f, b, 4) != 4) throw DataError(path + ": truncated header");
    const int64_t d = (int64_t(b[0]) << 24) | (int64_t(b[1]) << 16) | (int64_t(b[2]) << 8) | int64_t(b[3]);
    shape.push_back(d);
    total *= d;
  }
  auto out = torch::empty(shape, torch::kUInt8);
  int64_t done = 0;
  auto* p = out.data_ptr<uint8_t>();
  while (done < total) {
    const unsigned chunk = static_cast<unsigned>(std::min<int64_t>(total - done, 1 << 26));
    const int r = gzread(f, p + done, chunk);
    if (r <= 0) throw DataError(path + ": truncated data (" + std::to_string(done) + " of " + std::to_string(total) + " bytes)");
    done += r;
  }
  return out;
}

FashionMnist::FashionMnist(FashionMnistOptions options) : options_(std::move(options)) {
  batch_size = options_.batch_size;
  seed = options_.seed;
  num_classes = 10;
  input_shape = {1, 28, 28};
}

void FashionMnist::setup() {
  if (loaded_) return;
  namespace fs = std::filesystem;
  auto file = [&](const char* base) {
    for (const char* ext : {".gz", ""}) {
      const fs::path p = fs::path(options_.root) / (std::string(base) + ext);
      if (fs::exists(p)) return p.string();
    }
    throw DataError("Fashion-MNIST file " + std::string(base) + ".gz not found in " + options_.root +
                    ". Install it with `apt-get install dataset-fashion-mnist` (Debian), or set data.root "
                    "to the folder holding train-images-idx3-ubyte.gz and the three other files.");
  };
  auto train_x = read_idx(file("train-images-idx3-ubyte"));
  auto train_y = read_idx(file("train-labels-idx1-ubyte"));
  auto test_x = read_idx(file("t10k-images-idx3-ubyte"));
  auto test_y = read_idx(file("t10k-labels-idx1-ubyte"));
  if (train_x.size(0) != train_y.size(0) || test_x.size(0) != test_y.size(0)) {
    throw DataError("Fashion-MNIST image and label counts differ in " + options_.root);
  }
  // Published statistics of the Fashion-MNIST training set.
  constexpr double kMean = 0.2860, kStd = 0.3530;
  auto prep = [&](const at::Tensor& x) {
    return ((x.to(torch::kFloat32) / 255.0 - kMean) / kStd).unsqueeze(1).contiguous();
  };
  TensorDataset full{prep(train_x), train_y.to(torch::kLong)};
  const int64_t n = full.size();
  const auto perm = seeded_permutation(n, options_.seed, 0x59117ULL);
  const int64_t n_valid = static_cast<int64_t>(static_cast<double>(n) * options_.valid_fraction);
  std::vector<int64_t> train_idx(perm.begin(), perm.end() - n_valid);
  std::vector<int64_t> valid_idx(perm.end() - n_valid, perm.end());
  std::sort(train_idx.begin(), train_idx.end());
  std::sort(valid_idx.begin(), valid_idx.end());
  if (options_.limit_train >= 0 && static_cast<int64_t>(train_idx.size()) > options_.limit_train) {
    train_idx.resize(static_cast<size_t>(options_.limit_train));
    const int64_t v = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(options_.limit_train) * options_.valid_fraction));
    if (static_cast<int64_t>(valid_idx.size()) > v && n_valid > 0) valid_idx.resize(static_cast<size_t>(v));
  }
  train = full.subset(train_idx);
  if (!valid_idx.empty()) valid = full.subset(valid_idx);
  test = TensorDataset{prep(test_x), test_y.to(torch::kLong)};
  const int64_t limit_test = options_.limit_test;
  if (limit_test >= 0 && test.size() > limit_test) test = TensorDataset{test.x.slice(0, 0, limit_test), test.y.slice(0, 0, limit_test)};
  loaded_ = true;
}

SyntheticData::SyntheticData(SyntheticOptions options) : options_(options) {
  batch_size = options_.batch_size;
  seed = options_.seed;
  num_classes = options_.num_classes;
  input_shape = {options_.features};
}

void SyntheticData::setup() {
  if (loaded_) return;
  // A private generator: building the data never touches the global RNG.
  auto gen = at::detail::createCPUGenerator(options_.seed + 1234567);
  auto centers = torch::randn({options_.num_classes, options_.features}, gen) * 2.0;
  auto make = [&](int64_t n) {
    auto y = torch::randint(options_.num_classes, {n}, gen, torch::kLong);
    auto x = centers.index_select(0, y) + torch::randn({n, options_.features}, gen) * options_.noise;
    return TensorDataset{x.contiguous(), y};
  };
  train = make(options_.train_size);
  valid = make(options_.valid_size);
  test = make(options_.test_size);
  loaded_ = true;
}

}  // namespace cairn
