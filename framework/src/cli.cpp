#include "cairn/cli.h"

#include "cairn/checkpoint_file.h"
#include "cairn/experiment.h"
#include "cairn/loop.h"
#include "cairn/report.h"
#include "cairn/signals.h"

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace cairn {

namespace fs = std::filesystem;

namespace {
constexpr int kExitOk = 0, kExitError = 1, kExitUsage = 2, kExitCheckpoint = 3;

const char* kUsage =
    "usage:\n"
    "  cairn fit --config FILE [--set dotted.key=value]... [--run-dir DIR]\n"
    "            [--resume auto|never|PATH] [--overwrite]\n"
    "  cairn print-config --config FILE [--set dotted.key=value]...\n"
    "  cairn inspect CHECKPOINT [--json]\n"
    "  cairn report RUN_DIR|CHECKPOINT [--out report.html]\n"
    "  cairn --version\n"
    "\n"
    "fit trains the experiment in FILE. --resume auto (the default) continues from\n"
    "the newest checkpoint in the run directory that verifies; never starts fresh\n"
    "(refusing to overwrite an existing run's checkpoints without --overwrite);\n"
    "PATH resumes from that file. Exit codes: 0 done, 2 bad usage/config,\n"
    "3 unusable checkpoint, 128+N stopped by signal N (a checkpoint was saved).\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string command;
  std::string config;
  std::vector<std::string> sets;
  std::string run_dir;
  std::string resume = "auto";
  bool overwrite = false;
  bool json = false;
  std::string out;
  std::vector<std::string> positional;
};

Args parse_args(int argc, char** argv) {
  Args a;
  if (argc < 2) throw UsageError("missing command");
  a.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> std::string {
      const std::string prefix = std::string(flag) + "=";
      if (arg.compare(0, prefix.size(), prefix) == 0) return arg.substr(prefix.size());
      if (i + 1 >= argc) throw UsageError(std::string(flag) + " needs a value");
      return argv[++i];
    };
    auto is = [&](const char* flag) {
      return arg == flag || arg.compare(0, std::strlen(flag) + 1, std::string(flag) + "=") == 0;
    };
    if (is("--config")) {
      a.config = value("--config");
    } else if (is("--set")) {
      a.sets.push_back(value("--set"));
    } else if (is("--run-dir")) {
      a.run_dir = value("--run-dir");
    } else if (is("--resume")) {
      a.resume = value("--resume");
    } else if (is("--out")) {
      a.out = value("--out");
    } else if (arg == "--overwrite") {
      a.overwrite = true;
    } else if (arg == "--json") {
      a.json = true;
    } else if (!arg.empty() && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else {
      a.positional.push_back(arg);
    }
  }
  return a;
}

std::string json_escape(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          o += buf;
        } else {
          o += c;
        }
    }
  }
  return o + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

// ---------------------------------------------------------------------------
int cmd_print_config(const Args& a) {
  if (a.config.empty()) throw UsageError("print-config needs --config FILE");
  ExperimentSpec spec = parse_experiment(a.config, a.sets);
  std::cout << yaml_to_string(spec.resolved());
  return kExitOk;
}

