// The built-in factories: models, datasets, optimizers, schedulers, losses, metrics.
#include "cairn/registry.h"

#include "cairn/datasets.h"
#include "cairn/transforms.h"
#include "cairn/models.h"
#include "cairn/objectives.h"
#include "cairn/optimizers.h"
#include "cairn/schedulers.h"

#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <optional>

namespace cairn {

namespace {
void register_models(Registry& r) {
  r.add_model("mlp", [](ConfigNode& c) {
    MlpOptions o;
    o.hidden = c.get_int_list("hidden", std::vector<int64_t>{256, 128}, 1);
    o.dropout = c.get_double("dropout", 0.0, 0.0, 0.99);
    return [o](BuildContext& ctx) mutable {
      o.input_shape = ctx.data->input_shape;
      o.num_classes = ctx.data->num_classes;
      return Model::wrap(make_mlp(o));
    };
  });
  r.add_model("cnn", [](ConfigNode& c) {
    CnnOptions o;
    o.channels = c.get_int_list("channels", std::vector<int64_t>{32, 64}, 1);
    o.hidden = c.get_int("hidden", 128, 1);
    o.dropout = c.get_double("dropout", 0.0, 0.0, 0.99);
    return [o](BuildContext& ctx) mutable {
      o.input_shape = ctx.data->input_shape;
      o.num_classes = ctx.data->num_classes;
      if (o.input_shape.size() != 3) {
        throw std::invalid_argument("model cnn needs image data shaped [channels, height, width]");
      }
      return Model::wrap(make_cnn(o));
    };
  });
  r.add_model("torchscript", [](ConfigNode& c) {
    const std::string path = c.get_path("path", std::nullopt);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) c.fail("path", "no such file: " + path);
    return [path](BuildContext&) { return load_torchscript(path); };
  });
}

void register_data(Registry& r) {
  r.add_data("fashion_mnist", [](ConfigNode& c) {
    FashionMnistOptions o;
    o.root = c.get_path("root", o.root);
    o.batch_size = c.get_int("batch_size", 64, 1);
    o.valid_fraction = c.get_double("valid_fraction", 0.1, 0.0, 0.9);
    o.limit_train = c.get_optional_int("limit_train", 1).value_or(-1);
    o.limit_test = c.get_optional_int("limit_test", 1).value_or(-1);
    return [o](BuildContext& ctx) mutable -> std::shared_ptr<DataModule> {
      o.seed = ctx.seed;
      return std::make_shared<FashionMnist>(o);
    };
  });
  r.add_data("synthetic", [](ConfigNode& c) {
    SyntheticOptions o;
    o.train_size = c.get_int("train_size", o.train_size, 1);
    o.valid_size = c.get_int("valid_size", o.valid_size, 0);
    o.test_size = c.get_int("test_size", o.test_size, 0);
    o.features = c.get_int("features", o.features, 1);
    o.num_classes = c.get_int("num_classes", o.num_classes, 2);
    o.batch_size = c.get_int("batch_size", o.batch_size, 1);
    o.noise = c.get_double("noise", o.noise, 0.0);
    return [o](BuildContext& ctx) mutable -> std::shared_ptr<DataModule> {
      o.seed = ctx.seed;
      return std::make_shared<SyntheticData>(o);
    };
  });
  r.add_data("tensors", [](ConfigNode& c) {
    TensorFileOptions o;
    o.path = c.get_path("path", std::nullopt);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(o.path, ec)) c.fail("path", "no such file: " + o.path);
    o.batch_size = c.get_int("batch_size", 64, 1);
    o.valid_fraction = c.get_double("valid_fraction", 0.1, 0.0, 0.9);
    o.num_classes = c.get_optional_int("num_classes", 2).value_or(0);
    return [o](BuildContext& ctx) mutable -> std::shared_ptr<DataModule> {
      o.seed = ctx.seed;
      o.float_targets = ctx.float_targets;
      return std::make_shared<TensorFileData>(o);
    };
  });
  r.add_data("csv", [](ConfigNode& c) {
    CsvOptions o;
    std::error_code ec;
    o.path = c.get_path("path", std::nullopt);
    if (!std::filesystem::is_regular_file(o.path, ec)) c.fail("path", "no such file: " + o.path);
    for (const char* k : {"valid_path", "test_path"}) {
      const auto p = c.get_optional_path(k);
      if (p && !std::filesystem::is_regular_file(*p, ec)) c.fail(k, "no such file: " + *p);
      (std::string(k) == "valid_path" ? o.valid_path : o.test_path) = p.value_or("");
    }
    // One column, or a list of them (multi-label or multi-output targets).
    o.labels = c.get_names("label", std::vector<std::string>{"label"});
    o.batch_size = c.get_int("batch_size", 64, 1);
    o.valid_fraction = c.get_double("valid_fraction", 0.1, 0.0, 0.9);
    o.num_classes = c.get_optional_int("num_classes", 2).value_or(0);
    return [o](BuildContext& ctx) mutable -> std::shared_ptr<DataModule> {
      o.seed = ctx.seed;
      o.float_targets = ctx.float_targets;
      if (o.labels.size() > 1 && !o.float_targets) {
        throw DataError("data.label lists " + std::to_string(o.labels.size()) +
                        " columns, which needs a loss with float targets (bce_with_logits, mse, l1, smooth_l1); "
                        "a classification loss takes one column of class labels");
      }
      return std::make_shared<CsvData>(o);
    };
  });
}

