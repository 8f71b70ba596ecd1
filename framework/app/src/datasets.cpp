// Built-in data sets: Fashion-MNIST, synthetic clusters, tensors from a file.
#include "cairn/datasets.h"

#include "cairn/checkpoint_file.h"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace cairn {

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

std::pair<std::vector<int64_t>, std::vector<int64_t>> carve_valid(int64_t n, double valid_fraction, uint64_t seed) {
  const auto perm = seeded_permutation(n, seed, 0x7e11503ULL);
  const int64_t n_valid = std::min<int64_t>(n - 1, static_cast<int64_t>(static_cast<double>(n) * valid_fraction));
  std::vector<int64_t> train_idx(perm.begin(), perm.end() - n_valid), valid_idx(perm.end() - n_valid, perm.end());
  std::sort(train_idx.begin(), train_idx.end());
  std::sort(valid_idx.begin(), valid_idx.end());
  return {std::move(train_idx), std::move(valid_idx)};
}

namespace {
// What the tensors and csv data sets share once their tensors are read: label
// checks, the class count, and the valid split carved from train by the seed
// when the data has none (as for Fashion-MNIST, so every run of one seed sees
// the same examples).
template <class Fail>
void finish_classification(DataModule& d, TensorDataset full, int64_t classes, double valid_fraction, uint64_t seed,
                           Fail fail, bool float_targets = false) {
  if (float_targets) {
    // The number of values per example: what a model's last layer gives.
    d.num_classes = full.y.dim() > 1 ? full.y[0].numel() : 1;
  } else {
    int64_t max_label = -1;
    for (const TensorDataset* part : {&full, &d.valid, &d.test}) {
      if (part->empty()) continue;
      const int64_t lo = part->y.min().item<int64_t>();
      if (lo < 0) throw fail("class labels must be >= 0, found " + std::to_string(lo));
      max_label = std::max(max_label, part->y.max().item<int64_t>());
    }
    d.num_classes = classes > 0 ? classes : max_label + 1;
    if (max_label >= d.num_classes) {
      throw fail("label " + std::to_string(max_label) + " is outside num_classes " + std::to_string(d.num_classes));
    }
  }
  if (d.valid.empty() && valid_fraction > 0) {
    auto [train_idx, valid_idx] = carve_valid(full.size(), valid_fraction, seed);
    d.train = full.subset(train_idx);
    if (!valid_idx.empty()) d.valid = full.subset(valid_idx);
  } else {
    d.train = std::move(full);
  }
  d.input_shape = d.train.x.sizes().slice(1).vec();
}

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> out(1);
  for (char c : line) {
    if (c == ',') {
      out.emplace_back();
    } else if (c != '\r') {
      out.back() += c;
    }
  }
  for (auto& f : out) {  // trim spaces
    const auto b = f.find_first_not_of(" \t"), e = f.find_last_not_of(" \t");
    f = b == std::string::npos ? std::string() : f.substr(b, e - b + 1);
  }
  return out;
}