int cmd_inspect(const Args& a) {
  if (a.positional.size() != 1) throw UsageError("inspect needs exactly one checkpoint path");
  const std::string path = a.positional[0];
  Value c = read_checkpoint(path);  // throws CheckpointError -> exit 3
  struct Monitor {
    std::string key, monitor, mode;
    std::optional<double> best;
    std::string best_path;
  };
  std::vector<Monitor> monitors;
  if (const Value* cbs = c.find("callbacks")) {
    for (size_t i = 0; i < cbs->keys().size(); ++i) {
      const Value& s = cbs->values()[i];
      if (!s.is_dict() || !s.contains("monitor")) continue;
      Monitor m;
      m.key = cbs->keys()[i].to_string();
      m.monitor = s.at("monitor").is_string() ? s.at("monitor").to_string() : "";
      m.mode = s.contains("mode") ? s.at("mode").to_string() : "";
      const Value* b = s.find("best_model_score");
      if (!b) b = s.find("best");
      if (b && b->is_number()) m.best = b->to_double();
      if (const Value* p = s.find("best_model_path")) m.best_path = p->to_string();
      if (!m.monitor.empty()) monitors.push_back(m);
    }
  }
  std::string name;
  if (const Value* hp = c.find("hyper_parameters")) {
    if (hp->is_dict() && hp->contains("name") && hp->at("name").is_string()) name = hp->at("name").to_string();
  }
  const Value* loop = c.find("loop");
  const bool finished = loop && loop->contains("finished") && loop->at("finished").to_bool();
  const Value empty = Value::dict();
  const Value& metrics = c.contains("metrics") ? c.at("metrics") : empty;
  if (a.json) {
    std::ostringstream o;
    o << "{\"path\": " << json_escape(path) << ", \"verified\": true, \"name\": " << json_escape(name)
      << ", \"epoch\": " << c.at("epoch").to_int() << ", \"global_step\": " << c.at("global_step").to_int()
      << ", \"batch_in_epoch\": " << c.at("batch_in_epoch").to_int() << ", \"finished\": " << (finished ? "true" : "false")
      << ", \"format_version\": " << c.at("format_version").to_int() << ", \"monitors\": [";
    for (size_t i = 0; i < monitors.size(); ++i) {
      const auto& m = monitors[i];
      o << (i ? ", " : "") << "{\"callback\": " << json_escape(m.key) << ", \"monitor\": " << json_escape(m.monitor)
        << ", \"mode\": " << json_escape(m.mode) << ", \"best\": " << (m.best ? json_number(*m.best) : "null")
        << ", \"best_path\": " << json_escape(m.best_path) << "}";
    }
    o << "], \"metrics\": {";
    for (size_t i = 0; i < metrics.keys().size(); ++i) {
      const Value& values = metrics.values()[i].at("value");
      o << (i ? ", " : "") << json_escape(metrics.keys()[i].to_string()) << ": {\"length\": " << values.size()
        << ", \"last\": " << (values.size() ? json_number(values.items().back().to_double()) : "null") << "}";
    }
    o << "}}";
    std::cout << o.str() << "\n";
    return kExitOk;
  }
  std::cout << "checkpoint   " << path << " (verified)\n";
  if (!name.empty()) std::cout << "experiment   " << name << "\n";
  std::cout << "position     epoch " << c.at("epoch").to_int() << ", batch " << c.at("batch_in_epoch").to_int()
            << ", global step " << c.at("global_step").to_int() << (finished ? " (run finished)" : "") << "\n";
  if (c.contains("weights_only")) std::cout << "contents     weights only (cannot resume a run)\n";
  for (const auto& m : monitors) {
    std::cout << "best         " << m.monitor << " (" << m.mode << ") = "
              << (m.best ? json_number(*m.best) : std::string("none yet"));
    if (!m.best_path.empty()) std::cout << "  [" << fs::path(m.best_path).filename().string() << "]";
    std::cout << "\n";
  }
  std::cout << "metrics      " << metrics.keys().size() << "\n";
  for (size_t i = 0; i < metrics.keys().size(); ++i) {
    const Value& values = metrics.values()[i].at("value");
    char buf[200];
    std::snprintf(buf, sizeof buf, "  %-22s %6zu values  last %s\n", metrics.keys()[i].to_string().c_str(),
                  values.size(), values.size() ? json_number(values.items().back().to_double()).c_str() : "-");
    std::cout << buf;
  }
  return kExitOk;
}

int cmd_report(const Args& a) {
  if (a.positional.size() != 1) throw UsageError("report needs a run directory or a checkpoint");
  const std::string target = a.positional[0];
  std::error_code ec;
  Value c;
  std::string source = target;
  if (fs::is_directory(target, ec)) {
    std::string dir = (fs::path(target) / "checkpoints").string();
    if (!fs::is_directory(dir, ec)) dir = target;
    const auto files = list_checkpoints(dir);
    if (files.empty()) throw CheckpointError("no checkpoint in " + dir);
    bool found = false;
    for (const auto& f : files) {
      try {
        c = read_checkpoint(f);
        source = f;
        found = true;
        break;
      } catch (const CheckpointError& e) {
        std::cerr << "cairn: warning: skipping " << e.what() << "\n";
      }
    }
    if (!found) throw CheckpointError("no usable checkpoint in " + dir);
  } else {
    c = read_checkpoint(target);
  }
  std::string title = "cairn report";
  if (const Value* hp = c.find("hyper_parameters")) {
    if (hp->is_dict() && hp->contains("name") && hp->at("name").is_string()) title = hp->at("name").to_string();
  }
  const std::string out = a.out.empty()
                              ? (fs::is_directory(target, ec) ? (fs::path(target) / "report.html").string() : "report.html")
                              : a.out;
  std::ofstream f(out);
  if (!f) throw UsageError("cannot write " + out);
  f << render_report(c, title);
  std::cout << "cairn: wrote " << out << " from " << source << "\n";
  return kExitOk;
}

std::string checkpoint_dir_of(Trainer& t) {
  for (const auto& cb : t.loop().callbacks()) {
    const std::string d = cb->checkpoint_dir(t.loop());
    if (!d.empty()) return d;
  }
  return (fs::path(t.loop().run_dir()) / "checkpoints").string();
}

