// Data read from disk as training goes: image folders (PNG with libpng's
// simplified API, JPEG with libjpeg-turbo's TurboJPEG API: both are Debian's
// well-kept decoders, both report errors as return values, without the
// setjmp/longjmp of the classic APIs) and memory-mapped tensor shards.
#include "cairn/datasets.h"

#include <png.h>
#include <turbojpeg.h>
#include <torch/torch.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace cairn {

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open the file: " + std::string(std::strerror(errno)));
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) throw std::runtime_error("cannot read the file");
  return os.str();
}

bool is_png(const std::string& b) { return b.size() >= 8 && png_sig_cmp(reinterpret_cast<png_const_bytep>(b.data()), 0, 8) == 0; }
bool is_jpeg(const std::string& b) {
  return b.size() >= 3 && static_cast<unsigned char>(b[0]) == 0xFF && static_cast<unsigned char>(b[1]) == 0xD8 &&
         static_cast<unsigned char>(b[2]) == 0xFF;
}

//! Images larger than this are refused (a hostile header must not allocate gigabytes).
constexpr int64_t kMaxPixels = int64_t(1) << 28;

bool image_extension(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return e == ".png" || e == ".jpg" || e == ".jpeg";
}

struct TjHandle {
  tjhandle h = tjInitDecompress();
  ~TjHandle() {
    if (h) tjDestroy(h);
  }
};

}  // namespace

at::Tensor decode_image(const std::string& bytes, int64_t channels) {
  if (channels != 1 && channels != 3) throw std::invalid_argument("decode_image: channels must be 1 or 3");
  if (is_png(bytes)) {
    png_image image;
    std::memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&image, bytes.data(), bytes.size())) {
      const std::string why = image.message;
      png_image_free(&image);
      throw std::runtime_error("not a readable PNG: " + why);
    }
    image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    const int64_t h = image.height, w = image.width;
    if (h * w > kMaxPixels) {
      png_image_free(&image);
      throw std::runtime_error("a PNG of " + std::to_string(w) + "x" + std::to_string(h) + " pixels is larger than cairn reads");
    }
    at::Tensor out = at::empty({h, w, channels}, at::kByte);
    if (!png_image_finish_read(&image, nullptr, out.data_ptr<uint8_t>(), static_cast<png_int_32>(w * channels), nullptr)) {
      const std::string why = image.message;
      png_image_free(&image);
      throw std::runtime_error("PNG data is damaged: " + why);
    }
    // libpng reports missing or extra pixel data as a warning (the rows it
    // could not read are left as they were): an example is either the file's
    // picture or refused. Other warnings (a colour profile it does not like)
    // keep the image.
    if (image.warning_or_error & PNG_IMAGE_WARNING) {
      const std::string why = image.message;
      for (const char* damaged : {"image data", "IDAT", "compressed", "CRC", "zlib", "stream"}) {
        if (why.find(damaged) != std::string::npos) throw std::runtime_error("PNG data is damaged: " + why);
      }
    }
    return out.permute({2, 0, 1}).to(at::kFloat).div_(255.0f).contiguous();
  }
  if (is_jpeg(bytes)) {
    TjHandle tj;
    if (!tj.h) throw std::runtime_error("cannot start the JPEG decoder");
    int w = 0, h = 0, sub = 0, space = 0;
    auto* src = reinterpret_cast<const unsigned char*>(bytes.data());
    if (tjDecompressHeader3(tj.h, src, static_cast<unsigned long>(bytes.size()), &w, &h, &sub, &space) != 0) {
      throw std::runtime_error(std::string("not a readable JPEG: ") + tjGetErrorStr2(tj.h));
    }
    if (w <= 0 || h <= 0 || int64_t(w) * h > kMaxPixels) {
      throw std::runtime_error("a JPEG of " + std::to_string(w) + "x" + std::to_string(h) + " pixels is not read");
    }
    at::Tensor out = at::empty({h, w, channels}, at::kByte);
    // Warnings (a truncated file decodes with grey rows) are errors: an example
    // is either the file's picture or refused.
    if (tjDecompress2(tj.h, src, static_cast<unsigned long>(bytes.size()), out.data_ptr<uint8_t>(), w, 0, h,
                      channels == 1 ? TJPF_GRAY : TJPF_RGB, TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING) != 0) {
      throw std::runtime_error(std::string("JPEG data is damaged: ") + tjGetErrorStr2(tj.h));
    }
    return out.permute({2, 0, 1}).to(at::kFloat).div_(255.0f).contiguous();
  }
  throw std::runtime_error("neither a PNG nor a JPEG file (its first bytes are not their signature)");
}

