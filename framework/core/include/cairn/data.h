// Data: the Dataset interface the Trainer reads, in-memory tensor datasets,
// per-example randomness, transforms, the DataModule, and the epoch-seeded
// sampler that makes exact resume cheap. Built-in data sets (Fashion-MNIST,
// synthetic, tensors from a file, CSV, image folders, shards) are in
// cairn/datasets.h; the transforms in cairn/transforms.h.
//
// EpochSampler draws epoch e's order from (seed, e) alone, so a run resumed at
// (epoch e, batch k) regenerates the permutation and starts at batch k in
// O(1) batches — nothing is replayed. Every example's randomness (its
// augmentation) comes from a Generator seeded by (seed, epoch, example index)
// alone, never from a worker thread's or a process's state: the batches are
// the same bits whatever the number of workers (data.workers) or processes,
// and after a resume with another number of them.
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace cairn {

struct Batch {
  at::Tensor x;  //!< inputs, first dimension is the batch
  at::Tensor y;  //!< targets (class indices for classification)
  int64_t size() const { return x.defined() ? x.size(0) : 0; }
};

//! One example: its input and (where the data has labels) its target, without a batch dimension.
struct Example {
  at::Tensor x;
  at::Tensor y;
};

//! The random numbers of one example. Seeded by (seed, epoch, index) alone
//! (example_seed), so what an example draws does not depend on the thread,
//! worker or process that makes it. Draw with its own functions, or with
//! LibTorch's random functions through torch(): at::randn(shape, g.torch()).
class Generator {
 public:
  explicit Generator(uint64_t seed);
  uint64_t seed() const { return seed_; }
  uint64_t bits();                           //!< 64 random bits
  double uniform();                          //!< in [0, 1)
  int64_t integer(int64_t lo, int64_t hi);   //!< in [lo, hi], uniformly
  bool bernoulli(double p) { return uniform() < p; }
  //! A LibTorch CPU generator seeded from this one (made on first use).
  at::Generator& torch();

 private:
  uint64_t seed_, state_;
  std::optional<at::Generator> torch_;
};

//! The seed of example `index`'s generator in the pass `epoch` of a run seeded
//! `seed` (evaluation passes use negative epochs: kValidPass, kTestPass, ...).
uint64_t example_seed(uint64_t seed, int64_t epoch, int64_t index);
constexpr int64_t kValidPass = -1, kTestPass = -2, kPredictPass = -3, kTrainPass = -4;

//! A corrupt example (an image that does not decode, a shard shorter than its
//! header): the message names the file and the example's index. The `cairn`
//! program exits 3 on it, or skips the example with `data.skip_bad: true`.
class BadExample : public std::runtime_error {
 public:
  BadExample(std::string where, int64_t index, const std::string& why)
      : std::runtime_error(where + " (example " + std::to_string(index) + "): " + why),
        where_(std::move(where)), index_(index) {}
  const std::string& where() const { return where_; }
  int64_t index() const { return index_; }

 private:
  std::string where_;
  int64_t index_;
};

//! What the Trainer reads: examples by index. get() may read files, decode and
//! draw random numbers (from `gen` only); it is called from several worker
//! threads at once (data.workers), so it must not change shared state.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  bool empty() const { return size() == 0; }
  //! Example `index` (0 <= index < size()). Throws BadExample for a corrupt one.
  virtual Example get(int64_t index, Generator& gen) const = 0;
  //! Examples `indices` stacked into a batch, each from its own generator
  //! (`seed_of(index)`). Override for speed (one read for many rows); the
  //! default calls get() for each and stacks.
  virtual Batch get_batch(const std::vector<int64_t>& indices, const std::function<uint64_t(int64_t)>& seed_of) const;
  //! Where example `index` comes from, for messages ("train/cat/3.png").
  virtual std::string locate(int64_t index) const { return "example " + std::to_string(index); }
};

//! A dataset held in memory as two tensors (one of the Datasets).
class TensorDataset : public Dataset {
 public:
  TensorDataset() = default;
  TensorDataset(at::Tensor x_, at::Tensor y_) : x(std::move(x_)), y(std::move(y_)) {}
  at::Tensor x;
  at::Tensor y;
  int64_t size() const override { return x.defined() ? x.size(0) : 0; }
  Example get(int64_t index, Generator& gen) const override;
  Batch get_batch(const std::vector<int64_t>& indices, const std::function<uint64_t(int64_t)>& seed_of) const override;
  Batch gather(const at::Tensor& indices) const;
  Batch slice(int64_t begin, int64_t end) const;
  //! The rows selected by `indices`, as a new dataset.
  TensorDataset subset(const std::vector<int64_t>& indices) const;
};