// A CSV file of numbers with a header row: the `label` column becomes y, the
// others x. A non-empty `header` (the training file's) must match this file's;
// it is set to this file's header.
TensorDataset read_csv(const std::string& path, const std::vector<std::string>& labels, bool float_targets,
                       std::vector<std::string>& header, bool labels_optional = false) {
  std::ifstream in(path);
  if (!in) throw DataError("cannot open the CSV file " + path);
  std::string line;
  int64_t line_no = 0;
  auto fail = [&](const std::string& what) { return DataError(path + ":" + std::to_string(line_no) + ": " + what); };
  std::vector<std::string> names;
  while (names.empty() && std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") != std::string::npos) names = split_csv_line(line);
  }
  if (names.empty()) throw DataError("the CSV file " + path + " is empty (a header row naming the columns comes first)");
  if (!header.empty() && names != header) throw fail("its columns differ from the training file's");
  std::vector<bool> is_label(names.size(), false);
  for (const auto& label : labels) {
    const auto label_it = std::find(names.begin(), names.end(), label);
    if (label_it == names.end() && labels_optional) continue;
    if (label_it == names.end()) {
      std::string cols;
      for (const auto& n : names) cols += (cols.empty() ? "" : ", ") + n;
      throw fail("no column named '" + label + "' (columns: " + cols + "; set data.label)");
    }
    is_label[static_cast<size_t>(label_it - names.begin())] = true;
  }
  const size_t n_labels = static_cast<size_t>(std::count(is_label.begin(), is_label.end(), true));
  if (names.size() <= n_labels) throw fail("needs at least one feature column besides the label column(s)");
  if (n_labels > 0 && n_labels < labels.size()) throw fail("has some of the label columns but not all");
  std::vector<float> xs, yf;
  std::vector<int64_t> ys;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto fields = split_csv_line(line);
    if (fields.size() != names.size()) {
      throw fail("expected " + std::to_string(names.size()) + " fields, got " + std::to_string(fields.size()));
    }
    for (size_t i = 0; i < fields.size(); ++i) {
      const char* begin = fields[i].c_str();
      char* end = nullptr;
      const double v = std::strtod(begin, &end);
      if (fields[i].empty() || *end != '\0' || !std::isfinite(v)) {
        throw fail("column '" + names[i] + "': '" + fields[i] + "' is not a finite number");
      }
      if (is_label[i] && float_targets) {
        yf.push_back(static_cast<float>(v));
      } else if (is_label[i]) {
        if (v != std::floor(v)) throw fail("column '" + names[i] + "': class label '" + fields[i] + "' is not an integer");
        ys.push_back(static_cast<int64_t>(v));
      } else {
        xs.push_back(static_cast<float>(v));
      }
    }
  }
  header = names;
  const auto k = static_cast<int64_t>(n_labels), f = static_cast<int64_t>(names.size() - n_labels);
  const int64_t n = static_cast<int64_t>(xs.size()) / f;
  if (n == 0) throw DataError("the CSV file " + path + " has a header but no rows");
  at::Tensor y = n_labels == 0  ? at::Tensor()
                 : float_targets ? torch::from_blob(yf.data(), {n, k}, torch::kFloat32).clone()
                                 : torch::from_blob(ys.data(), {n}, torch::kLong).clone();
  return TensorDataset{torch::from_blob(xs.data(), {n, f}, torch::kFloat32).clone(), y};
}
}  // namespace

namespace {
std::vector<std::string> without(const std::vector<std::string>& names, const std::vector<std::string>& labels) {
  std::vector<std::string> out;
  for (const auto& n : names) {
    if (std::find(labels.begin(), labels.end(), n) == labels.end()) out.push_back(n);
  }
  return out;
}
std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}
}  // namespace

TensorDataset read_csv_examples(const std::string& path, const std::vector<std::string>& labels, bool float_targets,
                                const std::vector<std::string>& features) {
  std::vector<std::string> header;
  TensorDataset ds = read_csv(path, labels, float_targets, header, /*labels_optional=*/true);
  const std::vector<std::string> mine = without(header, labels);
  if (!features.empty() && mine != features) {
    throw DataError("the CSV file " + path + " has the feature columns " + joined(mine) +
                    "; the model was trained on " + joined(features) + " (in this order)");
  }
  return ds;
}

CsvData::CsvData(CsvOptions options) : options_(std::move(options)) {
  batch_size = options_.batch_size;
  seed = options_.seed;
}

void CsvData::setup() {
  if (loaded_) return;
  std::vector<std::string> header;
  if (options_.labels.size() > 1 && !options_.float_targets) {
    throw DataError("data file " + options_.path + ": " + std::to_string(options_.labels.size()) +
                    " label columns need float targets (a regression or multi-label loss)");
  }
  const bool f = options_.float_targets;
  TensorDataset full = read_csv(options_.path, options_.labels, f, header);
  if (!options_.valid_path.empty()) valid = read_csv(options_.valid_path, options_.labels, f, header);
  if (!options_.test_path.empty()) test = read_csv(options_.test_path, options_.labels, f, header);
  features_ = without(header, options_.labels);
  finish_classification(*this, std::move(full), options_.num_classes, options_.valid_fraction, options_.seed,
                        [&](const std::string& what) { return DataError("data file " + options_.path + ": " + what); }, f);
  loaded_ = true;
}

TensorFileData::TensorFileData(TensorFileOptions options) : options_(std::move(options)) {
  batch_size = options_.batch_size;
  seed = options_.seed;
}

