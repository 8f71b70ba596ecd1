#include "cairn/data.h"

#include <torch/torch.h>

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

}  // namespace cairn
