#include "cairn/transforms.h"

#include <torch/torch.h>

#include <sstream>

namespace cairn {

namespace {
std::string list(const std::vector<double>& v) {
  std::ostringstream os;
  os.precision(10);
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  return os.str() + "]";
}

std::string num(double v) {
  std::ostringstream os;
  os.precision(10);
  os << v;
  return os.str();
}

void need_image(const at::Tensor& x, const char* who) {
  if (!x.defined() || x.dim() < 2) {
    throw DataError(std::string(who) + " needs inputs shaped [..., height, width]");
  }
}

void positive(int64_t h, int64_t w, const char* who) {
  if (h <= 0 || w <= 0) throw std::invalid_argument(std::string(who) + ": the size must be positive");
}
}  // namespace

Example Compose::operator()(Example ex, Generator& gen) const {
  for (const auto& t : parts_) ex = (*t)(std::move(ex), gen);
  return ex;
}

std::string Compose::describe() const {
  std::string s = "[";
  for (size_t i = 0; i < parts_.size(); ++i) s += (i ? ", " : "") + parts_[i]->describe();
  return s + "]";
}

bool Compose::random() const {
  for (const auto& t : parts_) {
    if (t->random()) return true;
  }
  return false;
}

std::shared_ptr<const Transform> Compose::deterministic_part() const {
  std::vector<std::shared_ptr<const Transform>> keep;
  for (const auto& t : parts_) {
    if (!t->random()) keep.push_back(t);
  }
  if (keep.empty()) return nullptr;
  return std::make_shared<Compose>(std::move(keep));
}

RandomCrop::RandomCrop(int64_t h, int64_t w, int64_t padding) : h_(h), w_(w), pad_(padding) {
  positive(h, w, "random_crop");
  if (padding < 0) throw std::invalid_argument("random_crop: padding must be >= 0");
}

Example RandomCrop::operator()(Example ex, Generator& gen) const {
  need_image(ex.x, "random_crop");
  at::Tensor x = ex.x;
  if (pad_ > 0) x = at::constant_pad_nd(x, {pad_, pad_, pad_, pad_}, 0);
  const int64_t H = x.size(-2), W = x.size(-1);
  if (H < h_ || W < w_) {
    throw DataError("random_crop(size=[" + std::to_string(h_) + ", " + std::to_string(w_) + "]) is larger than an input of " +
                    std::to_string(H) + "x" + std::to_string(W) + " (after padding)");
  }
  const int64_t top = gen.integer(0, H - h_), left = gen.integer(0, W - w_);
  ex.x = x.narrow(-2, top, h_).narrow(-1, left, w_).contiguous();
  return ex;
}

std::string RandomCrop::describe() const {
  return "random_crop(size=[" + std::to_string(h_) + ", " + std::to_string(w_) + "], padding=" + std::to_string(pad_) + ")";
}

CenterCrop::CenterCrop(int64_t h, int64_t w) : h_(h), w_(w) { positive(h, w, "center_crop"); }

Example CenterCrop::operator()(Example ex, Generator&) const {
  need_image(ex.x, "center_crop");
  const int64_t H = ex.x.size(-2), W = ex.x.size(-1);
  if (H < h_ || W < w_) {
    throw DataError("center_crop(size=[" + std::to_string(h_) + ", " + std::to_string(w_) + "]) is larger than an input of " +
                    std::to_string(H) + "x" + std::to_string(W));
  }
  ex.x = ex.x.narrow(-2, (H - h_) / 2, h_).narrow(-1, (W - w_) / 2, w_).contiguous();
  return ex;
}

std::string CenterCrop::describe() const {
  return "center_crop(size=[" + std::to_string(h_) + ", " + std::to_string(w_) + "])";
}

HorizontalFlip::HorizontalFlip(double p) : p_(p) {
  if (!(p >= 0 && p <= 1)) throw std::invalid_argument("hflip: p must be in [0, 1]");
}

Example HorizontalFlip::operator()(Example ex, Generator& gen) const {
  need_image(ex.x, "hflip");
  if (gen.bernoulli(p_)) ex.x = ex.x.flip({-1});
  return ex;
}

std::string HorizontalFlip::describe() const { return "hflip(p=" + num(p_) + ")"; }

Normalize::Normalize(std::vector<double> mean, std::vector<double> std) : mean_(std::move(mean)), std_(std::move(std)) {
  if (mean_.empty() || mean_.size() != std_.size()) {
    throw std::invalid_argument("normalize: mean and std need the same number of values (one, or one per channel)");
  }
  for (double s : std_) {
    if (!(s > 0)) throw std::invalid_argument("normalize: every std must be > 0");
  }
}

Example Normalize::operator()(Example ex, Generator&) const {
  at::Tensor x = ex.x.is_floating_point() ? ex.x : ex.x.to(at::kFloat);
  if (mean_.size() == 1) {
    ex.x = (x - mean_[0]) / std_[0];
    return ex;
  }
  const int64_t c = static_cast<int64_t>(mean_.size());
  if (x.dim() < 3 || x.size(-3) != c) {
    std::ostringstream os;
    os << "normalize has " << c << " channels' mean and std, but an input is shaped " << x.sizes()
       << " (channels are dimension -3)";
    throw DataError(os.str());
  }
  const auto opts = x.options();
  const at::Tensor m = torch::tensor(mean_, torch::kDouble).to(opts.dtype()).view({c, 1, 1});
  const at::Tensor s = torch::tensor(std_, torch::kDouble).to(opts.dtype()).view({c, 1, 1});
  ex.x = (x - m) / s;
  return ex;
}

std::string Normalize::describe() const { return "normalize(mean=" + list(mean_) + ", std=" + list(std_) + ")"; }

GaussianNoise::GaussianNoise(double std) : std_(std) {
  if (!(std >= 0)) throw std::invalid_argument("noise: std must be >= 0");
}

Example GaussianNoise::operator()(Example ex, Generator& gen) const {
  at::Tensor x = ex.x.is_floating_point() ? ex.x : ex.x.to(at::kFloat);
  ex.x = x + at::randn(x.sizes(), gen.torch(), x.options()) * std_;
  return ex;
}

std::string GaussianNoise::describe() const { return "noise(std=" + num(std_) + ")"; }

Resize::Resize(int64_t h, int64_t w) : h_(h), w_(w) { positive(h, w, "resize"); }

Example Resize::operator()(Example ex, Generator&) const {
  need_image(ex.x, "resize");
  if (ex.x.size(-2) == h_ && ex.x.size(-1) == w_) return ex;
  at::Tensor x = ex.x.is_floating_point() ? ex.x : ex.x.to(at::kFloat);
  const auto shape = x.sizes().vec();
  at::Tensor planes = x.reshape({1, -1, shape[shape.size() - 2], shape.back()});
  at::Tensor out = at::upsample_bilinear2d(planes, {h_, w_}, /*align_corners=*/false);
  std::vector<int64_t> target(shape.begin(), shape.end());
  target[target.size() - 2] = h_;
  target.back() = w_;
  ex.x = out.reshape(target);
  return ex;
}

std::string Resize::describe() const { return "resize(size=[" + std::to_string(h_) + ", " + std::to_string(w_) + "])"; }

}  // namespace cairn