int cmd_fit(const Args& a) {
  if (a.config.empty()) throw UsageError("fit needs --config FILE");
  if (a.resume.empty()) throw UsageError("--resume needs auto, never or a checkpoint path");
  ExperimentSpec spec = parse_experiment(a.config, a.sets);
  const std::string run_dir = a.run_dir.empty() ? spec.run_dir : a.run_dir;
  signals::install();
  std::unique_ptr<Trainer> trainer = build_trainer(spec, run_dir);
  const std::string ckpt_dir = checkpoint_dir_of(*trainer);
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw UsageError("cannot create the run directory " + run_dir + ": " + ec.message());

  if (a.resume == "never") {
    const auto existing = list_checkpoints(ckpt_dir);
    if (!existing.empty()) {
      if (!a.overwrite) {
        throw UsageError("the run directory " + run_dir + " already has checkpoints (" + existing.front() +
                         "); pass --resume auto to continue it, --overwrite to start over, or --run-dir to use another folder");
      }
      for (const auto& f : existing) fs::remove(f, ec);
    }
  } else if (a.resume == "auto") {
    trainer->resume_from(ckpt_dir);
  } else {
    if (!fs::exists(a.resume, ec)) throw CheckpointError("checkpoint " + a.resume + " does not exist");
    trainer->resume_from(a.resume);
  }

  // The resolved config: warn when a resumed run's config changed.
  const std::string config_path = (fs::path(run_dir) / "config.yaml").string();
  const std::string resolved = yaml_to_string(spec.resolved());
  {
    std::ifstream old(config_path);
    std::stringstream prev;
    prev << old.rdbuf();
    if (old && a.resume != "never" && !prev.str().empty() && prev.str() != resolved) {
      std::cerr << "cairn: note: the config differs from the one in " << config_path << "; writing the new one\n";
    }
    std::ofstream out(config_path);
    out << resolved;
  }

  trainer->loop().on(Event::fit_begin, [&trainer](Loop&) {
    const ResumeInfo& ri = trainer->resume_info();
    if (ri.resumed) {
      std::cout << "cairn: resumed from " << ri.path << " at epoch " << ri.epoch << ", batch " << ri.batch_in_epoch
                << ", step " << ri.global_step << "\n";
    }
  }, Order::producer);
  std::cout << "cairn: run '" << spec.name << "' in " << run_dir << " (threads " << torch::get_num_threads()
            << ", device " << trainer->options().device() << ")\n";
  const FitResult r = trainer->fit();
  if (r.already_finished) {
    std::cout << "cairn: this run already finished" << (r.stop_reason.empty() ? "" : " (" + r.stop_reason + ")")
              << "; nothing to do\n";
  }
  auto& metrics = trainer->loop().metrics();
  if (r.interrupted && r.signal == 0) {
    std::cout << "cairn: stopped at epoch " << r.epochs_completed << ", step " << r.global_step << " ("
              << trainer->loop().state().stop.reason << "); checkpoint saved, run the same command to continue\n";
    return kExitOk;
  }
  if (r.interrupted) {
    std::cout << "cairn: interrupted at epoch " << r.epochs_completed << ", step " << r.global_step
              << "; checkpoint saved, run the same command to resume\n";
    std::cout.flush();
    return 128 + r.signal;
  }
  if (auto acc = metrics.last("test/acc")) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4f", *acc);
    std::cout << "cairn: finished; test accuracy " << buf << "\n";
  } else {
    std::cout << "cairn: finished\n";
  }
  return kExitOk;
}
}  // namespace

int cli_main(int argc, char** argv) {
  try {
    if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
                      std::string(argv[1]) == "help")) {
      std::cout << kUsage;
      return kExitOk;
    }
    if (argc >= 2 && std::string(argv[1]) == "--version") {
      std::cout << "cairn " << CAIRN_VERSION << "\n";
      return kExitOk;
    }
    const Args a = parse_args(argc, argv);
    if (a.command == "fit") return cmd_fit(a);
    if (a.command == "print-config") return cmd_print_config(a);
    if (a.command == "inspect") return cmd_inspect(a);
    if (a.command == "report") return cmd_report(a);
    throw UsageError("unknown command '" + a.command + "'");
  } catch (const UsageError& e) {
    std::cerr << "cairn: " << e.what() << "\n\n" << kUsage;
    return kExitUsage;
  } catch (const ConfigError& e) {
    std::cerr << "cairn: config error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const DataError& e) {
    std::cerr << "cairn: data error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const CheckpointMismatch& e) {
    std::cerr << "cairn: checkpoint does not match this run: " << e.what() << "\n";
    return kExitCheckpoint;
  } catch (const CheckpointError& e) {
    std::cerr << "cairn: " << e.what() << "\n";
    return kExitCheckpoint;
  } catch (const std::invalid_argument& e) {
    std::cerr << "cairn: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "cairn: error: " << e.what() << "\n";
    return kExitError;
  }
}

}  // namespace cairn
