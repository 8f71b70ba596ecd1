// The built-in data sets of YAML experiments (application layer): Fashion-MNIST
// from Debian's dataset-fashion-mnist, Gaussian clusters for tests, and a dict
// of tensors saved by Python's torch.save.
#pragma once

#include "cairn/data.h"

#include <string>
#include <utility>
#include <vector>

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

// --- Data read from disk as training goes -------------------------------------

//! Decodes a PNG (libpng) or JPEG (libjpeg-turbo) file's bytes into a float32
//! tensor [channels, height, width] scaled to [0, 1]; `channels` 1 (grey) or 3
//! (RGB) whatever the file holds. Throws std::runtime_error with the decoder's reason.
at::Tensor decode_image(const std::string& bytes, int64_t channels);
//! An image file's (height, width) from its header; throws std::runtime_error.
std::pair<int64_t, int64_t> image_size(const std::string& path);

//! Images in class folders, as torchvision's ImageFolder: `root/<class>/<file>`
//! with .png, .jpg or .jpeg files; classes sorted by name, files sorted by
//! name within each. An image is read and decoded when get() asks for it; one
//! that does not decode is a BadExample naming the file and its index.
class ImageFolder : public Dataset {
 public:
  //! `classes`: the class names whose indices the labels take (another split's,
  //! so valid and test use training's); empty: this folder's own.
  ImageFolder(std::string root, int64_t channels, std::vector<std::string> classes = {});
  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  Example get(int64_t index, Generator& gen) const override;
  std::string locate(int64_t index) const override { return files_.at(static_cast<size_t>(index)); }
  const std::vector<std::string>& classes() const { return classes_; }
  const std::string& root() const { return root_; }
  //! Two files of different (height, width), from their headers: {} when every image has one size.
  std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> two_sizes() const;

 private:
  std::string root_;
  int64_t channels_;
  std::vector<std::string> classes_, files_;
  std::vector<int64_t> labels_;
};

//! Images to predict: one image file, a folder of them, or class folders (files sorted by path).
class ImageFiles : public Dataset {
 public:
  ImageFiles(const std::string& path, int64_t channels);
  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  Example get(int64_t index, Generator& gen) const override;
  std::string locate(int64_t index) const override { return files_.at(static_cast<size_t>(index)); }
  const std::vector<std::string>& files() const { return files_; }

 private:
  std::vector<std::string> files_;
  int64_t channels_;
};

struct ImageFolderOptions {
  std::string path;              //!< training images: path/<class>/<file>
  std::string valid_path;        //!< optional, the same classes; else valid_fraction of train is carved out
  std::string test_path;         //!< optional
  int64_t channels = 3;          //!< 1 (grey) or 3 (RGB): every image is decoded to this
  int64_t batch_size = 64;
  double valid_fraction = 0.1;
  uint64_t seed = 0;
};

//! `data.name: image_folder`: splits read from image folders as training goes.
class ImageFolderData : public DataModule {
 public:
  explicit ImageFolderData(ImageFolderOptions options);
  void setup() override;
  std::string name() const override { return "image_folder"; }
  const ImageFolderOptions& options() const { return options_; }
  //! The training folder (after setup).
  const ImageFolder& images() const { return *images_; }

 private:
  ImageFolderOptions options_;
  std::shared_ptr<ImageFolder> images_;
  bool loaded_ = false;
};

//! Sharded tensors: a folder of `*.cshard` files of N examples each, written by
//! python/cairn_shards.py from numpy or torch arrays, read by memory mapping
//! (data larger than memory is paged in as it is read). Format (little endian):
//! "CAIRNSHD", u32 version 1, u32 header bytes, u64 examples, u8 x dtype,
//! u8 y dtype (0: no targets), u8 x rank, u8 y rank, u32 0, then the x and y
//! dimensions (u64 each), zeros up to the header's size; then every example's
//! x, then every example's y, row-major. dtypes: 1 uint8, 2 int8, 3 int16,
//! 4 int32, 5 int64, 6 float16, 7 float32, 8 float64. A file whose size is not
//! what its header says, or shards that disagree on shapes, is a BadExample
//! (exit 3) naming the file.
class ShardDataset : public Dataset {
 public:
  //! `float_targets`: targets read as float32 (else int64 class labels).
  ShardDataset(const std::string& folder, bool float_targets);
  int64_t size() const override { return total_; }
  Example get(int64_t index, Generator& gen) const override;
  Batch get_batch(const std::vector<int64_t>& indices, const std::function<uint64_t(int64_t)>& seed_of) const override;
  std::string locate(int64_t index) const override;
  const std::vector<int64_t>& x_shape() const { return x_shape_; }
  const std::vector<int64_t>& y_shape() const { return y_shape_; }
  bool has_targets() const { return y_dtype_ != 0; }

 private:
  struct Shard {
    std::string path;
    std::shared_ptr<const unsigned char> map;  //!< the file mapped read-only (unmapped with the last copy)
    const unsigned char* base = nullptr;
    size_t bytes = 0;
    int64_t first = 0, count = 0;
    size_t data_offset = 0;
  };
  const Shard& shard_of(int64_t index) const;
  void read_row(const Shard& s, int64_t row, void* x_out, void* y_out) const;
  std::vector<Shard> shards_;
  int64_t total_ = 0;
  int x_dtype_ = 0, y_dtype_ = 0;
  std::vector<int64_t> x_shape_, y_shape_;
  size_t x_row_bytes_ = 0, y_row_bytes_ = 0;
  bool float_targets_;
};

struct ShardOptions {
  std::string path;              //!< training shards
  std::string valid_path;        //!< optional; else valid_fraction of train is carved out
  std::string test_path;         //!< optional
  int64_t batch_size = 64;
  double valid_fraction = 0.1;
  int64_t num_classes = 0;       //!< 0: the largest label + 1 (read from the targets once)
  uint64_t seed = 0;
  bool float_targets = false;
};

//! `data.name: shards`: splits of memory-mapped shard folders.
class ShardData : public DataModule {
 public:
  explicit ShardData(ShardOptions options);
  void setup() override;
  std::string name() const override { return "shards"; }

 private:
  ShardOptions options_;
  bool loaded_ = false;
};

//! The indices [0, n) split into train and valid by the seed (valid_fraction of
//! them, at least one left for training), each sorted: what every data set
//! without its own valid split does.
std::pair<std::vector<int64_t>, std::vector<int64_t>> carve_valid(int64_t n, double valid_fraction, uint64_t seed);

}  // namespace cairn