// Data read from disk as training goes: image folders and shards take a
// training folder and optional valid and test folders (as csv takes files).
// The folders are looked for when the data is loaded, not here: a config may
// be checked (print-config) before its data is made (a DataError, exit 2,
// names a missing folder).
void disk_paths(ConfigNode& c, std::string& path, std::string& valid_path, std::string& test_path) {
  path = c.get_path("path", std::nullopt);
  valid_path = c.get_optional_path("valid_path").value_or("");
  test_path = c.get_optional_path("test_path").value_or("");
}

void register_disk_data(Registry& r) {
  r.add_data("image_folder", [](ConfigNode& c) {
    ImageFolderOptions o;
    disk_paths(c, o.path, o.valid_path, o.test_path);
    o.channels = c.get_int("channels", 3, 1, 3);
    if (o.channels == 2) c.fail("channels", "1 (grey) or 3 (RGB)");
    o.batch_size = c.get_int("batch_size", 64, 1);
    o.valid_fraction = c.get_double("valid_fraction", 0.1, 0.0, 0.9);
    return [o](BuildContext& ctx) mutable -> std::shared_ptr<DataModule> {
      o.seed = ctx.seed;
      if (ctx.float_targets) throw DataError("data.name image_folder gives class labels: use a classification loss");
      return std::make_shared<ImageFolderData>(o);
    };
  });
  r.add_data("shards", [](ConfigNode& c) {
    ShardOptions o;
    disk_paths(c, o.path, o.valid_path, o.test_path);
    o.batch_size = c.get_int("batch_size", 64, 1);
    o.valid_fraction = c.get_double("valid_fraction", 0.1, 0.0, 0.9);
    o.num_classes = c.get_optional_int("num_classes", 2).value_or(0);
    return [o](BuildContext& ctx) mutable -> std::shared_ptr<DataModule> {
      o.seed = ctx.seed;
      o.float_targets = ctx.float_targets;
      return std::make_shared<ShardData>(o);
    };
  });
}

