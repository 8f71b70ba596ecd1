// Data: in-memory tensor datasets, the DataModule a Trainer reads, and the
// epoch-seeded sampler that makes exact resume cheap. The built-in data sets
// (Fashion-MNIST, synthetic, tensors from a file) are in cairn/datasets.h.
//
// EpochSampler draws epoch e's order from (seed, e) alone, so a run resumed at
// (epoch e, batch k) regenerates the permutation and starts at batch k in
// O(1) batches — nothing is replayed.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cairn {

struct Batch {
  at::Tensor x;  //!< inputs, first dimension is the batch
  at::Tensor y;  //!< targets (class indices for classification)
  int64_t size() const { return x.defined() ? x.size(0) : 0; }
};

//! A dataset held in memory as two tensors.
struct TensorDataset {
  at::Tensor x;
  at::Tensor y;
  int64_t size() const { return x.defined() ? x.size(0) : 0; }
  bool empty() const { return size() == 0; }
  Batch gather(const at::Tensor& indices) const;
  Batch slice(int64_t begin, int64_t end) const;
  //! The rows selected by `indices`, as a new dataset.
  TensorDataset subset(const std::vector<int64_t>& indices) const;
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
class DataModule {
 public:
  virtual ~DataModule() = default;
  //! Loads the data (idempotent). Throws DataError.
  virtual void setup() = 0;
  virtual std::string name() const = 0;
  TensorDataset train, valid, test;
  int64_t batch_size = 64;
  uint64_t seed = 0;
  int64_t num_classes = 0;
  std::vector<int64_t> input_shape;  //!< shape of one example
};

}  // namespace cairn
