#include "cairn/data.h"

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <unordered_map>

namespace cairn {

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

Generator::Generator(uint64_t seed) : seed_(seed), state_(seed) {}

uint64_t Generator::bits() {
  // splitmix64's stream: one add and a mix per draw, fine for augmentation.
  const uint64_t z = splitmix64(state_);
  state_ += 0x9e3779b97f4a7c15ULL;
  return z;
}

double Generator::uniform() { return static_cast<double>(bits() >> 11) * 0x1.0p-53; }

int64_t Generator::integer(int64_t lo, int64_t hi) {
  if (hi < lo) throw std::invalid_argument("Generator::integer: empty range");
  const uint64_t bound = static_cast<uint64_t>(hi - lo) + 1;
  if (bound == 0) return static_cast<int64_t>(bits());
  const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t r;
  do { r = bits(); } while (r >= limit);
  return lo + static_cast<int64_t>(r % bound);
}

at::Generator& Generator::torch() {
  if (!torch_) torch_ = at::make_generator<at::CPUGeneratorImpl>(splitmix64(seed_ ^ 0x70726368ULL));
  return *torch_;
}

uint64_t example_seed(uint64_t seed, int64_t epoch, int64_t index) {
  uint64_t h = splitmix64(seed ^ 0xda7a5eedULL);
  h = splitmix64(h ^ static_cast<uint64_t>(epoch));
  return splitmix64(h ^ static_cast<uint64_t>(index));
}

namespace {
//! Stacks examples into a batch (targets when every example has one).
Batch collate(const std::vector<Example>& examples) {
  if (examples.empty()) return Batch{};
  std::vector<at::Tensor> xs, ys;
  xs.reserve(examples.size());
  for (const auto& e : examples) {
    xs.push_back(e.x);
    if (e.y.defined()) ys.push_back(e.y);
  }
  for (size_t i = 1; i < xs.size(); ++i) {
    if (!xs[i].sizes().equals(xs[0].sizes())) {
      std::ostringstream os;
      os << "examples of a batch differ in shape: " << xs[0].sizes() << " and " << xs[i].sizes()
         << " (give every example one size, e.g. with a resize transform)";
      throw DataError(os.str());
    }
  }
  return Batch{at::stack(xs), ys.size() == xs.size() ? at::stack(ys) : at::Tensor()};
}
}  // namespace

Batch Dataset::get_batch(const std::vector<int64_t>& indices, const std::function<uint64_t(int64_t)>& seed_of) const {
  std::vector<Example> examples;
  examples.reserve(indices.size());
  for (int64_t i : indices) {
    Generator gen(seed_of(i));
    examples.push_back(get(i, gen));
  }
  return collate(examples);
}

Example TensorDataset::get(int64_t index, Generator&) const {
  return Example{x[index], y.defined() ? y[index] : at::Tensor()};
}

Batch TensorDataset::get_batch(const std::vector<int64_t>& indices, const std::function<uint64_t(int64_t)>&) const {
  auto idx = torch::tensor(indices, torch::kLong);
  return Batch{x.index_select(0, idx), y.defined() ? y.index_select(0, idx) : at::Tensor()};
}

Subset::Subset(std::shared_ptr<const Dataset> base, std::vector<int64_t> indices)
    : base_(std::move(base)), indices_(std::move(indices)) {
  for (int64_t i : indices_) {
    if (i < 0 || i >= base_->size()) throw std::out_of_range("Subset: index " + std::to_string(i) + " is outside the data set");
  }
}

Example Subset::get(int64_t index, Generator& gen) const { return base_->get(indices_.at(static_cast<size_t>(index)), gen); }

Batch Subset::get_batch(const std::vector<int64_t>& indices, const std::function<uint64_t(int64_t)>& seed_of) const {
  std::vector<int64_t> mapped;
  mapped.reserve(indices.size());
  std::unordered_map<int64_t, int64_t> back;  // base index -> this subset's (the seeds are this split's)
  for (int64_t i : indices) {
    mapped.push_back(indices_.at(static_cast<size_t>(i)));
    back.emplace(mapped.back(), i);
  }
  return base_->get_batch(mapped, [&](int64_t b) { return seed_of ? seed_of(back.at(b)) : uint64_t(0); });
}

std::string Subset::locate(int64_t index) const { return base_->locate(indices_.at(static_cast<size_t>(index))); }

Batch TensorDataset::gather(const at::Tensor& indices) const {
  return Batch{x.index_select(0, indices), y.defined() ? y.index_select(0, indices) : at::Tensor()};
}

Batch TensorDataset::slice(int64_t begin, int64_t end) const {
  return Batch{x.slice(0, begin, end), y.defined() ? y.slice(0, begin, end) : at::Tensor()};
}

TensorDataset TensorDataset::subset(const std::vector<int64_t>& indices) const {
  auto idx = torch::tensor(indices, torch::kLong);
  return TensorDataset{x.index_select(0, idx), y.index_select(0, idx)};
}

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

const Dataset& DataModule::split(const std::string& name) const {
  if (name == "train") return train_set ? *train_set : train;
  if (name == "valid") return valid_set ? *valid_set : valid;
  if (name == "test") return test_set ? *test_set : test;
  throw std::invalid_argument("DataModule::split: no split '" + name + "' (train, valid or test)");
}

const Transform* DataModule::transform_of(const std::string& name) const {
  return (name == "train" ? train_transform : eval_transform).get();
}

bool DataModule::gathered(const std::string& name) const {
  return !transform_of(name) && &split(name) == static_cast<const Dataset*>(name == "train" ? &train : name == "valid" ? &valid : &test);
}

struct SkipLog {
  std::mutex mu;
  int64_t count = 0;
};

namespace {
//! Each skipped example is said once per process (a later epoch skips it again, quietly).
void say_skipped(const std::string& split, const BadExample& e) {
  static std::mutex mu;
  static std::set<std::pair<std::string, std::string>> said;
  std::lock_guard<std::mutex> lock(mu);
  if (said.size() < 100000 && said.emplace(split, e.what()).second) {
    std::cerr << "cairn: data.skip_bad: skipped a " << split << " example: " << e.what() << "\n";
  }
}
}  // namespace

BatchMaker::BatchMaker(const DataModule& data, const std::string& split, int64_t pass)
    : BatchMaker(data.split(split), data.transform_of(split), data.seed, pass, data.skip_bad,
                 split == "train" ? "training" : split == "valid" ? "validation" : split) {}

BatchMaker::BatchMaker(const Dataset& ds, const Transform* transform, uint64_t seed, int64_t pass, bool skip_bad,
                       std::string what)
    : ds_(&ds), transform_(transform), seed_(seed), pass_(pass), skip_bad_(skip_bad), what_(std::move(what)),
      skips_(std::make_shared<SkipLog>()) {}

int64_t BatchMaker::skipped() const {
  std::lock_guard<std::mutex> lock(skips_->mu);
  return skips_->count;
}

Batch BatchMaker::make(const at::Tensor& indices) const {
  const at::Tensor idx = indices.to(torch::kCPU).to(torch::kLong).contiguous();
  const int64_t* p = idx.data_ptr<int64_t>();
  return make(std::vector<int64_t>(p, p + idx.numel()));
}

Batch BatchMaker::make(const std::vector<int64_t>& indices) const {
  const uint64_t seed = seed_;
  const int64_t pass = pass_;
  auto seed_of = [seed, pass](int64_t i) { return example_seed(seed, pass, i); };
  // Nothing per example: one read for the batch (the data set's own get_batch).
  if (!transform_ && !skip_bad_) return ds_->get_batch(indices, seed_of);
  std::vector<Example> examples;
  examples.reserve(indices.size());
  for (int64_t i : indices) {
    Generator gen(seed_of(i));
    try {
      Example ex = ds_->get(i, gen);
      if (transform_) ex = (*transform_)(std::move(ex), gen);
      examples.push_back(std::move(ex));
    } catch (const BadExample& e) {
      if (!skip_bad_) throw;
      say_skipped(what_, e);
      std::lock_guard<std::mutex> lock(skips_->mu);
      ++skips_->count;
    }
  }
  return collate(examples);
}

}  // namespace cairn