std::pair<int64_t, int64_t> image_size(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open the file");
  std::string head(33, '\0');
  in.read(&head[0], 33);
  head.resize(static_cast<size_t>(in.gcount()));
  if (is_png(head) && head.size() >= 24) {
    auto be32 = [&](size_t at) {
      return (int64_t(static_cast<unsigned char>(head[at])) << 24) | (int64_t(static_cast<unsigned char>(head[at + 1])) << 16) |
             (int64_t(static_cast<unsigned char>(head[at + 2])) << 8) | int64_t(static_cast<unsigned char>(head[at + 3]));
    };
    return {be32(20), be32(16)};
  }
  const std::string bytes = read_bytes(path);
  if (!is_jpeg(bytes)) throw std::runtime_error("neither a PNG nor a JPEG file");
  TjHandle tj;
  int w = 0, h = 0, sub = 0, space = 0;
  if (tjDecompressHeader3(tj.h, reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<unsigned long>(bytes.size()),
                          &w, &h, &sub, &space) != 0) {
    throw std::runtime_error(std::string("not a readable JPEG: ") + tjGetErrorStr2(tj.h));
  }
  return {h, w};
}

namespace {
//! The train and valid splits of a data set read from disk: its own valid
//! data when it has some, else `fraction` of `full` carved out from the seed
//! (as every in-memory data set does), else all of it for training.
void set_train_valid(DataModule& d, std::shared_ptr<const Dataset> full, std::shared_ptr<const Dataset> valid,
                     double fraction) {
  if (valid) {
    d.train_set = std::move(full);
    d.valid_set = std::move(valid);
  } else if (fraction > 0 && full->size() > 1) {
    auto [train_idx, valid_idx] = carve_valid(full->size(), fraction, d.seed);
    d.train_set = std::make_shared<Subset>(full, std::move(train_idx));
    if (!valid_idx.empty()) d.valid_set = std::make_shared<Subset>(full, std::move(valid_idx));
  } else {
    d.train_set = std::move(full);
  }
}
}  // namespace

// --- ImageFolder -------------------------------------------------------------

ImageFolder::ImageFolder(std::string root, int64_t channels, std::vector<std::string> classes)
    : root_(std::move(root)), channels_(channels), classes_(std::move(classes)) {
  std::error_code ec;
  if (!fs::is_directory(root_, ec)) throw DataError(root_ + ": no such folder (expected " + root_ + "/<class>/<image>)");
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(root_, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && !name.empty() && name[0] != '.') found.push_back(name);
  }
  if (ec) throw DataError(root_ + ": cannot list the folder: " + ec.message());
  std::sort(found.begin(), found.end());
  if (found.empty()) throw DataError(root_ + ": no class folders (expected " + root_ + "/<class>/<image>.png|jpg)");
  const bool own = classes_.empty();
  if (own) classes_ = found;
  for (const auto& cls : found) {
    const auto at = std::find(classes_.begin(), classes_.end(), cls);
    if (at == classes_.end()) {
      std::string known;
      for (const auto& c : classes_) known += (known.empty() ? "" : ", ") + c;
      throw DataError(root_ + "/" + cls + ": a class the training images do not have (they have " + known + ")");
    }
    std::vector<std::string> files;
    for (const auto& f : fs::directory_iterator(fs::path(root_) / cls, ec)) {
      const std::string name = f.path().filename().string();
      if (!name.empty() && name[0] != '.' && image_extension(f.path()) && !f.is_directory()) files.push_back(f.path().string());
    }
    std::sort(files.begin(), files.end());
    for (auto& f : files) {
      files_.push_back(std::move(f));
      labels_.push_back(at - classes_.begin());
    }
  }
  if (files_.empty()) throw DataError(root_ + ": no .png, .jpg or .jpeg files in its class folders");
}

