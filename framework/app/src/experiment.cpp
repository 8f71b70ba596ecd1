#include "cairn/experiment.h"

#include "cairn/callback.h"
#include "cairn/callbacks/checkpoint.h"
#include "cairn/distributed.h"
#include "cairn/loop.h"
#include "cairn/objectives.h"
#include "cairn/schedulers.h"
#include "cairn/trainer.h"

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>

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
    spec.data_node = {data};
    spec.data = registry.data.parse(data);
  });

  attempt([&] {
    ConfigNode model = top.get_map("model", true);
    spec.init_from = model.get_optional_path("init_from");
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
    } else {
      top.get_optional_string("scheduler");
    }
  });

  bool enable_checkpointing = true, enable_progress = true;
  attempt([&] {
    ConfigNode trainer = top.get_map("trainer");
    spec.trainer.max_epochs(trainer.get_int("max_epochs", 10, 1));
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
//! The model's output for two training examples, against the loss and each
//! metric: a mismatch is a config error at the loss's (or metric's) key,
//! naming both shapes, before anything trains. A model that cannot take the
//! data at all is explained by the first training step instead.
void check_shapes(ExperimentSpec& spec, BuildContext& ctx, const Loss& loss,
                  const std::vector<std::shared_ptr<Metric>>& metrics) {
  const TensorDataset& train = ctx.data->train;
  if (train.empty()) return;
  const Batch probe = train.slice(0, std::min<int64_t>(2, train.size()));
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
  ctx.data = spec.data(ctx);
  ctx.data->setup();
  // Step-interval schedules count optimizer steps: one per accumulation cycle
  // (the epoch's last, possibly short, cycle steps too).
  const int64_t global_batch = ctx.data->batch_size * (group ? group->size() : 1);
  const int64_t batches = (ctx.data->train.size() + global_batch - 1) / global_batch;
  const int64_t accumulate = std::max<int64_t>(1, spec.trainer.accumulate_grad_batches());
  ctx.steps_per_epoch = (batches + accumulate - 1) / accumulate;
  ctx.model = spec.model(ctx);
  if (spec.init_from) load_weights(*ctx.model.module, *spec.init_from, true);
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
  ctx.optimizer = spec.optimizer(ctx);
  auto trainer = std::make_unique<Trainer>(spec.trainer);
  trainer->set_model(ctx.model).set_data(ctx.data).set_optimizer(ctx.optimizer).set_process_group(std::move(group));
  trainer->set_loss(loss).set_metrics(metrics);
  if (spec.scheduler) trainer->set_scheduler((*spec.scheduler)(ctx));
  trainer->loop().set_run_dir(ctx.run_dir);
  resolve_output_defaults(spec, ctx.run_dir);
  trainer->loop().set_hyper_parameters(yaml_to_value(spec.resolved()));
  for (auto& b : spec.callbacks) trainer->add_callback(b(ctx));
  return trainer;
}

}  // namespace cairn
