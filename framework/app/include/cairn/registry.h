// Registry: names in YAML -> factories in C++.
//
// Each factory reads and checks its options from a ConfigNode first (so
// `cairn print-config` validates everything without loading data), then
// returns a builder that makes the object once the run's context exists:
//
//   cairn::Registry::global().add_model("tiny", [](cairn::ConfigNode& c) {
//     const int64_t hidden = c.get_int("hidden", 32, 1);
//     return [hidden](cairn::BuildContext& ctx) {
//       return cairn::Model::wrap(cairn::make_mlp({ctx.data->input_shape, {hidden}, ctx.data->num_classes}));
//     };
//   });
#pragma once

#include "cairn/config.h"
#include "cairn/data.h"
#include "cairn/models.h"
#include "cairn/torch_fwd.h"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace cairn {

class Callback;
class Scheduler;
class Loss;
class Metric;

//! What builders may use: everything built before them.
struct BuildContext {
  std::string run_dir;                        //!< the run directory
  uint64_t seed = 0;
  int64_t max_epochs = 0;
  std::shared_ptr<DataModule> data;           //!< set up (loaded) before models are built
  Model model;
  std::shared_ptr<torch::optim::Optimizer> optimizer;
  int64_t steps_per_epoch = 0;                //!< optimizer steps per epoch (batches / accumulate_grad_batches, rounded up)
  //! The loss's targets are floats (regression, multi-label), not class indices:
  //! data sets read their targets accordingly. Set before the data is built.
  bool float_targets = false;
  //! The class target the loss ignores (loss.ignore_index): metrics ignore it too.
  int64_t ignore_index = -100;
  //! trainer.freeze: the patterns a finetuning callback unfreezes by default.
  std::vector<std::string> freeze;
};

template <class T>
using Builder = std::function<T(BuildContext&)>;
template <class T>
using Factory = std::function<Builder<T>(ConfigNode&)>;

template <class T>
class FactoryTable {
 public:
  explicit FactoryTable(std::string kind) : kind_(std::move(kind)) {}
  void add(const std::string& name, Factory<T> f) { table_[name] = std::move(f); }
  bool contains(const std::string& name) const { return table_.count(name) > 0; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : table_) out.push_back(kv.first);
    return out;
  }
  //! Reads `node.name`, checks the options, returns the builder. Unknown names
  //! are a ConfigError listing the known ones.
  Builder<T> parse(ConfigNode& node) const {
    const std::string name = node.name();
    auto it = table_.find(name);
    if (it == table_.end()) {
      std::string known;
      for (const auto& kv : table_) known += (known.empty() ? "" : ", ") + kv.first;
      node.fail("name", "unknown " + kind_ + " '" + name + "'" + did_you_mean(name, names()) + " (known: " + known + ")");
    }
    Builder<T> b = it->second(node);
    node.finish();
    return b;
  }

 private:
  std::string kind_;
  std::map<std::string, Factory<T>> table_;
};

class Registry {
 public:
  //! The process-wide registry, with cairn's built-in models, data,
  //! optimizers and schedulers. The built-in callbacks (whose classes live in
  //! cairn::callbacks) are registered by cairn::register_builtin_callbacks(),
  //! in the application layer (framework/app/src/register_callbacks.cpp).
  static Registry& global();

  void add_model(const std::string& name, Factory<Model> f) { models.add(name, std::move(f)); }
  void add_data(const std::string& name, Factory<std::shared_ptr<DataModule>> f) { data.add(name, std::move(f)); }
  void add_optimizer(const std::string& name, Factory<std::shared_ptr<torch::optim::Optimizer>> f) {
    optimizers.add(name, std::move(f));
  }
  void add_scheduler(const std::string& name, Factory<std::shared_ptr<Scheduler>> f) {
    schedulers.add(name, std::move(f));
  }
  void add_callback(const std::string& name, Factory<std::shared_ptr<Callback>> f) {
    callbacks.add(name, std::move(f));
  }
  void add_loss(const std::string& name, Factory<std::shared_ptr<Loss>> f) { losses.add(name, std::move(f)); }
  void add_metric(const std::string& name, Factory<std::shared_ptr<Metric>> f) { metrics.add(name, std::move(f)); }
  //! A per-example transform for data.transforms / data.valid_transforms (cairn/transforms.h).
  void add_transform(const std::string& name, Factory<std::shared_ptr<const Transform>> f) {
    transforms.add(name, std::move(f));
  }

  FactoryTable<Model> models{"model"};
  FactoryTable<std::shared_ptr<DataModule>> data{"dataset"};
  FactoryTable<std::shared_ptr<torch::optim::Optimizer>> optimizers{"optimizer"};
  FactoryTable<std::shared_ptr<Scheduler>> schedulers{"scheduler"};
  FactoryTable<std::shared_ptr<Callback>> callbacks{"callback"};
  FactoryTable<std::shared_ptr<Loss>> losses{"loss"};
  FactoryTable<std::shared_ptr<Metric>> metrics{"metric"};
  FactoryTable<std::shared_ptr<const Transform>> transforms{"transform"};

 private:
  Registry();
};

}  // namespace cairn