Example ImageFolder::get(int64_t index, Generator&) const {
  const std::string& path = files_.at(static_cast<size_t>(index));
  try {
    return Example{decode_image(read_bytes(path), channels_), torch::tensor(labels_[static_cast<size_t>(index)], torch::kLong)};
  } catch (const std::runtime_error& e) {
    throw BadExample(path, index, e.what());
  }
}

std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> ImageFolder::two_sizes() const {
  std::pair<int64_t, int64_t> first{-1, -1};
  for (size_t i = 0; i < files_.size(); ++i) {
    std::pair<int64_t, int64_t> hw;
    try {
      hw = image_size(files_[i]);
    } catch (const std::runtime_error&) {
      continue;  // a corrupt file is reported (or skipped) when it is read
    }
    if (first.first < 0) {
      first = hw;
      continue;
    }
    if (hw != first) {
      // The first readable file of the first size.
      for (size_t j = 0; j < i; ++j) {
        try {
          if (image_size(files_[j]) == first) return {{files_[j], first}, {files_[i], hw}};
        } catch (const std::runtime_error&) {
        }
      }
    }
  }
  return {};
}

ImageFiles::ImageFiles(const std::string& path, int64_t channels) : channels_(channels) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    files_.push_back(path);
    return;
  }
  if (!fs::is_directory(path, ec)) throw DataError(path + ": no such file or folder");
  for (const auto& e : fs::recursive_directory_iterator(path, ec)) {
    if (e.is_regular_file() && image_extension(e.path())) files_.push_back(e.path().string());
  }
  std::sort(files_.begin(), files_.end());
  if (files_.empty()) throw DataError(path + ": no .png, .jpg or .jpeg files");
}

Example ImageFiles::get(int64_t index, Generator&) const {
  const std::string& path = files_.at(static_cast<size_t>(index));
  try {
    return Example{decode_image(read_bytes(path), channels_), at::Tensor()};
  } catch (const std::runtime_error& e) {
    throw BadExample(path, index, e.what());
  }
}

ImageFolderData::ImageFolderData(ImageFolderOptions options) : options_(std::move(options)) { batch_size = options_.batch_size; }

void ImageFolderData::setup() {
  if (loaded_) return;
  seed = options_.seed;
  images_ = std::make_shared<ImageFolder>(options_.path, options_.channels);
  num_classes = static_cast<int64_t>(images_->classes().size());
  set_train_valid(*this, images_,
                  options_.valid_path.empty()
                      ? nullptr
                      : std::make_shared<ImageFolder>(options_.valid_path, options_.channels, images_->classes()),
                  options_.valid_fraction);
  if (!options_.test_path.empty()) test_set = std::make_shared<ImageFolder>(options_.test_path, options_.channels, images_->classes());
  // The shape of one example, from the first image that decodes.
  for (int64_t i = 0; i < images_->size() && input_shape.empty(); ++i) {
    try {
      Generator g(0);
      input_shape = images_->get(i, g).x.sizes().vec();
    } catch (const BadExample&) {
    }
  }
  if (input_shape.empty()) throw BadExample(images_->locate(0), 0, "no image of " + options_.path + " decodes");
  loaded_ = true;
}

// --- Shards ------------------------------------------------------------------

namespace {
constexpr char kShardMagic[8] = {'C', 'A', 'I', 'R', 'N', 'S', 'H', 'D'};

size_t dtype_size(int code) {
  switch (code) {
    case 1: case 2: return 1;
    case 3: case 6: return 2;
    case 4: case 7: return 4;
    case 5: case 8: return 8;
    default: return 0;
  }
}

at::ScalarType dtype_of(int code) {
  switch (code) {
    case 1: return at::kByte;
    case 2: return at::kChar;
    case 3: return at::kShort;
    case 4: return at::kInt;
    case 5: return at::kLong;
    case 6: return at::kHalf;
    case 7: return at::kFloat;
    default: return at::kDouble;
  }
}

template <class T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
}  // namespace

