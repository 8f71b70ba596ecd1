// YAML names for cairn's callbacks.
#include "cairn/builtin_callbacks.h"
#include "cairn/callbacks.h"

#include "cairn/registry.h"

namespace cairn {

using CallbackPtr = std::shared_ptr<Callback>;

void register_builtin_callbacks(Registry& r) {
  r.add_callback("checkpoint", [](ConfigNode& c) -> Builder<CallbackPtr> {
    CheckpointOptions o;
    o.dirpath(c.get_string("dirpath", std::string("")));
    o.monitor(c.get_optional_string("monitor").value_or(""));
    o.mode(parse_mode(c.get_choice("mode", std::string("min"), {"min", "max"})));
    o.min_delta(c.get_double("min_delta", 0.0, 0.0));
    o.save_top_k(c.get_int("save_top_k", 1, -1));
    o.save_last(c.get_bool("save_last", true));
    o.every_n_train_steps(c.get_int("every_n_train_steps", 0, 0));
    o.every_n_epochs(c.get_int("every_n_epochs", 1, 0));
    o.train_time_interval(c.get_double("train_time_interval", 0.0, 0.0));
    o.filename(c.get_string("filename", std::string("")));
    o.save_weights_only(c.get_bool("save_weights_only", false));
    o.save_on_exception(c.get_bool("save_on_exception", true));
    o.on_error(c.get_choice("on_error", std::string("warn"), {"warn", "stop"}));
    o.async_save(c.get_bool("async", true));
    o.on_busy(c.get_choice("on_busy", std::string("wait"), {"wait", "skip"}));
    try {
      Checkpoint check(o);  // validates the filename template now, with the config's location
    } catch (const std::invalid_argument& e) {
      c.fail("filename", e.what());
    }
    return [o](BuildContext&) -> CallbackPtr { return std::make_shared<Checkpoint>(o); };
  });
  r.add_callback("early_stopping", [](ConfigNode& c) -> Builder<CallbackPtr> {
    EarlyStoppingOptions o;
    o.monitor(c.get_string("monitor", std::string("valid/loss")));
    o.mode(parse_mode(c.get_choice("mode", std::string("min"), {"min", "max"})));
    o.patience(c.get_int("patience", 3, 0));
    o.min_delta(c.get_double("min_delta", 0.0, 0.0));
    o.stopping_threshold(c.get_optional_double("stopping_threshold"));
    o.divergence_threshold(c.get_optional_double("divergence_threshold"));
    o.check_finite(c.get_bool("check_finite", true));
    return [o](BuildContext&) -> CallbackPtr { return std::make_shared<EarlyStopping>(o); };
  });
  r.add_callback("finetuning", [](ConfigNode& c) -> Builder<CallbackPtr> {
    FinetuningOptions o;
    o.unfreeze_at_epoch = c.get_int("unfreeze_at_epoch", 1, 0);
    o.patterns = c.get_names("patterns", std::vector<std::string>{});
    const std::optional<double> lr = c.get_optional_double("lr", 0.0);
    if (lr && !(*lr > 0)) c.fail("lr", "must be > 0");
    return [o, lr](BuildContext& ctx) mutable -> CallbackPtr {
      if (o.patterns.empty()) o.patterns = ctx.freeze;
      if (o.patterns.empty()) {
        throw std::invalid_argument("the finetuning callback has no patterns: set trainer.freeze (or its own patterns)");
      }
      // Lightning's BackboneFinetuning starts the backbone at a tenth of the rate.
      o.lr = lr ? *lr : ctx.optimizer->param_groups().front().options().get_lr() * 0.1;
      return std::make_shared<Finetuning>(o);
    };
  });
  r.add_callback("csv_logger", [](ConfigNode& c) -> Builder<CallbackPtr> {
    CsvLoggerOptions o;
    o.path = c.get_string("path", std::string(""));
    return [o](BuildContext&) -> CallbackPtr { return std::make_shared<CsvLogger>(o); };
  });
  r.add_callback("jsonl_logger", [](ConfigNode& c) -> Builder<CallbackPtr> {
    JsonlLoggerOptions o;
    o.path = c.get_string("path", std::string(""));
    return [o](BuildContext&) -> CallbackPtr { return std::make_shared<JsonlLogger>(o); };
  });
  r.add_callback("tensorboard", [](ConfigNode& c) -> Builder<CallbackPtr> {
    TensorBoardLoggerOptions o;
    o.dir = c.get_string("dir", std::string(""));
    return [o](BuildContext&) -> CallbackPtr { return std::make_shared<TensorBoardLogger>(o); };
  });
  r.add_callback("lr_monitor", [](ConfigNode& c) -> Builder<CallbackPtr> {
    LearningRateMonitorOptions o;
    o.logging_interval = c.get_choice("logging_interval", std::string("step"), {"step", "epoch"});
    return [o](BuildContext&) -> CallbackPtr { return std::make_shared<LearningRateMonitor>(o); };
  });
  r.add_callback("ema", [](ConfigNode& c) -> Builder<CallbackPtr> {
    EmaOptions o;
    o.decay = c.get_double("decay", 0.999, 0.0, 1.0, /*min_exclusive=*/true);
    if (o.decay >= 1.0) c.fail("decay", "must be in (0, 1), got 1");
    o.warmup = c.get_bool("warmup", false);
    o.every_n_steps = c.get_int("every_n_steps", 1, 1);
    o.validate_with = c.get_choice("validate_with", std::string("ema"), {"ema", "model"});
    return [o](BuildContext&) -> CallbackPtr { return std::make_shared<Ema>(o); };
  });
  r.add_callback("swa", [](ConfigNode& c) -> Builder<CallbackPtr> {
    SwaOptions o;
    if (c.has("swa_lrs") && c.node()["swa_lrs"].IsScalar()) {
      o.swa_lrs = {c.get_double("swa_lrs", std::nullopt, 0.0, 1e308, /*min_exclusive=*/true)};
    } else {
      o.swa_lrs = c.get_double_list("swa_lrs", std::nullopt, 0, 1e-300);
    }
    o.swa_epoch_start = c.get_double("swa_epoch_start", 0.8, 0.0, 1e9, /*min_exclusive=*/true);
    if (o.swa_epoch_start >= 1 && o.swa_epoch_start != static_cast<double>(static_cast<int64_t>(o.swa_epoch_start))) {
      c.fail("swa_epoch_start", "an epoch (an integer >= 1, 0-based) or a fraction of max_epochs in (0, 1)");
    }
    o.annealing_epochs = c.get_int("annealing_epochs", 10, 0);
    o.annealing_strategy = c.get_choice("annealing_strategy", std::string("cos"), {"cos", "linear"});
    ConfigNode where = c;
    return [o, where](BuildContext& ctx) -> CallbackPtr {
      auto swa = std::make_shared<Swa>(o);
      if (swa->start_epoch(ctx.max_epochs) >= ctx.max_epochs) {
        where.fail("swa_epoch_start", "averaging would start at epoch " + std::to_string(swa->start_epoch(ctx.max_epochs) + 1) +
                                          " (counting from 1), after the last of trainer.max_epochs = " + std::to_string(ctx.max_epochs));
      }
      return swa;
    };
  });
  r.add_callback("terminate_on_nan", [](ConfigNode&) -> Builder<CallbackPtr> {
    return [](BuildContext&) -> CallbackPtr { return std::make_shared<TerminateOnNaN>(); };
  });
  r.add_callback("timer", [](ConfigNode& c) -> Builder<CallbackPtr> {
    TimerOptions o;
    o.max_time = c.get_double("max_time", std::nullopt, 0.0, 1e308, true);
    return [o](BuildContext&) -> CallbackPtr { return std::make_shared<Timer>(o); };
  });
  r.add_callback("progress_bar", [](ConfigNode& c) -> Builder<CallbackPtr> {
    ProgressBarOptions o;
    o.log_every_n_steps = c.get_int("log_every_n_steps", 0, 0);
    o.model_summary = c.get_bool("model_summary", true);
    o.refresh_seconds = c.get_double("refresh_seconds", 0.1, 0.0);
    return [o](BuildContext&) -> CallbackPtr { return std::make_shared<ProgressBar>(o); };
  });
}

void register_builtin_callbacks() { register_builtin_callbacks(Registry::global()); }

}  // namespace cairn
