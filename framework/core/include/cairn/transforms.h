// Per-example transforms: augmentation (random crops, flips, noise) and
// preprocessing (resize, centre crop, normalise), composed in order.
//
// A transform's randomness comes from the example's Generator alone (seeded by
// seed, epoch and the example's index), so an augmented example is the same
// bits on any worker thread, any number of workers and after a resume. They
// work on inputs shaped [..., H, W] (images as [C, H, W]) and never change the
// example in place. YAML names them in data.transforms (cairn/registry.h).
//
//   auto augment = std::make_shared<cairn::Compose>(std::vector<std::shared_ptr<const cairn::Transform>>{
//       std::make_shared<cairn::RandomCrop>(28, 28, /*padding=*/2),
//       std::make_shared<cairn::HorizontalFlip>(0.5),
//       std::make_shared<cairn::Normalize>(std::vector<double>{0.286}, std::vector<double>{0.353})});
//   data->train_transform = augment;
#pragma once

#include "cairn/data.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace cairn {

//! Several transforms, applied in order.
class Compose : public Transform {
 public:
  explicit Compose(std::vector<std::shared_ptr<const Transform>> parts) : parts_(std::move(parts)) {}
  Example operator()(Example ex, Generator& gen) const override;
  std::string describe() const override;
  bool random() const override;
  const std::vector<std::shared_ptr<const Transform>>& parts() const { return parts_; }
  //! The parts that draw no random numbers (what evaluation applies by default).
  std::shared_ptr<const Transform> deterministic_part() const;

 private:
  std::vector<std::shared_ptr<const Transform>> parts_;
};

//! A crop of height x width at a random place, after `padding` zeros on every side (as torchvision's RandomCrop).
class RandomCrop : public Transform {
 public:
  RandomCrop(int64_t height, int64_t width, int64_t padding = 0);
  Example operator()(Example ex, Generator& gen) const override;
  std::string describe() const override;
  bool random() const override { return true; }

 private:
  int64_t h_, w_, pad_;
};

//! The centre height x width crop.
class CenterCrop : public Transform {
 public:
  CenterCrop(int64_t height, int64_t width);
  Example operator()(Example ex, Generator& gen) const override;
  std::string describe() const override;

 private:
  int64_t h_, w_;
};

//! Mirrors the last dimension (left-right) with probability p.
class HorizontalFlip : public Transform {
 public:
  explicit HorizontalFlip(double p = 0.5);
  Example operator()(Example ex, Generator& gen) const override;
  std::string describe() const override;
  bool random() const override { return true; }

 private:
  double p_;
};

//! (x - mean) / std per channel (dimension -3), or one mean and std for all.
class Normalize : public Transform {
 public:
  Normalize(std::vector<double> mean, std::vector<double> std);
  Example operator()(Example ex, Generator& gen) const override;
  std::string describe() const override;

 private:
  std::vector<double> mean_, std_;
};

//! Adds Gaussian noise of standard deviation `std`.
class GaussianNoise : public Transform {
 public:
  explicit GaussianNoise(double std);
  Example operator()(Example ex, Generator& gen) const override;
  std::string describe() const override;
  bool random() const override { return true; }

 private:
  double std_;
};

//! Bilinear resize of the last two dimensions to height x width (align_corners false, as torchvision without antialias).
class Resize : public Transform {
 public:
  Resize(int64_t height, int64_t width);
  Example operator()(Example ex, Generator& gen) const override;
  std::string describe() const override;

 private:
  int64_t h_, w_;
};

//! A transform of one's own as a callable. `name` (with its options) is what
//! resume compares, so name a changed transform differently.
class Lambda : public Transform {
 public:
  using Fn = std::function<Example(Example, Generator&)>;
  Lambda(std::string name, Fn fn, bool random = true) : name_(std::move(name)), fn_(std::move(fn)), random_(random) {}
  Example operator()(Example ex, Generator& gen) const override { return fn_(std::move(ex), gen); }
  std::string describe() const override { return name_; }
  bool random() const override { return random_; }

 private:
  std::string name_;
  Fn fn_;
  bool random_;
};

}  // namespace cairn