ShardDataset::ShardDataset(const std::string& folder, bool float_targets) : float_targets_(float_targets) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) throw DataError(folder + ": no such folder of shards");
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    if (e.path().extension() == ".cshard") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw DataError(folder + ": no .cshard files (write them with python/cairn_shards.py)");
  for (const auto& path : files) {
    Shard s;
    s.path = path;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw DataError(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      throw DataError(path + ": cannot stat: " + std::strerror(errno));
    }
    s.bytes = static_cast<size_t>(st.st_size);
    s.first = total_;
    if (s.bytes > 0) {
      void* m = ::mmap(nullptr, s.bytes, PROT_READ, MAP_PRIVATE, fd, 0);
      if (m == MAP_FAILED) {
        ::close(fd);
        throw DataError(path + ": cannot map: " + std::strerror(errno));
      }
      const size_t len = s.bytes;
      s.map = std::shared_ptr<const unsigned char>(static_cast<const unsigned char*>(m),
                                                   [len](const unsigned char* p) { ::munmap(const_cast<unsigned char*>(p), len); });
      s.base = s.map.get();
    }
    ::close(fd);
    shards_.push_back(s);
    auto bad = [&](const std::string& why) { return BadExample(path, s.first, why); };
    const unsigned char* b = s.base;
    if (s.bytes < 32 || std::memcmp(b, kShardMagic, 8) != 0) throw bad("not a cairn shard (no CAIRNSHD header)");
    const uint32_t version = load<uint32_t>(b + 8), header = load<uint32_t>(b + 12);
    if (version != 1) throw bad("shard format version " + std::to_string(version) + " (this cairn reads version 1)");
    const uint64_t count = load<uint64_t>(b + 16);
    const int xd = b[24], yd = b[25], xr = b[26], yr = b[27];
    if (dtype_size(xd) == 0 || (yd != 0 && dtype_size(yd) == 0)) throw bad("unknown dtype codes " + std::to_string(xd) + ", " + std::to_string(yd));
    if (xr > 8 || yr > 8) throw bad("more than 8 dimensions per example");
    const size_t dims_end = 32 + 8 * static_cast<size_t>(xr + yr);
    if (header < dims_end || header > s.bytes) throw bad("its header size " + std::to_string(header) + " does not fit the file");
    std::vector<int64_t> xs, ys;
    uint64_t xn = 1, yn = 1;
    for (int i = 0; i < xr + yr; ++i) {
      const uint64_t d = load<uint64_t>(b + 32 + 8 * i);
      if (d == 0 || d > (uint64_t(1) << 32)) throw bad("a dimension of " + std::to_string(d));
      (i < xr ? xs : ys).push_back(static_cast<int64_t>(d));
      uint64_t& n = i < xr ? xn : yn;
      if (n > (uint64_t(1) << 40) / d) throw bad("examples of more than 2^40 values");
      n *= d;
    }
    const uint64_t xrow = xn * dtype_size(xd), yrow = yd ? yn * dtype_size(yd) : 0;
    if (count > (uint64_t(1) << 40) || ((xrow + yrow) > 0 && count > (UINT64_MAX - header) / (xrow + yrow))) {
      throw bad("an impossible example count");
    }
    const uint64_t expect = header + count * (xrow + yrow);
    if (expect != s.bytes) {
      throw bad("the header says " + std::to_string(count) + " examples of " + std::to_string(xrow + yrow) + " bytes after " +
                std::to_string(header) + " header bytes (" + std::to_string(expect) + " bytes), but the file has " +
                std::to_string(s.bytes) + " (truncated or not a whole shard)");
    }
    if (shards_.size() == 1) {
      x_dtype_ = xd;
      y_dtype_ = yd;
      x_shape_ = xs;
      y_shape_ = ys;
      x_row_bytes_ = xrow;
      y_row_bytes_ = yrow;
    } else if (xd != x_dtype_ || yd != y_dtype_ || xs != x_shape_ || ys != y_shape_) {
      throw bad("its examples differ in dtype or shape from " + shards_.front().path + "'s");
    }
    shards_.back().count = static_cast<int64_t>(count);
    shards_.back().data_offset = header;
    total_ += static_cast<int64_t>(count);
  }
}

const ShardDataset::Shard& ShardDataset::shard_of(int64_t index) const {
  if (index < 0 || index >= total_) throw std::out_of_range("shard example " + std::to_string(index) + " is out of range");
  auto it = std::upper_bound(shards_.begin(), shards_.end(), index, [](int64_t i, const Shard& s) { return i < s.first; });
  return *std::prev(it);
}

std::string ShardDataset::locate(int64_t index) const {
  const Shard& s = shard_of(index);
  return s.path + " row " + std::to_string(index - s.first);
}