// data.transforms: per-example transforms by name (cairn/transforms.h).
void register_transforms(Registry& r) {
  auto size = [](ConfigNode& c) {
    const YAML::Node n = c.node()["size"];
    std::vector<int64_t> hw;
    if (n && n.IsScalar()) {
      const int64_t v = c.get_int("size", std::nullopt, 1);
      hw = {v, v};
    } else {
      hw = c.get_int_list("size", std::nullopt, 1);
      if (hw.size() != 2) c.fail("size", "one number or [height, width]");
    }
    return std::make_pair(hw[0], hw[1]);
  };
  using T = std::shared_ptr<const Transform>;
  r.add_transform("random_crop", [size](ConfigNode& c) {
    const auto hw = size(c);
    const int64_t padding = c.get_int("padding", 0, 0);
    return [hw, padding](BuildContext&) -> T { return std::make_shared<RandomCrop>(hw.first, hw.second, padding); };
  });
  r.add_transform("center_crop", [size](ConfigNode& c) {
    const auto hw = size(c);
    return [hw](BuildContext&) -> T { return std::make_shared<CenterCrop>(hw.first, hw.second); };
  });
  r.add_transform("resize", [size](ConfigNode& c) {
    const auto hw = size(c);
    return [hw](BuildContext&) -> T { return std::make_shared<Resize>(hw.first, hw.second); };
  });
  r.add_transform("hflip", [](ConfigNode& c) {
    const double p = c.get_double("p", 0.5, 0.0, 1.0);
    return [p](BuildContext&) -> T { return std::make_shared<HorizontalFlip>(p); };
  });
  r.add_transform("normalize", [](ConfigNode& c) {
    const auto mean = c.get_double_list("mean", std::nullopt);
    const auto std = c.get_double_list("std", std::nullopt, mean.size(), 0.0);
    for (double s : std) {
      if (!(s > 0)) c.fail("std", "every std must be > 0");
    }
    if (mean.empty()) c.fail("mean", "one value, or one per channel");
    return [mean, std](BuildContext&) -> T { return std::make_shared<Normalize>(mean, std); };
  });
  r.add_transform("noise", [](ConfigNode& c) {
    const double s = c.get_double("std", std::nullopt, 0.0);
    return [s](BuildContext&) -> T { return std::make_shared<GaussianNoise>(s); };
  });
}

using OptimPtr = std::shared_ptr<torch::optim::Optimizer>;

//! `foreach` and `fused`, as PyTorch's arguments: foreach unset (null) means
//! foreach on CUDA and the per-parameter loop elsewhere (cairn/optimizers.h).
StepMode step_mode(ConfigNode& c, bool fused_offered) {
  const std::optional<bool> foreach = c.get_optional_bool("foreach");
  const bool fused = fused_offered && c.get_bool("fused", false);
  if (fused) {
    if (foreach.value_or(false)) c.fail("fused", "fused and foreach cannot both be true (fused already runs one kernel)");
    if (!fused_adam_available(c10::Device(c10::kCPU)) && !fused_adam_available(c10::Device(c10::kCUDA))) {
      c.fail("fused", std::string("fused Adam needs LibTorch 2.4 or newer; this is ") + TORCH_VERSION +
                          " (use foreach: true, which gives the same results as the default bit for bit)");
    }
    return StepMode::fused;
  }
  if (!foreach) return StepMode::automatic;
  return *foreach ? StepMode::foreach : StepMode::for_loop;
}

