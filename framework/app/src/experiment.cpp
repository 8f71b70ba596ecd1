#include "cairn/experiment.h"

#include "cairn/callback.h"
#include "cairn/callbacks/checkpoint.h"
#include "cairn/transforms.h"
#include "cairn/datasets.h"
#include "cairn/callbacks/finetuning.h"
#include "cairn/distributed.h"
#include "cairn/loop.h"
#include "cairn/objectives.h"
#include "cairn/schedulers.h"
#include "cairn/trainer.h"

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <regex>

namespace cairn {

ExperimentSpec parse_experiment(const std::string& file, const std::vector<std::string>& overrides,
                                const Registry& registry) {
  ExperimentSpec spec;
  spec.doc = load_config(file, overrides);
  ConfigNode top = spec.doc.top();
  // Every section is checked even when an earlier one fails, so that one run
  // of `cairn print-config` names every problem (unknown keys first: they are
  // usually the typo behind a "missing" error).
  std::vector<ConfigError::Problem> problems;
  auto attempt = [&](auto&& step) {
    try {
      step();
    } catch (const ConfigError& e) {
      problems.insert(problems.end(), e.problems().begin(), e.problems().end());
    }
  };
  attempt([&] { spec.name = top.get_string("name", std::string("experiment")); });
  attempt([&] { spec.seed = static_cast<uint64_t>(top.get_int("seed", 0, 0)); });

  attempt([&] {
    ConfigNode run = top.get_map("run");
    spec.run_dir = run.get_string("dir", "runs/" + spec.name);
    run.finish();
  });

  attempt([&] {
    ConfigNode data = top.get_map("data", true);
    // Where the data lives while training, for every kind of data set
    // (TrainerOptions::data_device, prefetch).
    spec.trainer.data_device(data.get_choice("device", std::string("auto"), {"auto", "cpu", "cuda"}));
    const std::optional<bool> prefetch = data.get_optional_bool("prefetch");
    spec.trainer.prefetch(prefetch ? (*prefetch ? "true" : "false") : "auto");
    // Worker threads, per-example transforms and bad examples, for every kind of data set.
    spec.trainer.workers(data.get_int("workers", 0, 0, 256));
    spec.skip_bad = data.get_bool("skip_bad", false);
    for (auto& t : data.get_named_list("transforms")) spec.transforms.push_back(registry.transforms.parse(t));
    spec.valid_transforms_set = data.has("valid_transforms");
    for (auto& t : data.get_named_list("valid_transforms")) spec.valid_transforms.push_back(registry.transforms.parse(t));
    spec.data_node = {data};
    // Quick iterations on any data set: the first N examples of a split, or a fraction of it.
    const YAML::Node kind = data.node()["name"];
    const bool own_counts = kind && kind.IsScalar() && kind.Scalar() == "fashion_mnist";  // limit_train/test of its own
    auto limit = [&](const char* key, DataLimit& out) {
      const YAML::Node v = data.node()[key];
      if (!v || !v.IsScalar()) return;
      const std::string text = v.Scalar();
      out.fraction = text.find_first_of(".eE") != std::string::npos;
      out.value = out.fraction ? data.get_double(key, std::nullopt, 0.0, 1.0, /*min_exclusive=*/true)
                               : static_cast<double>(data.get_int(key, 1, 1));
      out.set = true;
    };
    if (!own_counts) limit("limit_train", spec.limit_train);
    limit("limit_valid", spec.limit_valid);
    if (!own_counts) limit("limit_test", spec.limit_test);
    spec.data = registry.data.parse(data);
  });

  attempt([&] {
    ConfigNode model = top.get_map("model", true);
    // A path, or {path, strict, exclude, rename} (fine-tuning from other weights).
    const YAML::Node init = model.node()["init_from"];
    if (init && init.IsMap()) {
      ConfigNode f = model.get_map("init_from");
      spec.init_from = f.get_path("path", std::nullopt);
      spec.init_options.strict = f.get_bool("strict", true);
      spec.init_options.exclude = f.get_names("exclude", std::vector<std::string>{});
      for (const auto& e : spec.init_options.exclude) {
        try {
          std::regex re(e, std::regex::ECMAScript);
        } catch (const std::regex_error& err) {
          f.fail("exclude", "'" + e + "' is not a valid regex: " + err.what());
        }
      }
      if (f.has("rename")) {
        ConfigNode r = f.get_map("rename");
        for (auto it = r.node().begin(); it != r.node().end(); ++it) {
          const std::string from = it->first.Scalar();
          try {
            std::regex re(from, std::regex::ECMAScript);
          } catch (const std::regex_error& err) {
            r.fail(from, "'" + from + "' is not a valid regex: " + err.what());
          }
          spec.init_options.rename.emplace_back(from, r.get_string(from, std::nullopt));
        }
        r.finish();
      }
      f.finish();
      spec.init_node = {f};
    } else {
      spec.init_from = model.get_optional_path("init_from");
    }
    spec.model = registry.models.parse(model);
  });

  // loss: {name: ..., options}; metrics: [name or {name: ..., options}]. A
  // missing loss is cross_entropy; missing metrics are accuracy for a
  // classification loss and none otherwise.
  attempt([&] {
    ConfigNode loss = top.get_map("loss");
    if (!loss.has("name")) {
      YAML::Node fallback(YAML::NodeType::Map);
      fallback["name"] = "cross_entropy";
      for (auto it = loss.node().begin(); it != loss.node().end(); ++it) fallback[it->first.Scalar()] = it->second;
      loss = ConfigNode(fallback, loss.resolved(), "loss", spec.doc.source);
    }
    spec.loss = registry.losses.parse(loss);
    // Only the classification losses get a default metric (accuracy).
    const std::string name = loss.resolved()["name"].Scalar();
    spec.float_targets = name != "cross_entropy" && name != "nll";
    spec.loss_node = {loss};
  });
  attempt([&] {
    std::vector<ConfigNode> metrics;
    if (top.has("metrics")) {
      metrics = top.get_named_list("metrics");
    } else {
      // The default, recorded in the resolved config like any other.
      top.get_named_list("metrics");
      if (!spec.float_targets) {
        YAML::Node m(YAML::NodeType::Map);
        m["name"] = "accuracy";
        spec.doc.resolved["metrics"].push_back(YAML::Node(YAML::NodeType::Map));
        metrics.emplace_back(m, spec.doc.resolved["metrics"][0], "metrics[default]", spec.doc.source);
      }
    }
    std::vector<ConfigError::Problem> bad;
    std::vector<std::string> seen;
    for (auto& m : metrics) {
      try {
        spec.metrics.push_back(registry.metrics.parse(m));
        spec.metric_nodes.push_back(m);
      } catch (const ConfigError& e) {
        bad.insert(bad.end(), e.problems().begin(), e.problems().end());
      }
    }
    if (!bad.empty()) throw ConfigError(std::move(bad));
  });

  attempt([&] {
    ConfigNode optimizer = top.get_map("optimizer");
    if (!optimizer.has("name")) {
      // No optimizer section: Adam with its defaults.
      YAML::Node fallback(YAML::NodeType::Map);
      fallback["name"] = "adam";
      ConfigNode f(fallback, optimizer.resolved(), "optimizer", std::make_shared<ConfigSource>(*spec.doc.source));
      spec.optimizer = registry.optimizers.parse(f);
    } else {
      spec.optimizer = registry.optimizers.parse(optimizer);
    }
  });

  attempt([&] {
    if (top.has("scheduler") && !top.is_null("scheduler")) {
      ConfigNode sched = top.get_map("scheduler");
      spec.scheduler = registry.schedulers.parse(sched);
      spec.scheduler_node = {sched};
    } else {
      top.get_optional_string("scheduler");
    }
  });

  bool enable_checkpointing = true, enable_progress = true;
  attempt([&] {
    ConfigNode trainer = top.get_map("trainer");
    spec.trainer.max_epochs(trainer.get_int("max_epochs", 10, 1));
    spec.trainer.max_steps(trainer.get_optional_int("max_steps", 1).value_or(0));
    // Every N training batches (an integer) or that fraction of an epoch (a number with a point).
    if (const YAML::Node v = trainer.node()["val_check_interval"]; v && v.IsScalar() && v.Scalar() != "null" && v.Scalar() != "~") {
      const bool fraction = v.Scalar().find_first_of(".eE") != std::string::npos;
      spec.trainer.val_check_fraction(fraction);
      spec.trainer.val_check_interval(fraction ? trainer.get_double("val_check_interval", std::nullopt, 0.0, 1.0, true)
                                               : static_cast<double>(trainer.get_int("val_check_interval", 1, 1)));
    } else {
      (void)trainer.get_optional_int("val_check_interval", 1);
    }
    spec.trainer.threads(trainer.get_int("threads", 1, 0, 1024));
    spec.trainer.device(trainer.get_string("device", std::string("auto")));
    {
      const std::string& d = spec.trainer.device();
      if (d != "auto" && d != "cpu" && d.rfind("cuda", 0) != 0) trainer.fail("device", "expected auto, cpu, cuda or cuda:N; got '" + d + "'");
    }
    spec.trainer.precision(trainer.get_choice("precision", std::string("32"), {"32", "32-true", "bf16-mixed", "16-mixed"}));
    {
      // Refused here, at the key, when this LibTorch or device cannot run it.
      c10::DeviceType type = c10::DeviceType::CPU;
      try {
        type = resolve_device(spec.trainer.device()).type();
      } catch (const std::invalid_argument&) {
        // trainer.device itself is reported where it is used.
      }
      try {
        check_precision(parse_precision(spec.trainer.precision()), type);
      } catch (const std::invalid_argument& e) {
        trainer.fail("precision", e.what());
      }
    }
    spec.trainer.log_every_n_steps(trainer.get_int("log_every_n_steps", 50, 1));
    spec.trainer.check_val_every_n_epoch(trainer.get_int("check_val_every_n_epoch", 1, 1));
    spec.trainer.run_test(trainer.get_bool("run_test", true));
    spec.trainer.test_ckpt(trainer.get_choice("test_ckpt", spec.trainer.test_ckpt(), {"best", "last"}));
    spec.trainer.gradient_clip_val(trainer.get_double("gradient_clip_val", 0.0, 0.0));
    spec.trainer.gradient_clip_algorithm(
        trainer.get_choice("gradient_clip_algorithm", std::string("norm"), {"norm", "value"}));
    spec.trainer.accumulate_grad_batches(trainer.get_int("accumulate_grad_batches", 1, 1));
    // Off until proven on the user's model: the step is checked against an
    // uncaptured one at capture, and where it cannot be captured the run
    // trains uncaptured with a warning (TrainerOptions::cuda_graphs).
    spec.trainer.cuda_graphs(trainer.get_bool("cuda_graphs", false));
    enable_checkpointing = trainer.get_bool("enable_checkpointing", true);
    enable_progress = trainer.get_bool("enable_progress_bar", true);
    spec.freeze = trainer.get_names("freeze", std::vector<std::string>{});
    for (const auto& f : spec.freeze) {
      try {
        std::regex re(f, std::regex::ECMAScript);
      } catch (const std::regex_error& err) {
        trainer.fail("freeze", "'" + f + "' is not a valid regex: " + err.what());
      }
    }
    spec.trainer_node = {trainer};
    trainer.finish();
  });

  attempt([&] {
    // Used only when the environment names a job of several processes
    // (`cairn fit --nproc N`, torchrun, srun).
    ConfigNode dist = top.get_map("distributed");
    spec.trainer.dist_backend(dist.get_choice("backend", std::string("auto"), {"auto", "gloo", "nccl"}));
    if (spec.trainer.dist_backend() == "nccl") {
      // Refused here, with the key's place in the file, when this build or
      // machine cannot have it (the count of GPUs per local rank is checked
      // again where the processes are known: cairn fit --nproc, and join).
      torch::Device device(torch::kCPU);
      try {
        device = resolve_device(spec.trainer.device());
      } catch (const std::invalid_argument&) {
        // trainer.device itself is reported where it is used.
      }
      DistEnv env;
      try {
        env = DistEnv::from_environment();
      } catch (const DistributedError&) {
        // A malformed environment is reported when the job starts.
      }
      try {
        choose_backend("nccl", device, env);
      } catch (const std::invalid_argument& e) {
        dist.fail("backend", e.what());
      }
    }
    spec.trainer.dist_timeout(dist.get_double("timeout", 300.0, 0.1));
    spec.trainer.bucket_cap_mb(dist.get_double("bucket_cap_mb", 25.0, 0.001));
    dist.finish();
  });

  std::vector<ConfigNode> cbs;
  attempt([&] { cbs = top.get_map_list("callbacks"); });
  bool has_checkpoint = false, has_csv = false, has_progress = false;
  for (auto& cb : cbs) {
    attempt([&] {
      spec.callbacks.push_back(registry.callbacks.parse(cb));
      spec.callback_nodes.push_back(cb);
      const std::string n = cb.resolved()["name"].Scalar();
      has_checkpoint = has_checkpoint || n == "checkpoint";
      has_csv = has_csv || n == "csv_logger";
      has_progress = has_progress || n == "progress_bar";
    });
  }
  attempt([&] { top.finish(); });
  if (!problems.empty()) throw ConfigError(std::move(problems));

  // Defaults a user expects: checkpoints, metrics.csv and visible progress.
  auto add_default = [&](const char* name) {
    YAML::Node n(YAML::NodeType::Map);
    n["name"] = name;
    YAML::Node resolved(YAML::NodeType::Map);
    spec.doc.resolved["callbacks"].push_back(resolved);
    YAML::Node r = spec.doc.resolved["callbacks"][spec.doc.resolved["callbacks"].size() - 1];
    ConfigNode c(n, r, std::string("callbacks[default ") + name + "]", spec.doc.source);
    spec.callbacks.push_back(registry.callbacks.parse(c));
  };
  if (enable_checkpointing && !has_checkpoint) add_default("checkpoint");
  if (!has_csv) add_default("csv_logger");
  if (enable_progress && !has_progress) add_default("progress_bar");
  return spec;
}

void resolve_output_defaults(ExperimentSpec& spec, const std::string& run_dir) {
  YAML::Node cbs = spec.doc.resolved["callbacks"];
  if (!cbs || !cbs.IsSequence()) return;
  const std::filesystem::path dir(run_dir);
  for (YAML::Node cb : cbs) {
    if (!cb.IsMap() || !cb["name"]) continue;
    const std::string name = cb["name"].Scalar();
    auto fill = [&](const char* key, const std::string& value) {
      if (cb[key] && cb[key].IsScalar() && cb[key].Scalar().empty()) cb[key] = value;
    };
    if (name == "checkpoint") {
      fill("dirpath", (dir / "checkpoints").string());
      const YAML::Node monitor = cb["monitor"];
      fill("filename", default_checkpoint_filename(monitor && monitor.IsScalar() ? monitor.Scalar() : ""));
    } else if (name == "csv_logger") {
      fill("path", (dir / "metrics.csv").string());
    } else if (name == "jsonl_logger") {
      fill("path", (dir / "metrics.jsonl").string());
    } else if (name == "tensorboard") {
      fill("dir", (dir / "tensorboard").string());
    } else if (name == "progress_bar" && cb["log_every_n_steps"] && cb["log_every_n_steps"].IsScalar() &&
               cb["log_every_n_steps"].Scalar() == "0") {
      cb["log_every_n_steps"] = spec.trainer.log_every_n_steps();
    }
  }
}

namespace {
//! A monitor (a callback's, the scheduler's) must name a metric this run
//! logs: said at its key before anything is built further.
void check_monitors(const ExperimentSpec& spec, const DataModule& data, const std::vector<std::shared_ptr<Metric>>& metrics) {
  std::vector<std::string> logged;
  for (const char* split : {"train", "valid"}) {
    if (std::string(split) == "valid" && data.split("valid").empty()) continue;
    logged.push_back(std::string(split) + "/loss");
    for (const auto& m : metrics) logged.push_back(std::string(split) + "/" + m->name());
  }
  std::string list;
  for (const auto& n : logged) list += (list.empty() ? "" : ", ") + n;
  logged.push_back("train/loss_step");  // at log points (not listed: a per-step value is rarely what to monitor)
  auto check = [&](const ConfigNode& node) {
    const YAML::Node m = node.resolved()["monitor"];
    if (!m || !m.IsScalar() || m.Scalar().empty()) return;
    const std::string monitor = m.Scalar();
    if (std::find(logged.begin(), logged.end(), monitor) != logged.end()) return;
    std::string why = "'" + monitor + "' is never logged by this run";
    if (monitor.rfind("valid/", 0) == 0 && data.split("valid").empty()) {
      why += " (it has no validation data: data.valid_fraction is 0 or the valid split is empty)";
    } else if (monitor.rfind("test/", 0) == 0) {
      why += " (the test split is measured after training)";
    }
    node.fail("monitor", why + "; it logs " + list);
  };
  // Every bad monitor at once, each at its own key.
  std::vector<ConfigError::Problem> bad;
  auto collect = [&](const ConfigNode& n) {
    try {
      check(n);
    } catch (const ConfigError& e) {
      bad.insert(bad.end(), e.problems().begin(), e.problems().end());
    }
  };
  for (const auto& n : spec.callback_nodes) collect(n);
  for (const auto& n : spec.scheduler_node) collect(n);
  if (!bad.empty()) throw ConfigError(std::move(bad));
}

//! data.transforms and data.valid_transforms onto the data module; the shape
//! of one example becomes the transformed one (what the model is built for).
//! Image folders of mixed sizes need a resize in both lists (a config error
//! at data.transforms naming two files and their sizes).
void install_transforms(ExperimentSpec& spec, BuildContext& ctx) {
  DataModule& d = *ctx.data;
  auto build = [&](std::vector<Builder<std::shared_ptr<const Transform>>>& list) -> std::shared_ptr<const Compose> {
    if (list.empty()) return nullptr;
    std::vector<std::shared_ptr<const Transform>> parts;
    for (auto& b : list) parts.push_back(b(ctx));
    return std::make_shared<Compose>(std::move(parts));
  };
  const auto train = build(spec.transforms);
  std::shared_ptr<const Transform> eval = build(spec.valid_transforms);
  if (!spec.valid_transforms_set && train) eval = train->deterministic_part();
  if (train) d.train_transform = train;
  if (eval) d.eval_transform = eval;
  if (const auto* images = dynamic_cast<const ImageFolderData*>(&d)) {
    auto resizes = [](const Transform* t) {
      const auto* c = dynamic_cast<const Compose*>(t);
      if (!c) return false;
      for (const auto& p : c->parts()) {
        if (dynamic_cast<const Resize*>(p.get())) return true;
      }
      return false;
    };
    if (!resizes(d.train_transform.get()) || !resizes(d.eval_transform.get())) {
      const auto two = images->images().two_sizes();
      if (!two.empty() && !spec.data_node.empty()) {
        auto hw = [](const std::pair<int64_t, int64_t>& s) { return std::to_string(s.first) + "x" + std::to_string(s.second); };
        spec.data_node.front().fail(
            "transforms", "the images have more than one size (" + two[0].first + " is " + hw(two[0].second) + ", " +
                              two[1].first + " is " + hw(two[1].second) +
                              " pixels, height x width): add {name: resize, size: [H, W]} to data.transforms" +
                              (spec.valid_transforms_set ? " and data.valid_transforms" : ""));
      }
    }
  }
  // The model is built for what the transforms give.
  if (d.train_transform && !d.split("train").empty()) {
    for (int64_t i = 0; i < d.split("train").size(); ++i) {
      try {
        Generator g(example_seed(d.seed, kTrainPass, i));
        Example ex = d.split("train").get(i, g);
        d.input_shape = (*d.train_transform)(std::move(ex), g).x.sizes().vec();
        break;
      } catch (const BadExample&) {
      }
    }
  }
}

//! The model's output for two training examples, against the loss and each
//! metric: a mismatch is a config error at the loss's (or metric's) key,
//! naming both shapes, before anything trains. A model that cannot take the
//! data at all is explained by the first training step instead.
void check_shapes(ExperimentSpec& spec, BuildContext& ctx, const Loss& loss,
                  const std::vector<std::shared_ptr<Metric>>& metrics) {
  const Dataset& train = ctx.data->split("train");
  if (train.empty()) return;
  Batch probe;
  try {
    probe = BatchMaker(*ctx.data, "train", kTrainPass).make(std::vector<int64_t>{0, std::min<int64_t>(1, train.size() - 1)});
  } catch (const std::exception&) {
    return;  // a bad first example is reported (or skipped) where training reads it
  }
  if (probe.size() == 0) return;
  at::Tensor out;
  {
    torch::nn::Module& m = *ctx.model.module;
    const bool was_training = m.is_training();
    torch::NoGradGuard no_grad;
    m.eval();  // no dropout (no random numbers drawn), no BatchNorm statistics updated
    try {
      const auto params = m.parameters();
      const torch::Device device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
      out = ctx.model.forward(probe.x.to(device));
    } catch (const std::exception&) {
      m.train(was_training);
      return;
    }
    m.train(was_training);
  }
  const at::Tensor y = probe.y.to(out.device());
  try {
    loss.check(out, y);
  } catch (const ShapeMismatch& e) {
    spec.loss_node.front().fail("name", e.what());
  }
  for (size_t i = 0; i < metrics.size(); ++i) {
    try {
      metrics[i]->check(out, y);
    } catch (const ShapeMismatch& e) {
      spec.metric_nodes[i].fail("name", std::string(e.what()) + " (with loss " + loss.name() + ")");
    }
  }
}
}  // namespace

std::unique_ptr<Trainer> build_trainer(ExperimentSpec& spec, const std::string& run_dir_override,
                                       std::shared_ptr<ProcessGroup> group) {
  BuildContext ctx;
  ctx.run_dir = run_dir_override.empty() ? spec.run_dir : run_dir_override;
  ctx.seed = spec.seed;
  ctx.max_epochs = spec.trainer.max_epochs();
  set_threads(spec.trainer.threads());
  torch::manual_seed(spec.seed);
  std::shared_ptr<Loss> loss = spec.loss(ctx);
  ctx.float_targets = !loss->class_targets();  // the data reads its targets as the loss needs them
  ctx.ignore_index = loss->ignore_index();
  ctx.data = spec.data(ctx);
  ctx.data->skip_bad = spec.skip_bad;
  ctx.data->setup();
  install_transforms(spec, ctx);
  // data.limit_*: the split's first examples (setup is idempotent: the cut stays).
  auto cut = [](TensorDataset& d, const DataLimit& l) {
    if (!l.set || !d.x.defined()) return;
    const int64_t n = l.fraction ? std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(d.size()) * l.value))
                                 : static_cast<int64_t>(l.value);
    if (n >= d.size()) return;
    d.x = d.x.slice(0, 0, n);
    if (d.y.defined()) d.y = d.y.slice(0, 0, n);
  };
  cut(ctx.data->train, spec.limit_train);
  cut(ctx.data->valid, spec.limit_valid);
  cut(ctx.data->test, spec.limit_test);
  // A split read from disk: its first examples, as a Subset.
  auto cut_set = [](std::shared_ptr<const Dataset>& d, const DataLimit& l) {
    if (!l.set || !d) return;
    const int64_t n = l.fraction ? std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(d->size()) * l.value))
                                 : static_cast<int64_t>(l.value);
    if (n >= d->size()) return;
    std::vector<int64_t> first(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) first[static_cast<size_t>(i)] = i;
    d = std::make_shared<Subset>(d, std::move(first));
  };
  cut_set(ctx.data->train_set, spec.limit_train);
  cut_set(ctx.data->valid_set, spec.limit_valid);
  cut_set(ctx.data->test_set, spec.limit_test);
  // Step-interval schedules count optimizer steps: one per accumulation cycle
  // (the epoch's last, possibly short, cycle steps too).
  const int64_t global_batch = ctx.data->batch_size * (group ? group->size() : 1);
  const int64_t batches = (ctx.data->split("train").size() + global_batch - 1) / global_batch;
  const int64_t accumulate = std::max<int64_t>(1, spec.trainer.accumulate_grad_batches());
  ctx.steps_per_epoch = (batches + accumulate - 1) / accumulate;
  ctx.model = spec.model(ctx);
  if (spec.init_from) {
    const WeightsReport r = load_weights(*ctx.model.module, *spec.init_from, spec.init_options);
    // What was taken, skipped and left new: said whenever it is not simply everything.
    if ((!group || group->rank() == 0) && (!r.left_new.empty() || !r.excluded.empty() || !r.unexpected.empty() ||
                                           !r.mismatched.empty())) {
      std::cout << "cairn: model.init_from " << *spec.init_from << ": " << r.summary() << "\n";
    }
  }
  ctx.model.module->to(resolve_device(spec.trainer.device()));
  // data.device that cannot be honoured: said at the key, with the data's sizes.
  if (!spec.data_node.empty()) {
    const std::string problem =
        data_device_problem(*ctx.data, resolve_device(spec.trainer.device()), spec.trainer.data_device());
    if (!problem.empty()) spec.data_node.front().fail("device", problem);
  }
  std::vector<std::shared_ptr<Metric>> metrics;
  for (size_t i = 0; i < spec.metrics.size(); ++i) {
    metrics.push_back(spec.metrics[i](ctx));
    for (size_t j = 0; j < i; ++j) {
      if (metrics[j]->name() == metrics[i]->name()) {
        spec.metric_nodes[i].fail("name", "metrics[" + std::to_string(j) + "] already logs '" + metrics[i]->name() + "'");
      }
    }
  }
  check_shapes(spec, ctx, *loss, metrics);
  check_monitors(spec, *ctx.data, metrics);
  ctx.optimizer = spec.optimizer(ctx);
  ctx.freeze = spec.freeze;
  // Callbacks are made before the scheduler: a finetuning callback names the
  // rate of the frozen parameters' group, which the schedule then includes.
  std::vector<std::shared_ptr<Callback>> callbacks;
  for (auto& b : spec.callbacks) callbacks.push_back(b(ctx));
  const Finetuning* finetuning = nullptr;
  for (const auto& cb : callbacks) {
    if (auto* f = dynamic_cast<const Finetuning*>(cb.get())) finetuning = f;
  }
  if (finetuning && !spec.freeze.empty() && finetuning->options().patterns != spec.freeze && !spec.trainer_node.empty()) {
    spec.trainer_node.front().fail("freeze", "the finetuning callback's patterns differ from these: it would unfreeze "
                                             "other parameters than the frozen ones (leave its patterns out to take these)");
  }
  const std::vector<std::string> patterns =
      !spec.freeze.empty() ? spec.freeze : finetuning ? finetuning->options().patterns : std::vector<std::string>{};
  if (!patterns.empty()) {
    const double lr = finetuning ? finetuning->options().lr : ctx.optimizer->param_groups().front().options().get_lr();
    std::vector<std::string> frozen;
    try {
      frozen = freeze(*ctx.model.module, *ctx.optimizer, patterns, lr);
    } catch (const std::invalid_argument& e) {
      if (!spec.freeze.empty() && !spec.trainer_node.empty()) spec.trainer_node.front().fail("freeze", e.what());
      throw;
    }
    if (!group || group->rank() == 0) {
      std::cout << "cairn: frozen " << frozen.size() << " parameter tensor(s) matching";
      for (const auto& p : patterns) std::cout << " '" << p << "'";
      if (finetuning) std::cout << "; the finetuning callback unfreezes them at epoch " << finetuning->options().unfreeze_at_epoch
                                << " (lr " << lr << ")";
      std::cout << "\n";
    }
  }
  auto trainer = std::make_unique<Trainer>(spec.trainer);
  trainer->set_model(ctx.model).set_data(ctx.data).set_optimizer(ctx.optimizer).set_process_group(std::move(group));
  trainer->set_loss(loss).set_metrics(metrics);
  if (spec.scheduler) trainer->set_scheduler((*spec.scheduler)(ctx));
  trainer->loop().set_run_dir(ctx.run_dir);
  resolve_output_defaults(spec, ctx.run_dir);
  trainer->loop().set_hyper_parameters(yaml_to_value(spec.resolved()));
  for (auto& cb : callbacks) trainer->add_callback(cb);
  return trainer;
}

}  // namespace cairn