void ShardDataset::read_row(const Shard& s, int64_t row, void* x_out, void* y_out) const {
  const unsigned char* data = s.base + s.data_offset;
  std::memcpy(x_out, data + static_cast<size_t>(row) * x_row_bytes_, x_row_bytes_);
  if (y_out) std::memcpy(y_out, data + static_cast<size_t>(s.count) * x_row_bytes_ + static_cast<size_t>(row) * y_row_bytes_, y_row_bytes_);
}

Example ShardDataset::get(int64_t index, Generator& gen) const {
  const std::vector<int64_t> one{index};
  Batch b = get_batch(one, [](int64_t) { return uint64_t(0); });
  (void)gen;
  return Example{b.x[0], b.y.defined() ? b.y[0] : at::Tensor()};
}

Batch ShardDataset::get_batch(const std::vector<int64_t>& indices, const std::function<uint64_t(int64_t)>&) const {
  const int64_t n = static_cast<int64_t>(indices.size());
  std::vector<int64_t> xshape{n}, yshape{n};
  xshape.insert(xshape.end(), x_shape_.begin(), x_shape_.end());
  yshape.insert(yshape.end(), y_shape_.begin(), y_shape_.end());
  at::Tensor x = at::empty(xshape, dtype_of(x_dtype_));
  at::Tensor y = y_dtype_ ? at::empty(yshape, dtype_of(y_dtype_)) : at::Tensor();
  auto* xp = static_cast<unsigned char*>(x.data_ptr());
  auto* yp = y.defined() ? static_cast<unsigned char*>(y.data_ptr()) : nullptr;
  for (int64_t i = 0; i < n; ++i) {
    const Shard& s = shard_of(indices[static_cast<size_t>(i)]);
    read_row(s, indices[static_cast<size_t>(i)] - s.first, xp + i * x_row_bytes_, yp ? yp + i * y_row_bytes_ : nullptr);
  }
  return Batch{x.to(at::kFloat), y.defined() ? y.to(float_targets_ ? at::kFloat : at::kLong) : y};
}

ShardData::ShardData(ShardOptions options) : options_(std::move(options)) { batch_size = options_.batch_size; }

void ShardData::setup() {
  if (loaded_) return;
  seed = options_.seed;
  auto full = std::make_shared<ShardDataset>(options_.path, options_.float_targets);
  if (!full->has_targets()) throw DataError(options_.path + ": the training shards have no targets (y)");
  std::shared_ptr<ShardDataset> valid, test;
  if (!options_.valid_path.empty()) valid = std::make_shared<ShardDataset>(options_.valid_path, options_.float_targets);
  if (!options_.test_path.empty()) test = std::make_shared<ShardDataset>(options_.test_path, options_.float_targets);
  for (const auto& other : {valid, test}) {
    if (other && (other->x_shape() != full->x_shape() || other->y_shape() != full->y_shape() || !other->has_targets())) {
      throw DataError((other == valid ? options_.valid_path : options_.test_path) +
                      ": its examples (and targets) must have the training shards' shapes");
    }
  }
  input_shape = full->x_shape();
  if (options_.float_targets) {
    int64_t n = 1;
    for (int64_t d : full->y_shape()) n *= d;
    num_classes = n;
  } else if (options_.num_classes > 0) {
    num_classes = options_.num_classes;
  } else {
    // The largest label + 1, read once in chunks (the targets are small beside the inputs).
    int64_t top = -1;
    for (const auto& ds : {std::shared_ptr<ShardDataset>(full), valid, test}) {
      if (!ds) continue;
      for (int64_t b = 0; b < ds->size(); b += 4096) {
        std::vector<int64_t> idx;
        for (int64_t i = b; i < std::min(ds->size(), b + 4096); ++i) idx.push_back(i);
        const at::Tensor y = ds->get_batch(idx, {}).y;
        if (y.min().item<int64_t>() < 0) throw DataError(options_.path + ": class labels must be >= 0");
        top = std::max(top, y.max().item<int64_t>());
      }
    }
    num_classes = top + 1;
  }
  set_train_valid(*this, full, valid, options_.valid_fraction);
  test_set = test;
  loaded_ = true;
}

}  // namespace cairn