void register_optimizers(Registry& r) {
  r.add_optimizer("sgd", [](ConfigNode& c) {
    const double lr = c.get_double("lr", 0.01, 0.0, 1e308, true);
    const double momentum = c.get_double("momentum", 0.0, 0.0, 1.0);
    const double dampening = c.get_double("dampening", 0.0, 0.0, 1.0);
    const double wd = c.get_double("weight_decay", 0.0, 0.0);
    const bool nesterov = c.get_bool("nesterov", false);
    if (nesterov && (momentum <= 0 || dampening != 0)) {
      c.fail("nesterov", "nesterov needs momentum > 0 and dampening 0");
    }
    const StepMode mode = step_mode(c, false);
    return [=](BuildContext& ctx) -> OptimPtr {
      return std::make_shared<cairn::SGD>(
          ctx.model.module->parameters(),
          torch::optim::SGDOptions(lr).momentum(momentum).dampening(dampening).weight_decay(wd).nesterov(nesterov),
          mode);
    };
  });
  auto adam_like = [](bool decoupled) {
    return [decoupled](ConfigNode& c) -> Builder<OptimPtr> {
      const double lr = c.get_double("lr", 1e-3, 0.0, 1e308, true);
      const double wd = c.get_double("weight_decay", decoupled ? 1e-2 : 0.0, 0.0);
      const double eps = c.get_double("eps", 1e-8, 0.0, 1e308, true);
      const bool amsgrad = c.get_bool("amsgrad", false);
      const auto bl = c.get_double_list("betas", std::vector<double>{0.9, 0.999}, 2, 0.0, 0.999999);
      const std::tuple<double, double> b{bl[0], bl[1]};
      const StepMode mode = step_mode(c, true);
      return [=](BuildContext& ctx) -> OptimPtr {
        if (decoupled) {
          return std::make_shared<cairn::AdamW>(
              ctx.model.module->parameters(),
              torch::optim::AdamWOptions(lr).betas(b).eps(eps).weight_decay(wd).amsgrad(amsgrad), mode);
        }
        return std::make_shared<cairn::Adam>(
            ctx.model.module->parameters(),
            torch::optim::AdamOptions(lr).betas(b).eps(eps).weight_decay(wd).amsgrad(amsgrad), mode);
      };
    };
  };
  r.add_optimizer("adam", adam_like(false));
  r.add_optimizer("adamw", adam_like(true));
  r.add_optimizer("rmsprop", [](ConfigNode& c) {
    const double lr = c.get_double("lr", 1e-2, 0.0, 1e308, true);
    const double alpha = c.get_double("alpha", 0.99, 0.0, 1.0);
    const double eps = c.get_double("eps", 1e-8, 0.0, 1e308, true);
    const double wd = c.get_double("weight_decay", 0.0, 0.0);
    const double momentum = c.get_double("momentum", 0.0, 0.0, 1.0);
    const bool centered = c.get_bool("centered", false);
    return [=](BuildContext& ctx) -> OptimPtr {
      return std::make_shared<torch::optim::RMSprop>(
          ctx.model.module->parameters(),
          torch::optim::RMSpropOptions(lr).alpha(alpha).eps(eps).weight_decay(wd).momentum(momentum).centered(centered));
    };
  });
}

//! A warm-up that outlasts the whole run never reaches the peak learning rate:
//! say so once, at build time (it is legal: a run may be continued later).
void warn_long_warmup(const char* name, int64_t warmup, Interval interval, const BuildContext& ctx) {
  const int64_t run = interval == Interval::step ? ctx.max_epochs * ctx.steps_per_epoch : ctx.max_epochs;
  if (warmup > 0 && run > 0 && warmup >= run) {
    std::cerr << "cairn: warning: scheduler " << name << ": warmup_steps " << warmup << " is not shorter than the whole run ("
              << run << (interval == Interval::step ? " optimizer steps" : " epochs")
              << "): the learning rate never reaches its peak\n";
  }
}

Interval read_interval(ConfigNode& c, const char* def) {
  return c.get_choice("interval", std::string(def), {"step", "epoch"}) == "step" ? Interval::step : Interval::epoch;
}