void TensorFileData::setup() {
  if (loaded_) return;
  const std::string& file = options_.path;
  auto fail = [&](const std::string& what) -> DataError { return DataError("data file " + file + ": " + what); };
  ReadOptions ro;
  ro.require_checksum = false;  // a plain torch.save file
  Value v;
  try {
    v = read_checkpoint(file, ro);
  } catch (const CheckpointError& e) {
    throw DataError(std::string("cannot read the data file: ") + e.what());
  }
  if (!v.is_dict()) throw fail("expected a dict of tensors (train_x, train_y, optional valid_*/test_*), got " + v.repr());
  static const char* const kKeys[] = {"train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y"};
  for (const auto& k : v.keys()) {
    const std::string key = k.is_string() ? k.to_string() : k.repr();
    if (std::find_if(std::begin(kKeys), std::end(kKeys), [&](const char* a) { return key == a; }) == std::end(kKeys)) {
      throw fail("unknown key '" + key + "' (known: train_x, train_y, valid_x, valid_y, test_x, test_y)");
    }
  }
  auto split = [&](const std::string& name, bool required) -> TensorDataset {
    const Value* x = v.find(name + "_x");
    const Value* y = v.find(name + "_y");
    if (!x && !y) {
      if (required) throw fail("missing '" + name + "_x' and '" + name + "_y'");
      return {};
    }
    if (!x || !y) throw fail("has '" + name + (x ? "_x" : "_y") + "' but no '" + name + (x ? "_y'" : "_x'"));
    if (!x->is_tensor()) throw fail("'" + name + "_x' is not a tensor: " + x->repr());
    if (!y->is_tensor()) throw fail("'" + name + "_y' is not a tensor: " + y->repr());
    at::Tensor tx = x->to_tensor(), ty = y->to_tensor();
    if (!at::isFloatingType(tx.scalar_type()) || tx.dim() < 1) {
      throw fail("'" + name + "_x' must be a floating-point tensor with the examples first, got " + x->repr());
    }
    const bool integer = !at::isFloatingType(ty.scalar_type()) && !at::isComplexType(ty.scalar_type()) &&
                         ty.scalar_type() != at::kBool;
    if (options_.float_targets) {
      if (at::isComplexType(ty.scalar_type()) || ty.dim() < 1) {
        throw fail("'" + name + "_y' must be a tensor of numbers with the examples first (the loss takes float "
                   "targets), got " + y->repr());
      }
    } else if (!integer || ty.dim() < 1) {
      throw fail("'" + name + "_y' must be an integer tensor of class labels [N] (or [N, ...]), got " + y->repr() +
                 (integer ? "" : "; float targets need a regression or multi-label loss (loss: {name: mse} or bce_with_logits)"));
    }
    if (tx.size(0) != ty.size(0)) {
      throw fail("'" + name + "_x' has " + std::to_string(tx.size(0)) + " examples but '" + name + "_y' has " +
                 std::to_string(ty.size(0)));
    }
    if (tx.size(0) == 0 && required) throw fail("'" + name + "_x' holds no examples");
    return TensorDataset{tx.to(torch::kFloat32).contiguous(),
                         ty.to(options_.float_targets ? torch::kFloat32 : torch::kLong).contiguous()};
  };
  TensorDataset full = split("train", true);
  valid = split("valid", false);
  test = split("test", false);
  const auto shape = full.x.sizes().slice(1).vec();
  for (const auto* part : {&valid, &test}) {
    const std::string name = part == &valid ? "valid" : "test";
    if (!part->empty() && part->x.sizes().slice(1).vec() != shape) {
      throw fail("'" + name + "_x' has examples shaped " + c10::str(part->x.sizes().slice(1)) + " but train_x's are " +
                 c10::str(full.x.sizes().slice(1)));
    }
    if (!part->empty() && part->y.sizes().slice(1) != full.y.sizes().slice(1)) {
      throw fail("'" + name + "_y' has targets shaped " + c10::str(part->y.sizes().slice(1)) + " but train_y's are " +
                 c10::str(full.y.sizes().slice(1)));
    }
  }
  finish_classification(*this, std::move(full), options_.num_classes, options_.valid_fraction, options_.seed, fail,
                        options_.float_targets);
  loaded_ = true;
}

}  // namespace cairn