//! The examples `indices` of another dataset (a validation split carved from training data).
class Subset : public Dataset {
 public:
  Subset(std::shared_ptr<const Dataset> base, std::vector<int64_t> indices);
  int64_t size() const override { return static_cast<int64_t>(indices_.size()); }
  Example get(int64_t index, Generator& gen) const override;
  //! The base's get_batch of the mapped rows (one read where the base has one), seeded by this subset's indices.
  Batch get_batch(const std::vector<int64_t>& indices, const std::function<uint64_t(int64_t)>& seed_of) const override;
  std::string locate(int64_t index) const override;
  const Dataset& base() const { return *base_; }

 private:
  std::shared_ptr<const Dataset> base_;
  std::vector<int64_t> indices_;
};

//! A per-example transform (augmentation, normalisation). Its randomness comes
//! from `gen` only. Built-ins and Compose are in cairn/transforms.h.
class Transform {
 public:
  virtual ~Transform() = default;
  virtual Example operator()(Example ex, Generator& gen) const = 0;
  //! Its name and options in one line ("random_crop(size=[28, 28], padding=4)"):
  //! what logs show and resume compares.
  virtual std::string describe() const = 0;
  //! Draws random numbers (augmentation): left out of evaluation by default.
  virtual bool random() const { return false; }
};

//! A random permutation of 0..n-1 that depends only on (seed, stream).
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, uint64_t stream);

class EpochSampler {
 public:
  EpochSampler(int64_t dataset_size, int64_t batch_size, uint64_t seed, bool shuffle = true,
               bool drop_last = false);
  int64_t batches_per_epoch() const;
  //! Indices of batch k of epoch e (O(batch) once the epoch's order is cached).
  at::Tensor batch_indices(int64_t epoch, int64_t k);
  //! The whole order of epoch e.
  const std::vector<int64_t>& order(int64_t epoch);
  int64_t batch_size() const { return batch_size_; }

 private:
  int64_t n_, batch_size_;
  uint64_t seed_;
  bool shuffle_, drop_last_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_order_;
};

//! Raised when data files are missing or malformed; the message says what to install or fix.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! train / valid / test splits, loaded on setup().
//!
//! A split is either in memory (the TensorDataset `train`, `valid`, `test`)
//! or any Dataset of one's own (`train_set`, ...: read from disk as training
//! goes), which then takes the split's place. Examples pass through
//! `train_transform` (training) or `eval_transform` (the others) when set.
class DataModule {
 public:
  virtual ~DataModule() = default;
  //! Loads the data (idempotent). Throws DataError.
  virtual void setup() = 0;
  virtual std::string name() const = 0;
  TensorDataset train, valid, test;
  std::shared_ptr<const Dataset> train_set, valid_set, test_set;
  std::shared_ptr<const Transform> train_transform, eval_transform;
  int64_t batch_size = 64;
  uint64_t seed = 0;
  int64_t num_classes = 0;
  std::vector<int64_t> input_shape;  //!< shape of one example
  //! A corrupt example (BadExample) is skipped, said once and counted, instead of ending the run.
  bool skip_bad = false;

  //! The split the Trainer reads ("train", "valid", "test"): its Dataset of
  //! one's own when set, else the tensors.
  const Dataset& split(const std::string& name) const;
  //! The split is the in-memory tensors, read without a transform (batches are gathered rows).
  bool gathered(const std::string& name) const;
  //! The transform of a split (training's or evaluation's), or null.
  const Transform* transform_of(const std::string& name) const;
};

//! Makes the batches of a split: each example from split.get() (or one
//! get_batch() when nothing is per-example), through the transform, stacked.
//! Thread-safe: worker threads call make() at once. Counts skipped examples.
class BatchMaker {
 public:
  BatchMaker(const DataModule& data, const std::string& split, int64_t pass);
  //! Any data set: `what` names it in skip messages ("training", "prediction").
  BatchMaker(const Dataset& ds, const Transform* transform, uint64_t seed, int64_t pass, bool skip_bad, std::string what);
  //! The batch of examples `indices` (skipping bad ones with data.skip_bad).
  Batch make(const std::vector<int64_t>& indices) const;
  Batch make(const at::Tensor& indices) const;
  //! Examples skipped so far (shared by copies of this maker).
  int64_t skipped() const;

 private:
  const Dataset* ds_;
  const Transform* transform_;
  uint64_t seed_;
  int64_t pass_;
  bool skip_bad_;
  std::string what_;
  std::shared_ptr<struct SkipLog> skips_;
};

}  // namespace cairn
