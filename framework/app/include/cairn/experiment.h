// Experiment: a YAML config turned into a ready Trainer.
//
// parse_experiment() reads and checks the whole config (nothing is loaded or
// built, so it is fast and needs no data); build_trainer() then loads the data
// and builds the model, optimizer, scheduler and callbacks through the Registry.
//
// Sections: name, seed, run, data, model, loss, metrics, optimizer, scheduler,
// trainer, distributed, callbacks (see docs/yaml.md for every key). Relative paths
// of input files (data, model, init_from) are resolved from the config
// file's folder; run.dir, an output, from the current directory. Unless the config lists them, a
// `checkpoint`, a `csv_logger` and a `progress_bar` callback are added
// (trainer.enable_checkpointing / enable_progress_bar turn those off).
#pragma once

#include "cairn/config.h"
#include "cairn/finetune.h"
#include "cairn/registry.h"
#include "cairn/trainer.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cairn {

//! data.limit_train|limit_valid|limit_test: a count of examples (an integer)
//! or a fraction of the split (a number with a point, in (0, 1]).
struct DataLimit {
  bool set = false;
  bool fraction = false;
  double value = 0;
};

struct ExperimentSpec {
  ConfigDocument doc;
  std::string name;
  uint64_t seed = 0;
  std::string run_dir;
  TrainerOptions trainer;
  std::optional<std::string> init_from;  //!< model.init_from: weights to start from
  WeightsOptions init_options;           //!< model.init_from's strict, exclude, rename
  std::vector<std::string> freeze;       //!< trainer.freeze: parameter-name regexes frozen from the start
  Builder<std::shared_ptr<DataModule>> data;
  DataLimit limit_train, limit_valid, limit_test;  //!< for every data set (fashion_mnist reads its own train/test counts)
  //! data.transforms (training examples) and data.valid_transforms (the
  //! others; unset: the transforms that draw no random numbers); data.skip_bad.
  std::vector<Builder<std::shared_ptr<const Transform>>> transforms, valid_transforms;
  bool valid_transforms_set = false;
  bool skip_bad = false;
  Builder<Model> model;
  Builder<std::shared_ptr<torch::optim::Optimizer>> optimizer;
  std::optional<Builder<std::shared_ptr<Scheduler>>> scheduler;
  std::vector<Builder<std::shared_ptr<Callback>>> callbacks;
  Builder<std::shared_ptr<Loss>> loss;
  bool float_targets = false;  //!< a loss other than cross_entropy/nll (no default metric)
  std::vector<Builder<std::shared_ptr<Metric>>> metrics;
  //! Where the loss, each metric and the data were configured (for errors found at build).
  std::vector<ConfigNode> loss_node, metric_nodes, data_node;
  //! The callbacks' and the scheduler's nodes (where a monitor is reported).
  std::vector<ConfigNode> callback_nodes, scheduler_node, trainer_node, init_node;
  //! The resolved config (defaults filled in), as written to <run dir>/config.yaml.
  const YAML::Node& resolved() const { return doc.resolved; }
};

//! Throws ConfigError naming file, line, column and key.
ExperimentSpec parse_experiment(const std::string& file, const std::vector<std::string>& overrides = {},
                                const Registry& registry = Registry::global());

//! Writes the real defaults of output paths into the resolved config (what
//! print-config shows and the run's config.yaml records): the checkpoint
//! callbacks' dirpath (<run_dir>/checkpoints) and filename template, the
//! loggers' files, the progress bar's line interval. build_trainer() calls it
//! with the run directory it uses.
void resolve_output_defaults(ExperimentSpec& spec, const std::string& run_dir);

//! Seeds torch, loads the data and builds everything. `run_dir` overrides
//! spec.run_dir when not empty. With `group`, the trainer is one rank of that
//! data-parallel job (step-based schedules count global batches).
std::unique_ptr<Trainer> build_trainer(ExperimentSpec& spec, const std::string& run_dir = "",
                                       std::shared_ptr<ProcessGroup> group = nullptr);

}  // namespace cairn
