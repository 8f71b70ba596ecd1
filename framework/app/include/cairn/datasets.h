// The built-in data sets of YAML experiments (application layer): Fashion-MNIST
// from Debian's dataset-fashion-mnist, Gaussian clusters for tests, and a dict
// of tensors saved by Python's torch.save.
#pragma once

#include "cairn/data.h"

#include <string>

namespace cairn {

struct FashionMnistOptions {
  std::string root = "/usr/share/datasets/fashion-mnist";
  int64_t batch_size = 64;
  double valid_fraction = 0.1;   //!< carved from train, deterministically from the seed
  int64_t limit_train = -1;      //!< cap on training examples (-1: all)
  int64_t limit_test = -1;       //!< cap on test examples (-1: all)
  uint64_t seed = 0;
};

//! Fashion-MNIST read straight from the gzipped IDX files (Debian package
//! `dataset-fashion-mnist`). Images become float tensors [N, 1, 28, 28],
//! scaled to [0, 1] and standardised with the training set's mean and std.
class FashionMnist : public DataModule {
 public:
  explicit FashionMnist(FashionMnistOptions options);
  void setup() override;
  std::string name() const override { return "fashion_mnist"; }
  const FashionMnistOptions& options() const { return options_; }

 private:
  FashionMnistOptions options_;
  bool loaded_ = false;
};

//! Reads an IDX file (.gz or plain) into a uint8 tensor of its shape.
at::Tensor read_idx(const std::string& path);

struct SyntheticOptions {
  int64_t train_size = 512;
  int64_t valid_size = 128;
  int64_t test_size = 128;
  int64_t features = 16;
  int64_t num_classes = 4;
  int64_t batch_size = 32;
  double noise = 0.5;
  uint64_t seed = 0;
};

//! Gaussian clusters, one per class: learnable in a few epochs, for tests.
class SyntheticData : public DataModule {
 public:
  explicit SyntheticData(SyntheticOptions options);
  void setup() override;
  std::string name() const override { return "synthetic"; }

 private:
  SyntheticOptions options_;
  bool loaded_ = false;
};

struct TensorFileOptions {
  std::string path;              //!< a file written by Python's torch.save(dict_of_tensors, path)
  int64_t batch_size = 64;
  double valid_fraction = 0.1;   //!< carved from train (from the seed) when the file has no valid split
  int64_t num_classes = 0;       //!< 0: the largest label + 1
  uint64_t seed = 0;
  //! Targets are floats of any shape (regression, multi-label), not class labels.
  bool float_targets = false;
};

//! Your own data from Python: a dict of tensors saved with torch.save.
//!   torch.save({"train_x": X, "train_y": Y,            # required
//!               "valid_x": ..., "valid_y": ...,        # optional (else carved from train)
//!               "test_x": ..., "test_y": ...}, "data.pt")
//! `*_x`: floating point, first dimension the examples (read as float32);
//! `*_y`: integer class labels in [0, num_classes) of shape [N] (or [N, ...]
//! for per-position labels: segmentation, tokens); with float_targets (a
//! regression or multi-label loss), numbers of any shape [N, ...], read as
//! float32, and num_classes becomes the number of values per example. Every
//! split's x and y have the shapes of train's past the first dimension. Any
//! other key, a missing half of a pair, mismatched lengths or dtypes is a
//! DataError naming the file and the key.
class TensorFileData : public DataModule {
 public:
  explicit TensorFileData(TensorFileOptions options);
  void setup() override;
  std::string name() const override { return "tensors"; }

 private:
  TensorFileOptions options_;
  bool loaded_ = false;
};

struct CsvOptions {
  std::string path;              //!< training rows; a header row names the columns
  std::string valid_path;        //!< optional; else `valid_fraction` of train is carved out from the seed
  std::string test_path;         //!< optional
  //! The target column(s); every other column is a feature. One column of
  //! integer class labels, or (with float_targets) one or more columns of numbers.
  std::vector<std::string> labels = {"label"};
  int64_t batch_size = 64;
  double valid_fraction = 0.1;
  int64_t num_classes = 0;       //!< 0: the largest label + 1
  uint64_t seed = 0;
  bool float_targets = false;    //!< targets are float32 [N, labels] (regression, multi-label)
};

//! Tabular data: CSV files of numbers with a header row. Features become
//! float32 [N, columns - labels]; a field that is not a finite number, a row
//! with the wrong number of fields, or a class label that is not an integer
//! is a DataError naming file:line and the column.
class CsvData : public DataModule {
 public:
  explicit CsvData(CsvOptions options);
  void setup() override;
  std::string name() const override { return "csv"; }
  const CsvOptions& options() const { return options_; }
  //! The feature columns' names, in order (after setup()).
  const std::vector<std::string>& feature_columns() const { return features_; }

 private:
  CsvOptions options_;
  std::vector<std::string> features_;
  bool loaded_ = false;
};

//! Examples to predict from a CSV file: every column but `labels` is a
//! feature; the label columns may be missing (then y is undefined). With
//! `features` given, the file's feature columns must be those, in that order.
//! Throws DataError naming file:line and the column.
TensorDataset read_csv_examples(const std::string& path, const std::vector<std::string>& labels, bool float_targets,
                                const std::vector<std::string>& features = {});

}  // namespace cairn