void register_schedulers(Registry& r) {
  r.add_scheduler("step", [](ConfigNode& c) {
    const Interval interval = read_interval(c, "epoch");
    const int64_t step_size = c.get_int("step_size", 1, 1);
    const double gamma = c.get_double("gamma", 0.1, 0.0, 1e308, true);
    return [=](BuildContext& ctx) -> std::shared_ptr<Scheduler> {
      return std::make_shared<StepLR>(*ctx.optimizer, step_size, gamma, interval);
    };
  });
  r.add_scheduler("multistep", [](ConfigNode& c) {
    const Interval interval = read_interval(c, "epoch");
    const auto milestones = c.get_int_list("milestones", std::nullopt, 1);
    const double gamma = c.get_double("gamma", 0.1, 0.0, 1e308, true);
    return [=](BuildContext& ctx) -> std::shared_ptr<Scheduler> {
      return std::make_shared<MultiStepLR>(*ctx.optimizer, milestones, gamma, interval);
    };
  });
  r.add_scheduler("exponential", [](ConfigNode& c) {
    const Interval interval = read_interval(c, "epoch");
    const double gamma = c.get_double("gamma", std::nullopt, 0.0, 1e308, true);
    return [=](BuildContext& ctx) -> std::shared_ptr<Scheduler> {
      return std::make_shared<ExponentialLR>(*ctx.optimizer, gamma, interval);
    };
  });
  r.add_scheduler("linear_warmup", [](ConfigNode& c) {
    const Interval interval = read_interval(c, "step");
    const int64_t warmup = c.get_int("warmup_steps", std::nullopt, 1);
    const double start = c.get_double("start_factor", 0.1, 0.0, 1.0, true);
    const double end = c.get_double("end_factor", 1.0, 0.0, 1.0, true);
    return [=](BuildContext& ctx) -> std::shared_ptr<Scheduler> {
      warn_long_warmup("linear_warmup", warmup, interval, ctx);
      return std::make_shared<LinearWarmupLR>(*ctx.optimizer, warmup, start, end, interval);
    };
  });
  r.add_scheduler("one_cycle", [](ConfigNode& c) {
    const Interval interval = read_interval(c, "step");
    const auto max_lr = c.get_optional_double("max_lr", 0.0);
    const double pct = c.get_double("pct_start", 0.3, 0.0, 1.0, true);
    const double div = c.get_double("div_factor", 25.0, 0.0, 1e308, true);
    const double final_div = c.get_double("final_div_factor", 1e4, 0.0, 1e308, true);
    const auto total = c.get_optional_int("total_steps", 2);
    if (pct >= 1.0) c.fail("pct_start", "expected a number in (0, 1)");
    return [=](BuildContext& ctx) -> std::shared_ptr<Scheduler> {
      const int64_t t = total ? *total
                              : (interval == Interval::step ? ctx.max_epochs * ctx.steps_per_epoch : ctx.max_epochs);
      return std::make_shared<OneCycleLR>(*ctx.optimizer, std::max<int64_t>(2, t), max_lr.value_or(0.0), pct, div,
                                          final_div, interval);
    };
  });
  r.add_scheduler("plateau", [](ConfigNode& c) {
    ReduceLROnPlateau::Options o;
    o.monitor = c.get_string("monitor", o.monitor);
    o.mode = parse_mode(c.get_choice("mode", std::string("min"), {"min", "max"}));
    o.factor = c.get_double("factor", 0.1, 0.0, 0.999999, true);
    o.patience = c.get_int("patience", 10, 0);
    o.threshold = c.get_double("threshold", 1e-4, 0.0);
    o.relative = c.get_choice("threshold_mode", std::string("rel"), {"rel", "abs"}) == "rel";
    o.cooldown = c.get_int("cooldown", 0, 0);
    o.min_lr = c.get_double("min_lr", 0.0, 0.0);
    c.get_choice("interval", std::string("epoch"), {"epoch"});
    return [o](BuildContext& ctx) -> std::shared_ptr<Scheduler> {
      return std::make_shared<ReduceLROnPlateau>(*ctx.optimizer, o);
    };
  });
  r.add_scheduler("cosine", [](ConfigNode& c) {
    const Interval interval = read_interval(c, "step");
    const int64_t warmup = c.get_int("warmup_steps", 0, 0);
    const double min_lr = c.get_double("min_lr", 0.0, 0.0);
    const auto total_steps = c.get_optional_int("total_steps", 1);
    return [=](BuildContext& ctx) -> std::shared_ptr<Scheduler> {
      warn_long_warmup("cosine", warmup, interval, ctx);
      const int64_t total = total_steps ? *total_steps
                                        : (interval == Interval::step ? ctx.max_epochs * ctx.steps_per_epoch
                                                                      : ctx.max_epochs);
      return std::make_shared<CosineLR>(*ctx.optimizer, std::max<int64_t>(1, total), warmup, min_lr, interval);
    };
  });
}

void register_losses(Registry& r) {
  auto class_options = [](ConfigNode& c, bool smoothing) {
    ClassLossOptions o;
    if (smoothing) o.label_smoothing = c.get_double("label_smoothing", 0.0, 0.0, 1.0);
    o.weight = c.get_double_list("weight", std::vector<double>{}, 0, 0.0);
    o.ignore_index = c.get_int("ignore_index", -100);
    return o;
  };
  r.add_loss("cross_entropy", [class_options](ConfigNode& c) {
    const ClassLossOptions o = class_options(c, true);
    return [o](BuildContext&) -> std::shared_ptr<Loss> { return std::make_shared<CrossEntropyLoss>(o); };
  });
  r.add_loss("nll", [class_options](ConfigNode& c) {
    const ClassLossOptions o = class_options(c, false);
    return [o](BuildContext&) -> std::shared_ptr<Loss> { return std::make_shared<NllLoss>(o); };
  });
  r.add_loss("bce_with_logits", [](ConfigNode& c) {
    const auto pos_weight = c.get_double_list("pos_weight", std::vector<double>{}, 0, 0.0);
    return [pos_weight](BuildContext&) -> std::shared_ptr<Loss> { return std::make_shared<BceWithLogitsLoss>(pos_weight); };
  });
  r.add_loss("mse", [](ConfigNode&) {
    return [](BuildContext&) -> std::shared_ptr<Loss> { return std::make_shared<RegressionLoss>(RegressionLoss::mse); };
  });
  r.add_loss("l1", [](ConfigNode&) {
    return [](BuildContext&) -> std::shared_ptr<Loss> { return std::make_shared<RegressionLoss>(RegressionLoss::l1); };
  });
  r.add_loss("smooth_l1", [](ConfigNode& c) {
    const double beta = c.get_double("beta", 1.0, 0.0);
    return [beta](BuildContext&) -> std::shared_ptr<Loss> {
      return std::make_shared<RegressionLoss>(RegressionLoss::smooth_l1, beta);
    };
  });
}

void register_metrics(Registry& r) {
  using MetricPtr = std::shared_ptr<Metric>;
  // The classification metrics ignore the class target the loss ignores (loss.ignore_index).
  r.add_metric("accuracy", [](ConfigNode&) {
    return [](BuildContext& ctx) -> MetricPtr { return std::make_shared<Accuracy>(ctx.ignore_index); };
  });
  r.add_metric("top_k_accuracy", [](ConfigNode& c) {
    const int64_t k = c.get_int("k", 5, 1);
    return [k](BuildContext& ctx) -> MetricPtr { return std::make_shared<TopKAccuracy>(k, ctx.ignore_index); };
  });
  r.add_metric("f1", [](ConfigNode& c) {
    const std::string a = c.get_choice("average", std::string("macro"), {"macro", "micro", "weighted"});
    const auto avg = a == "macro" ? F1Score::macro : a == "micro" ? F1Score::micro : F1Score::weighted;
    return [avg](BuildContext& ctx) -> MetricPtr {
      return std::make_shared<F1Score>(ctx.float_targets ? 0 : ctx.data->num_classes, avg, ctx.ignore_index);
    };
  });
  r.add_metric("auroc", [](ConfigNode&) { return [](BuildContext&) -> MetricPtr { return std::make_shared<BinaryAuroc>(); }; });
  r.add_metric("mae", [](ConfigNode&) {
    return [](BuildContext&) -> MetricPtr { return std::make_shared<ErrorMetric>(ErrorMetric::mae); };
  });
  r.add_metric("rmse", [](ConfigNode&) {
    return [](BuildContext&) -> MetricPtr { return std::make_shared<ErrorMetric>(ErrorMetric::rmse); };
  });
  r.add_metric("r2", [](ConfigNode&) { return [](BuildContext&) -> MetricPtr { return std::make_shared<R2Score>(); }; });
  r.add_metric("perplexity", [](ConfigNode& c) {
    // Its own ignore_index, else the loss's.
    const std::optional<int64_t> ignore =
        c.has("ignore_index") ? std::optional<int64_t>(c.get_int("ignore_index", -100)) : std::nullopt;
    return [ignore](BuildContext& ctx) -> MetricPtr { return std::make_shared<Perplexity>(ignore.value_or(ctx.ignore_index)); };
  });
}
}  // namespace

Registry::Registry() {
  register_models(*this);
  register_data(*this);
  register_disk_data(*this);
  register_transforms(*this);
  register_optimizers(*this);
  register_schedulers(*this);
  register_losses(*this);
  register_metrics(*this);
}

Registry& Registry::global() {
  static Registry r;
  return r;
}

}  // namespace cairn
