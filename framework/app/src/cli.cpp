#include "cairn/cli.h"

#include "cairn/callbacks/averaging.h"
#include "cairn/checkpoint_file.h"
#include "cairn/config_drift.h"
#include "cairn/datasets.h"
#include "cairn/distributed.h"
#include "cairn/experiment.h"
#include "cairn/json.h"
#include "cairn/launcher.h"
#include "cairn/loop.h"
#include "cairn/objectives.h"
#include "cairn/optim_state.h"
#include "cairn/report.h"
#include "cairn/run_checkpoint.h"
#include "cairn/run_dir.h"
#include "cairn/run_lock.h"
#include "cairn/signals.h"

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstdlib>
#include <ftw.h>
#include <sys/stat.h>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

namespace cairn {

namespace fs = std::filesystem;

namespace {
// The documented exit codes (docs/cli.md, the exit-code table).
constexpr int kExitOk = 0, kExitError = 1, kExitUsage = 2, kExitCheckpoint = 3, kExitLocked = 4,
              kExitNotSaved = 5, kExitPeer = 6;

const char* kUsage =
    "usage:\n"
    "  cairn fit --config FILE [--set dotted.key=value]... [--run-dir DIR]\n"
    "            [--resume auto|never|PATH] [--overwrite] [--allow-config-change]\n"
    "            [--nproc N [--max-restarts K]] [--fast-dev-run [N]]\n"
    "  cairn test     --config FILE [--ckpt best|last|PATH] [--run-dir DIR] [--input FILE] [--json]\n"
    "  cairn validate --config FILE [--ckpt best|last|PATH] [--run-dir DIR] [--input FILE] [--json]\n"
    "  cairn predict  --config FILE [--ckpt best|last|PATH] [--run-dir DIR]\n"
    "                 [--split test|valid|train | --input FILE.pt|FILE.csv] --out FILE.pt|FILE.csv\n"
    "  cairn print-config --config FILE [--set dotted.key=value]...\n"
    "  cairn inspect CHECKPOINT|RUN_DIR [--json]\n"
    "  cairn report RUN_DIR|CHECKPOINT [MORE RUNS...] [--out report.html]\n"
    "  cairn export (--config FILE | --run-dir DIR) [--ckpt best|last|PATH] --out model.pt\n"
    "               [--weights evaluated|model|ema|swa]\n"
    "  cairn --version\n"
    "\n"
    "fit trains the experiment in FILE. --resume auto (the default) continues from\n"
    "the newest checkpoint in the run directory that verifies; never starts fresh\n"
    "(refusing to overwrite an existing run's checkpoints without --overwrite;\n"
    "--overwrite alone means --resume never --overwrite);\n"
    "PATH resumes from that file. A resume whose config changes the model, the\n"
    "data, the sample order or the schedule is refused unless\n"
    "--allow-config-change is given. --nproc N trains with N processes on this\n"
    "machine (data parallel; data.batch_size is per process) and restarts them\n"
    "all from the last checkpoint up to K times when one dies. --fast-dev-run\n"
    "trains, validates and tests N batches (default 1) of each split in a\n"
    "scratch folder that is removed: a quick check of a config that writes\n"
    "nothing to the run directory.\n"
    "Exit codes: 0 done, 1 unexpected error,\n"
    "2 bad usage/config (or a refused config change), 3 unusable checkpoint,\n"
    "4 the run directory is in use by another process, 5 the final checkpoint\n"
    "could not be saved, 6 a process of a distributed run failed or did not\n"
    "answer within distributed.timeout, 128+N stopped by signal N (a checkpoint\n"
    "was saved).\n"
    "\n"
    "test, validate and predict use a checkpoint of the run (--ckpt; default:\n"
    "its best one when a checkpoint callback monitors a metric, else last).\n"
    "test and validate print the split's metrics, or those of the labelled\n"
    "examples of --input; predict writes the model's outputs for a split, or\n"
    "for the examples of --input (a torch.save dict with 'x' and optional 'y',\n"
    "or a CSV with the training file's feature columns, labels optional). None\n"
    "of them changes the run. export writes the weights a checkpoint's scores\n"
    "measured (--weights evaluated, the default: the EMA or SWA average when\n"
    "validation measured it; `cairn inspect` names them) as a plain state_dict\n"
    "for Python's load_state_dict. A subcommand refuses options it does not use.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string command;
  std::string config;
  std::vector<std::string> sets;
  std::string run_dir;
  std::string resume = "auto";
  bool resume_given = false;  //!< --resume was on the command line
  std::string input;          //!< predict: a file of examples instead of a split
  bool split_given = false;
  bool overwrite = false;
  bool allow_config_change = false;
  bool json = false;
  std::string out;
  std::string ckpt;
  std::string split = "test";
  std::string weights = "evaluated";  //!< export: which weight set
  bool help = false;
  std::vector<std::string> positional;
  int nproc = 1;
  int max_restarts = 0;
  int fast_dev_run = 0;  //!< fit --fast-dev-run [N]: N batches of each split, nothing kept
  std::vector<std::string> raw;  //!< argv[1..] without --nproc and --max-restarts (for the workers)
  std::vector<std::string> given;  //!< the options on the command line, by name ("--ckpt")
};

//! The options each subcommand takes; any other is refused (exit 2) rather
//! than accepted and ignored. "positional" stands for plain arguments.
const std::map<std::string, std::set<std::string>>& options_by_command() {
  static const std::map<std::string, std::set<std::string>> table{
      {"fit", {"--config", "--set", "--run-dir", "--resume", "--overwrite", "--allow-config-change", "--nproc",
               "--max-restarts", "--fast-dev-run"}},
      {"test", {"--config", "--set", "--run-dir", "--ckpt", "--input", "--json"}},
      {"validate", {"--config", "--set", "--run-dir", "--ckpt", "--input", "--json"}},
      {"predict", {"--config", "--set", "--run-dir", "--ckpt", "--split", "--input", "--out"}},
      {"print-config", {"--config", "--set", "--run-dir"}},
      {"inspect", {"positional", "--json"}},
      {"report", {"positional", "--out"}},
      {"export", {"--config", "--set", "--run-dir", "--ckpt", "--out", "--weights"}},
  };
  return table;
}

//! Refuses an option (or a plain argument) that `a.command` does not use,
//! naming the subcommands that take it.
void check_options(const Args& a) {
  const auto& table = options_by_command();
  const auto mine = table.find(a.command);
  if (mine == table.end()) throw UsageError("unknown command '" + a.command + "'");
  std::vector<std::string> given = a.given;
  if (!a.positional.empty()) given.push_back("positional");
  for (const auto& option : given) {
    if (mine->second.count(option)) continue;
    std::string takers;
    for (const auto& kv : table) {
      if (kv.second.count(option)) takers += (takers.empty() ? "" : ", ") + kv.first;
    }
    if (option == "positional") {
      throw UsageError(a.command + " takes no plain argument ('" + a.positional[0] + "'); inspect and report do");
    }
    throw UsageError(option + " is not an option of " + a.command + "; it goes with: " + takers);
  }
}

int parse_count(const std::string& flag, const std::string& text, int min) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < min || v > 4096) {
    throw UsageError(flag + " needs an integer >= " + std::to_string(min) + ", got '" + text + "'");
  }
  return static_cast<int>(v);
}

Args parse_args(int argc, char** argv) {
  Args a;
  if (argc < 2) throw UsageError("missing command");
  a.command = argv[1];
  a.raw.push_back(argv[1]);
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const int first = i;
    auto value = [&](const char* flag) -> std::string {
      const std::string prefix = std::string(flag) + "=";
      if (arg.compare(0, prefix.size(), prefix) == 0) return arg.substr(prefix.size());
      if (i + 1 >= argc) throw UsageError(std::string(flag) + " needs a value");
      return argv[++i];
    };
    auto is = [&](const char* flag) {  // an option with a value: --flag V or --flag=V
      const bool match = arg == flag || arg.compare(0, std::strlen(flag) + 1, std::string(flag) + "=") == 0;
      if (match) a.given.push_back(flag);
      return match;
    };
    auto switch_ = [&](const char* flag) {  // a switch: exactly --flag (--overwrite=false is unknown, not a yes)
      const bool match = arg == flag;
      if (match) a.given.push_back(flag);
      return match;
    };
    if (is("--config")) {
      a.config = value("--config");
    } else if (is("--set")) {
      a.sets.push_back(value("--set"));
    } else if (is("--run-dir")) {
      a.run_dir = value("--run-dir");
    } else if (is("--resume")) {
      a.resume = value("--resume");
      a.resume_given = true;
    } else if (is("--out")) {
      a.out = value("--out");
    } else if (is("--ckpt")) {
      a.ckpt = value("--ckpt");
    } else if (is("--weights")) {
      a.weights = value("--weights");
    } else if (is("--split")) {
      a.split = value("--split");
      a.split_given = true;
    } else if (is("--input")) {
      a.input = value("--input");
    } else if (arg == "--help" || arg == "-h") {
      a.help = true;
    } else if (is("--nproc")) {
      a.nproc = parse_count("--nproc", value("--nproc"), 1);
      continue;
    } else if (is("--max-restarts")) {
      a.max_restarts = parse_count("--max-restarts", value("--max-restarts"), 0);
      continue;
    } else if (switch_("--fast-dev-run") || is("--fast-dev-run")) {
      // An optional count: --fast-dev-run, --fast-dev-run 3, --fast-dev-run=3.
      const std::string prefix = "--fast-dev-run=";
      if (arg.compare(0, prefix.size(), prefix) == 0) {
        a.fast_dev_run = parse_count("--fast-dev-run", arg.substr(prefix.size()), 1);
      } else if (i + 1 < argc && argv[i + 1][0] >= '0' && argv[i + 1][0] <= '9') {
        a.fast_dev_run = parse_count("--fast-dev-run", argv[++i], 1);
      } else {
        a.fast_dev_run = 1;
      }
    } else if (switch_("--overwrite")) {
      a.overwrite = true;
    } else if (switch_("--allow-config-change")) {
      a.allow_config_change = true;
    } else if (switch_("--json")) {
      a.json = true;
    } else if (!arg.empty() && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else {
      a.positional.push_back(arg);
    }
    for (int k = first; k <= i; ++k) a.raw.push_back(argv[k]);
  }
  // --overwrite means "start over": it implies --resume never, and contradicts any other resume.
  if (a.overwrite && !a.resume_given) a.resume = "never";
  if (a.overwrite && a.resume != "never") {
    throw UsageError("--overwrite starts the run over (--resume never); it cannot go with --resume " + a.resume);
  }
  return a;
}

// ---------------------------------------------------------------------------
int cmd_print_config(const Args& a) {
  if (a.config.empty()) throw UsageError("print-config needs --config FILE");
  ExperimentSpec spec = parse_experiment(a.config, a.sets);
  resolve_output_defaults(spec, a.run_dir.empty() ? spec.run_dir : a.run_dir);
  std::cout << yaml_to_string(spec.resolved());
  return kExitOk;
}

//! Writes `text` to `path` through a temporary file and a rename, so a failed
//! write leaves the previous file whole. Returns "" or the error, with the
//! errno's text.
std::string write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return "cannot create " + tmp + ": " + std::strerror(errno);
  const size_t n = std::fwrite(text.data(), 1, text.size(), f);
  int err = n == text.size() ? 0 : errno;
  if (std::fflush(f) != 0 && err == 0) err = errno;
  if (std::fclose(f) != 0 && err == 0) err = errno;
  if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err == 0) return "";
  std::remove(tmp.c_str());
  return "cannot write " + path + ": " + std::strerror(err);
}

int cmd_inspect(const Args& a) {
  if (a.positional.size() != 1) throw UsageError("inspect needs exactly one checkpoint, checkpoint folder or run directory");
  CheckpointChoice choice = open_checkpoint(a.positional[0]);  // throws CheckpointError -> exit 3
  for (const auto& r : choice.rejected) std::cerr << "cairn: warning: skipping " << r.second << "\n";
  const std::string path = choice.path;
  const Value c = std::move(choice.checkpoint);
  const run_checkpoint::View view(c, path);
  // What each monitoring callback says about its metric (its `summary`).
  const std::vector<run_checkpoint::MonitorSummary> monitors = view.monitors();
  const std::string name = view.name();
  const bool finished = view.finished();
  const auto series = view.series();
  // Read before anything is printed: a file that lacks them is exit 3, not half a report.
  const int64_t epoch = view.epoch(), global_step = view.global_step(), batch = view.batch_in_epoch();
  const int64_t format = view.format_version();
  const std::string kind = view.evaluated_kind(), evaluated = view.describe_evaluated();
  if (a.json) {
    std::ostringstream o;
    o << "{\"path\": " << json::quote(path) << ", \"verified\": true, \"name\": " << json::quote(name)
      << ", \"epoch\": " << epoch << ", \"global_step\": " << global_step
      << ", \"batch_in_epoch\": " << batch << ", \"finished\": " << (finished ? "true" : "false")
      << ", \"format_version\": " << format << ", \"weights\": {\"kind\": " << json::quote(kind)
      << ", \"key\": " << json::quote(view.evaluated_with()) << "}, \"monitors\": [";
    for (size_t i = 0; i < monitors.size(); ++i) {
      const auto& m = monitors[i];
      o << (i ? ", " : "") << "{\"callback\": " << json::quote(m.callback) << ", \"monitor\": " << json::quote(m.monitor)
        << ", \"mode\": " << json::quote(m.mode) << ", \"best\": " << (m.best ? json::number(*m.best) : "null")
        << ", \"best_path\": " << json::quote(m.best_path) << "}";
    }
    o << "], \"metrics\": {";
    for (size_t i = 0; i < series.size(); ++i) {
      const auto& values = series[i].value;
      o << (i ? ", " : "") << json::quote(series[i].name) << ": {\"length\": " << values.size()
        << ", \"last\": " << (values.size() ? json::number(values.back()) : "null") << "}";
    }
    o << "}}";
    std::cout << o.str() << "\n";
    return kExitOk;
  }
  std::cout << "checkpoint   " << path << " (verified)\n";
  if (!name.empty()) std::cout << "experiment   " << name << "\n";
  std::cout << "position     " << describe_position(epoch, batch, global_step)
            << (finished ? ", run finished" : "") << "\n";
  if (view.weights_only()) std::cout << "contents     weights only (cannot resume a run)\n";
  std::cout << "weights      scores measure " << evaluated << "; cairn export writes them\n";
  for (const auto& m : monitors) {
    std::cout << "best         " << m.monitor << " (" << m.mode << ") = "
              << (m.best ? json::number(*m.best) : std::string("none yet"));
    if (!m.best_path.empty()) std::cout << "  [" << fs::path(m.best_path).filename().string() << "]";
    std::cout << "\n";
  }
  std::cout << "metrics      " << series.size() << "\n";
  for (const auto& one : series) {
    const auto& values = one.value;
    char buf[200];
    std::snprintf(buf, sizeof buf, "  %-22s %6zu values  last %s\n", one.name.c_str(),
                  values.size(), values.size() ? json::number(values.back()).c_str() : "-");
    std::cout << buf;
  }
  return kExitOk;
}

int cmd_report(const Args& a) {
  if (a.positional.empty()) throw UsageError("report needs one or more run directories or checkpoints");
  std::vector<ReportRun> runs;
  std::vector<std::string> sources;
  for (const std::string& target : a.positional) {
    CheckpointChoice choice = open_checkpoint(target);  // throws CheckpointError -> exit 3
    for (const auto& r : choice.rejected) std::cerr << "cairn: warning: skipping " << r.second << "\n";
    std::string label = fs::path(target).lexically_normal().filename().string();
    if (label.empty() || label == ".") label = fs::path(target).lexically_normal().parent_path().filename().string();
    const std::string name = run_checkpoint::View(choice.checkpoint, choice.path).name();
    if (a.positional.size() == 1 && !name.empty()) label = name;
    // Two runs of one sweep often share a basename: fall back to the path given.
    for (const auto& r : runs) {
      if (r.label == label) label = target;
    }
    sources.push_back(choice.path);
    runs.push_back({label, std::move(choice.checkpoint)});
  }
  const std::string title = runs.size() == 1 ? runs[0].label : "cairn report: " + std::to_string(runs.size()) + " runs";
  std::error_code ec;
  const std::string first = a.positional[0];
  const std::string out = !a.out.empty() ? a.out
                          : (runs.size() == 1 && fs::is_directory(first, ec)) ? (fs::path(first) / "report.html").string()
                                                                               : "report.html";
  if (const std::string error = write_text_file(out, render_report(runs, title)); !error.empty()) throw UsageError(error);
  std::cout << "cairn: wrote " << out << " from ";
  for (size_t i = 0; i < sources.size(); ++i) std::cout << (i ? ", " : "") << sources[i];
  std::cout << "\n";
  return kExitOk;
}

//! The run of `spec` in `run_dir`, from the config alone (the launcher and
//! the evaluating commands build no checkpoint callback): its checkpoint
//! folder is the first checkpoint callback's `dirpath`, else
//! <run_dir>/checkpoints, as RunDir::of a built trainer says.
RunDir run_of(const ExperimentSpec& spec, const std::string& run_dir) {
  const YAML::Node cbs = spec.resolved()["callbacks"];
  if (cbs && cbs.IsSequence()) {
    for (const auto& c : cbs) {
      if (c["name"] && c["name"].as<std::string>() == "checkpoint" && c["dirpath"] && c["dirpath"].IsScalar() &&
          !c["dirpath"].as<std::string>().empty()) {
        return RunDir(run_dir, c["dirpath"].as<std::string>());
      }
    }
  }
  return RunDir(run_dir);
}

//! Refuses a resume whose config changes what the checkpoint means (exit 2),
//! unless --allow-config-change; safe changes are listed as notes.
void check_config_drift(Loop& loop, const Value& saved, const Value& current, const std::string& path,
                        const std::string& config_file, bool allow, int64_t saved_world, int64_t world,
                        int64_t saved_global_batch) {
  auto changes = diff_configs(saved, current);
  // The number of processes is part of the run: with data.batch_size per
  // process, it sets the global batch, and with it the sample order, the
  // steps per epoch and every step-based schedule.
  if (saved_world != world) {
    int64_t batch = 0;
    if (const Value* d = current.find("data")) {
      if (const Value* b = d->find("batch_size")) batch = b->to_int();
    }
    const int64_t now_global = batch * world;
    ConfigChange c;
    c.key = "processes";
    c.old_value = std::to_string(saved_world);
    c.new_value = std::to_string(world);
    if (saved_global_batch > 0 && now_global != saved_global_batch) {
      c.safe = false;
      c.why = "the global batch (data.batch_size x processes) changes from " + std::to_string(saved_global_batch) +
              " to " + std::to_string(now_global) + ": another sample order, another number of steps per epoch and "
              "another LR schedule; keep it with --set data.batch_size=" +
              ((saved_global_batch % world == 0) ? std::to_string(saved_global_batch / world)
                                                 : "<global batch / processes>");
    } else {
      c.why = "the global batch stays " + std::to_string(now_global);
    }
    changes.push_back(c);
  }
  for (auto& c : changes) {
    // The same global batch split over another number of processes continues
    // the same sample sequence.
    if (c.key != "data.batch_size" || saved_world == world) continue;
    try {
      if (std::stoll(c.old_value) * saved_world == std::stoll(c.new_value) * world) {
        c.safe = true;
        c.why = "the global batch stays " + std::to_string(std::stoll(c.new_value) * world) + " (" +
                std::to_string(saved_world) + " -> " + std::to_string(world) + " processes)";
      }
    } catch (const std::exception&) {
    }
  }
  std::vector<const ConfigChange*> unsafe;
  for (const auto& c : changes) {
    if (!c.safe) unsafe.push_back(&c);
  }
  for (const auto& c : changes) {
    if (c.safe && loop.is_rank_zero()) {
      std::cerr << "cairn: note: config change on resume: " << c.line() << (c.why.empty() ? "" : " (" + c.why + ")") << "\n";
    }
  }
  if (unsafe.empty()) return;
  if (!allow) {
    std::ostringstream os;
    os << "the config differs from the one " << path << " was trained with, in keys that change what it means:";
    for (const auto* c : unsafe) os << "\n  " << c->line() << "   (" << c->why << ")";
    os << "\nrevert them, train in a new --run-dir, or pass --allow-config-change to continue anyway"
          " (the change is recorded in the checkpoint)";
    throw ConfigError(config_file, "", os.str());
  }
  for (const auto* c : unsafe) {
    std::cerr << "cairn: warning: config change accepted (--allow-config-change): " << c->line() << " (" << c->why
              << ")\n";
    loop.add_resume_warning("config change accepted with --allow-config-change: " + c->line());
  }
}

int launch(const Args& a, const ExperimentSpec& spec) {
  if (DistEnv::from_environment().distributed()) {
    throw UsageError("--nproc starts the processes of a job itself; this process is already rank " +
                     std::to_string(DistEnv::from_environment().rank) + " of one (RANK/WORLD_SIZE are set)");
  }
  // Checked before any worker starts: NCCL wants a GPU per local rank.
  DistEnv job;
  job.world_size = job.local_world_size = a.nproc;
  choose_backend(spec.trainer.dist_backend(), resolve_device(spec.trainer.device()), job);
  LaunchOptions o;
  o.nproc = a.nproc;
  o.max_restarts = a.max_restarts;
  o.program = fs::read_symlink("/proc/self/exe").string();
  o.args = a.raw;
  // A restart replays the command's intent: until this job has written a
  // checkpoint, the original arguments (its --resume source, its
  // --overwrite); after that, a resume from the job's own checkpoints, and
  // never --overwrite again (it would delete them).
  const RunDir run = run_of(spec, a.run_dir.empty() ? spec.run_dir : a.run_dir);
  const auto started = fs::file_time_type::clock::now();
  std::vector<std::string> continue_args;
  for (size_t i = 0; i < a.raw.size(); ++i) {
    const std::string& x = a.raw[i];
    if (x == "--overwrite") continue;
    if (x == "--resume") {
      ++i;
      continue;
    }
    if (x.rfind("--resume=", 0) == 0) continue;
    continue_args.push_back(x);
  }
  o.restart = [run, started, continue_args, original = a.raw] {
    // The newest checkpoint of the folder by position (the store's order,
    // headers only): when this job wrote it, the restart continues the job
    // (its resume then takes choose()'s file), and never passes --overwrite
    // again. Weights-only files count: a restart must not delete them either.
    try {
      const auto files = list_checkpoints(run.checkpoints);
      std::error_code ec;
      if (!files.empty()) {
        const auto t = fs::last_write_time(files.front(), ec);
        if (!ec && t >= started) return LaunchOptions::Restart{continue_args, "from the job's last checkpoint"};
      }
    } catch (const std::exception& e) {
      return LaunchOptions::Restart{continue_args, std::string("from the job's checkpoints (") + e.what() + ")"};
    }
    return LaunchOptions::Restart{original, "with the original arguments (the job has no checkpoint yet)"};
  };
  return launch_workers(o);
}

// ---------------------------------------------------------------------------
// After training: test, validate, predict. They read the run, never write it.

//! The checkpoint `choice` (--ckpt) names for a run of `spec` in `run_dir`:
//! choose()'s rule ("" is auto: best when the run keeps one, else last).
//! Names what exists when the choice cannot be met (exit 2).
std::string choose_ckpt(const ExperimentSpec& spec, const std::string& run_dir, const std::string& choice) {
  const CheckpointChoice c = choose(run_of(spec, run_dir), choice, Purpose::evaluate);
  if (!c.found) throw UsageError("--ckpt " + c.why);
  return c.path;
}

TensorDataset read_prediction_input(const std::string& path, const DataModule& data, const Loss& loss);

//! A field of a CSV row, quoted where it must be (a file name with a comma or quote).
std::string csv_field(const std::string& v) {
  if (v.find_first_of(",\"\n\r") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

//! --input for data read from disk: images (a file, a folder, or class folders
//! when `labelled`) for an image folder's run, a folder of shards for a shard
//! run; else the tensor file or CSV (read_prediction_input).
std::shared_ptr<const Dataset> prediction_input(const std::string& path, const DataModule& data, const Loss& loss,
                                                bool labelled = false) {
  try {
    if (const auto* images = dynamic_cast<const ImageFolderData*>(&data)) {
      if (labelled) return std::make_shared<ImageFolder>(path, images->options().channels, images->images().classes());
      return std::make_shared<ImageFiles>(path, images->options().channels);
    }
    if (dynamic_cast<const ShardData*>(&data)) {
      auto shards = std::make_shared<ShardDataset>(path, !loss.class_targets());
      if (shards->x_shape() != data.input_shape && !data.train_transform) {
        throw UsageError("--input " + path + ": its shards hold examples of another shape than the training data's");
      }
      if (labelled && !shards->has_targets()) {
        throw UsageError("--input " + path + " has no targets (y): evaluation measures metrics against them");
      }
      return shards;
    }
  } catch (const DataError& e) {
    throw UsageError(std::string("--input: ") + e.what());
  }
  return std::make_shared<TensorDataset>(read_prediction_input(path, data, loss));
}

//! The trainer of `spec` for evaluation: no callbacks (nothing written), one process.
std::unique_ptr<Trainer> evaluation_trainer(ExperimentSpec& spec, const std::string& run_dir) {
  spec.callbacks.clear();
  spec.callback_nodes.clear();  // their monitors are not this evaluation's business
  return build_trainer(spec, run_dir);
}

int cmd_evaluate(const Args& a, const std::string& split) {
  if (a.config.empty()) throw UsageError(a.command + " needs --config FILE");
  ExperimentSpec spec = parse_experiment(a.config, a.sets);
  const std::string run_dir = a.run_dir.empty() ? spec.run_dir : a.run_dir;
  const std::string path = choose_ckpt(spec, run_dir, a.ckpt);  // "": best, else last
  std::unique_ptr<Trainer> trainer = evaluation_trainer(spec, run_dir);
  if (!a.input.empty()) {
    // A labelled file of one's own, measured as the split would be.
    DataModule& data = trainer->data();
    data.setup();
    std::shared_ptr<const Dataset> input = prediction_input(a.input, data, *trainer->loss(), /*labelled=*/true);
    if (const auto* t = dynamic_cast<const TensorDataset*>(input.get())) {
      if (!t->y.defined()) {
        throw UsageError("--input " + a.input + " has no labels ('y', or the label columns of a CSV): " + a.command +
                         " measures metrics against them; predict writes outputs for unlabelled examples");
      }
      (split == "test" ? data.test : data.valid) = *t;
      (split == "test" ? data.test_set : data.valid_set) = nullptr;
    } else {
      (split == "test" ? data.test_set : data.valid_set) = input;
    }
  }
  std::map<std::string, double> metrics;
  try {
    metrics = trainer->evaluate(split, path);
  } catch (const CheckpointMismatch& e) {
    throw UsageError(std::string("the checkpoint does not match the config's model: ") + e.what());
  }
  // Which weights those are (the checkpoint's rule, as inspect says it).
  std::string kind = "model", evaluated = "the weights the config builds (no checkpoint)";
  if (!path.empty()) {
    ReadOptions header;
    header.header_only = true;
    const Value head = read_checkpoint(path, header);
    const run_checkpoint::View view(head, path);
    kind = view.evaluated_kind();
    evaluated = view.describe_evaluated();
  }
  if (a.json) {
    std::ostringstream o;
    o << "{\"checkpoint\": " << json::quote(path) << ", \"weights\": " << json::quote(kind)
      << ", \"split\": " << json::quote(split);
    if (!a.input.empty()) o << ", \"input\": " << json::quote(a.input);
    o << ", \"metrics\": {";
    size_t i = 0;
    for (const auto& kv : metrics) o << (i++ ? ", " : "") << json::quote(kv.first) << ": " << json::number(kv.second);
    o << "}}";
    std::cout << o.str() << "\n";
    return kExitOk;
  }
  std::cout << "checkpoint   " << path << "\n";
  std::cout << "weights      " << evaluated << "\n";
  if (!a.input.empty()) std::cout << "input        " << a.input << "\n";
  for (const auto& kv : metrics) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%-12s %.6g\n", kv.first.c_str(), kv.second);
    std::cout << buf;
  }
  return kExitOk;
}

//! predict --input: examples shaped like the training data's, from a
//! torch.save dict ('x', optional 'y') or a CSV with the training columns
//! (the label columns optional). Anything else is a usage error (exit 2)
//! naming the key or column and both shapes.
TensorDataset read_prediction_input(const std::string& path, const DataModule& data, const Loss& loss) {
  const std::string ext = fs::path(path).extension().string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw UsageError("--input " + path + ": no such file");
  TensorDataset ds;
  if (ext == ".csv") {
    std::vector<std::string> labels, features;
    if (const auto* csv = dynamic_cast<const CsvData*>(&data)) {
      labels = csv->options().labels;
      features = csv->feature_columns();
    }
    try {
      ds = read_csv_examples(path, labels, !loss.class_targets(), features);
    } catch (const DataError& e) {
      throw UsageError(std::string("--input: ") + e.what());
    }
  } else if (ext == ".pt") {
    ReadOptions ro;
    ro.require_checksum = false;
    Value v;
    try {
      v = read_checkpoint(path, ro);
    } catch (const CheckpointError& e) {
      throw UsageError(std::string("--input: cannot read ") + path + ": " + e.what());
    }
    const Value* x = v.is_dict() ? v.find("x") : nullptr;
    if (!x || !x->is_tensor()) {
      throw UsageError("--input " + path + ": expected a dict with a tensor 'x' (the examples, first dimension N) "
                       "and optionally 'y', as torch.save({'x': X}, path) writes it");
    }
    ds.x = x->to_tensor().to(torch::kFloat32).contiguous();
    if (const Value* y = v.find("y"); y && y->is_tensor()) {
      ds.y = y->to_tensor().to(loss.class_targets() ? torch::kLong : torch::kFloat32).contiguous();
    }
  } else {
    throw UsageError("--input " + path + ": the file must end in .pt or .csv");
  }
  const auto shape = ds.x.sizes().slice(1).vec();
  if (shape != data.input_shape) {
    std::ostringstream os;
    os << "--input " << path << ": " << (ext == ".csv" ? "its feature columns give" : "'x' holds") << " examples shaped "
       << ds.x.sizes().slice(1) << " but the model was trained on examples shaped " << c10::IntArrayRef(data.input_shape);
    throw UsageError(os.str());
  }
  if (ds.y.defined() && ds.y.size(0) != ds.x.size(0)) {
    throw UsageError("--input " + path + ": 'y' has " + std::to_string(ds.y.size(0)) + " rows but 'x' has " +
                     std::to_string(ds.x.size(0)));
  }
  if (ds.empty()) throw UsageError("--input " + path + " holds no examples");
  return ds;
}

int cmd_export(const Args& a) {
  if (a.out.empty()) throw UsageError("export needs --out FILE (a torch.save file of the weights)");
  const std::set<std::string> kinds{"evaluated", "model", "ema", "swa"};
  if (!kinds.count(a.weights)) throw UsageError("--weights must be evaluated, model, ema or swa, not '" + a.weights + "'");
  std::string path;
  if (!a.ckpt.empty() && a.ckpt != "best" && a.ckpt != "last" && a.ckpt != "auto") {
    path = a.ckpt;  // a file of one's own: no run needed
    std::error_code ec;
    if (!fs::exists(path, ec)) throw CheckpointError("checkpoint " + path + " does not exist");
  } else if (!a.config.empty()) {
    ExperimentSpec spec = parse_experiment(a.config, a.sets);
    path = choose_ckpt(spec, a.run_dir.empty() ? spec.run_dir : a.run_dir, a.ckpt);
  } else if (!a.run_dir.empty()) {
    const CheckpointChoice c = choose(RunDir(a.run_dir), a.ckpt, Purpose::evaluate);
    if (!c.found) throw UsageError("--ckpt " + c.why);
    path = c.path;
  } else {
    throw UsageError("export needs --ckpt PATH, or --config FILE / --run-dir DIR to choose best or last");
  }
  const Value c = read_checkpoint(path);
  const run_checkpoint::View view(c, path);
  Value weights;
  std::string what;
  if (a.weights == "evaluated") {
    weights = view.evaluated_weights();
    what = view.describe_evaluated();
  } else {
    const std::string key = a.weights == "model" ? "state_dict" : a.weights + "_state_dict";
    if (!view.holds(key)) throw UsageError(path + " holds no " + key + " (--weights " + a.weights + ")");
    weights = view.weights(key);
    what = a.weights == "model" ? "the model's state_dict" : "the " + a.weights + " average (" + key + ")";
    if (a.weights == "swa" && view.evaluated_kind() != "swa") {
      std::cerr << "cairn: warning: SWA's average was not yet applied in " << path
                << ": its parameters are laid over the trained model's buffers (BatchNorm statistics are the "
                   "trained weights'; recompute them, as update_bn does, before using a model with BatchNorm)\n";
    }
  }
  if (!weights.is_dict()) throw CheckpointError(path + ": the weights are not a dict of tensors");
  write_checkpoint(a.out, weights);
  std::cout << "cairn: wrote " << weights.size() << " tensors of " << what << " from " << path << " to " << a.out
            << " (torch.load + load_state_dict)\n";
  return kExitOk;
}

int cmd_predict(const Args& a) {
  if (a.config.empty()) throw UsageError("predict needs --config FILE");
  if (a.out.empty()) throw UsageError("predict needs --out FILE.pt or FILE.csv");
  const std::string ext = fs::path(a.out).extension().string();
  if (ext != ".pt" && ext != ".csv") throw UsageError("--out " + a.out + ": the file must end in .pt or .csv");
  if (a.split != "test" && a.split != "valid" && a.split != "train") {
    throw UsageError("--split must be test, valid or train, got '" + a.split + "'");
  }
  ExperimentSpec spec = parse_experiment(a.config, a.sets);
  const std::string run_dir = a.run_dir.empty() ? spec.run_dir : a.run_dir;
  const std::string path = choose_ckpt(spec, run_dir, a.ckpt);
  if (!a.input.empty() && a.split_given) throw UsageError("predict takes --split or --input, not both");
  std::unique_ptr<Trainer> trainer = evaluation_trainer(spec, run_dir);
  DataModule& data = trainer->data();
  std::shared_ptr<const Dataset> input = !a.input.empty() ? prediction_input(a.input, data, *trainer->loss()) : nullptr;
  const Dataset& ds = input ? *input : data.split(a.split == "test" || a.split == "valid" ? a.split : "train");
  const std::string what = !a.input.empty() ? a.input : "the " + a.split + " split";
  if (ds.empty()) throw UsageError("--split " + a.split + ": the data has no " + a.split + " split");
  const auto* tensors = dynamic_cast<const TensorDataset*>(&ds);
  const auto* files = dynamic_cast<const ImageFiles*>(&ds);
  at::Tensor outputs;
  try {
    outputs = trainer->predict(ds, path);
  } catch (const CheckpointMismatch& e) {
    throw UsageError(std::string("the checkpoint does not match the config's model: ") + e.what());
  } catch (const c10::Error& e) {
    std::ostringstream os;
    os << "the model cannot take the inputs of " << what << " (examples shaped ";
    if (tensors) {
      os << tensors->x.sizes().slice(1);
    } else {
      Generator g(0);
      os << ds.get(0, g).x.sizes();
    }
    os << "): " << short_error(e.what());
    throw UsageError(os.str());
  }
  const at::Tensor targets = tensors && tensors->y.defined() ? tensors->y : at::Tensor();
  // Predictions as the loss defines them: the class (argmax) for cross_entropy
  // and nll, each label's decision (logit > 0) for bce_with_logits; a
  // regression's outputs are its predictions.
  const std::shared_ptr<Loss>& loss = trainer->loss();
  const bool classes = outputs.dim() == 2 && loss && loss->class_targets();
  const bool labels = loss && loss->name() == "bce_with_logits";
  at::Tensor predictions = classes ? outputs.argmax(1) : labels ? outputs.gt(0).to(torch::kLong) : at::Tensor();
  if (ext == ".pt") {
    Value d = Value::dict();
    d.set("outputs", outputs.contiguous());
    if (predictions.defined()) d.set("predictions", predictions.contiguous());
    if (targets.defined()) d.set("targets", targets.to(torch::kCPU).contiguous());
    if (files) {
      Value names = Value::list();
      for (const auto& f : files->files()) names.push_back(Value(f));
      d.set("files", names);
    }
    d.set("checkpoint", path);
    d.set(a.input.empty() ? "split" : "input", a.input.empty() ? a.split : a.input);
    write_checkpoint(a.out, d);
  } else {
    std::ofstream f(a.out);
    if (!f) throw UsageError("cannot write " + a.out);
    const int64_t n = outputs.size(0);
    const at::Tensor flat = outputs.reshape({n, -1}).to(torch::kDouble);
    const at::Tensor pred = predictions.defined() ? predictions.reshape({n, -1}).to(torch::kLong).contiguous() : at::Tensor();
    const at::Tensor y = targets.defined() ? targets.reshape({n, -1}).to(torch::kCPU).to(torch::kDouble).contiguous() : at::Tensor();
    auto columns = [&](const char* name, int64_t count) {
      for (int64_t j = 0; j < count; ++j) f << "," << name << (count > 1 ? "_" + std::to_string(j) : std::string());
    };
    f << "index";
    if (files) f << ",file";
    if (pred.defined()) columns("prediction", pred.size(1));
    for (int64_t j = 0; j < flat.size(1); ++j) f << ",output_" << j;
    if (y.defined()) columns("target", y.size(1));
    f << "\n";
    f.precision(9);
    const auto out = flat.accessor<double, 2>();
    for (int64_t i = 0; i < n; ++i) {
      f << i;
      if (files) f << "," << csv_field(files->files()[static_cast<size_t>(i)]);
      if (pred.defined()) {
        for (int64_t j = 0; j < pred.size(1); ++j) f << "," << pred.data_ptr<int64_t>()[i * pred.size(1) + j];
      }
      for (int64_t j = 0; j < flat.size(1); ++j) f << "," << out[i][j];
      if (y.defined()) {
        for (int64_t j = 0; j < y.size(1); ++j) f << "," << y.data_ptr<double>()[i * y.size(1) + j];
      }
      f << "\n";
    }
    if (!f) throw UsageError("cannot write " + a.out);
  }
  std::cout << "cairn: wrote " << outputs.size(0) << " predictions of " << what << " to " << a.out
            << " (checkpoint " << path << ")\n";
  return kExitOk;
}

//! Which weights a fit's validation, checkpoint scores and test measure, when
//! weight averaging makes that a question ("" when it is the trained weights).
std::string evaluated_rule(const Loop& loop) {
  const Ema* ema = nullptr;
  const Swa* swa = nullptr;
  for (const auto& cb : loop.callbacks()) {
    if (auto* e = dynamic_cast<const Ema*>(cb.get())) ema = e;
    if (auto* w = dynamic_cast<const Swa*>(cb.get())) swa = w;
  }
  std::string out;
  if (ema && ema->validates_average()) {
    out = "the model is the EMA average: validation, every checkpoint's score, the test and `cairn export` use "
          "ema_state_dict (the optimizer trains the weights in state_dict)";
    if (swa) out += "; SWA's average replaces the trained weights at the last epoch and the EMA keeps following them";
  } else if (swa) {
    out = "the model is the trained weights until the last epoch; then SWA's average replaces them before that "
          "epoch's validation, so the last scores, last.ckpt and `cairn export` are the average's (a run that "
          "stops early keeps its trained weights)";
  }
  return out;
}

//! Removes a folder and what it holds (nftw: std::filesystem::remove_all is
//! avoided, as elsewhere in cairn, for the torch wheel's sake).
void remove_folder(const std::string& dir) {
  ::nftw(dir.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
         FTW_DEPTH | FTW_PHYS);
}

//! cairn fit --fast-dev-run [N]: one epoch of N batches per split in a
//! scratch run folder, removed at the end; a callback that writes elsewhere
//! (an explicit dirpath/path/dir) is refused rather than allowed to write.
int fast_dev_run(const Args& a) {
  if (a.nproc > 1) throw UsageError("--fast-dev-run runs one process (drop --nproc)");
  if (a.resume_given || a.overwrite || !a.run_dir.empty()) {
    throw UsageError("--fast-dev-run keeps nothing: --resume, --overwrite and --run-dir do not apply");
  }
  ExperimentSpec spec = parse_experiment(a.config, a.sets);
  const YAML::Node cbs = spec.doc.resolved["callbacks"];
  for (size_t i = 0; cbs && cbs.IsSequence() && i < cbs.size(); ++i) {
    for (const char* key : {"dirpath", "path", "dir"}) {
      const YAML::Node v = cbs[i][key];
      if (v && v.IsScalar() && !v.Scalar().empty()) {
        throw UsageError("--fast-dev-run writes nothing, but callbacks[" + std::to_string(i) + "]." + key + " is set (" +
                         v.Scalar() + "); remove it to try the config");
      }
    }
  }
  const int64_t bs = spec.doc.resolved["data"]["batch_size"] ? spec.doc.resolved["data"]["batch_size"].as<int64_t>() : 64;
  const DataLimit n{true, false, static_cast<double>(a.fast_dev_run * bs)};
  spec.limit_train = spec.limit_valid = spec.limit_test = n;
  spec.trainer.max_epochs(1);
  spec.trainer.max_steps(0);
  spec.trainer.val_check_interval(0);  // N batches an epoch: validation at its end
  std::string scratch = (fs::temp_directory_path() / "cairn-fast-dev-run-XXXXXX").string();
  if (!::mkdtemp(scratch.data())) throw std::runtime_error("cannot make a scratch folder: " + std::string(std::strerror(errno)));
  std::cout << "cairn: fast dev run: " << a.fast_dev_run << " batch(es) of " << bs
            << " examples from each split, one epoch, in " << scratch << " (removed at the end; nothing is written to "
            << spec.run_dir << ")\n";
  int rc = kExitOk;
  try {
    signals::install();
    std::unique_ptr<Trainer> trainer = build_trainer(spec, scratch);
    const FitResult r = trainer->fit();
    if (r.interrupted) rc = 128 + r.signal;
    std::string line;
    for (const auto& name : trainer->loop().metrics().names()) {
      if (name.find("_step") != std::string::npos) continue;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.4f", trainer->loop().metrics().last(name).value_or(0.0));
      line += (line.empty() ? "" : ", ") + name + " " + buf;
    }
    std::cout << "cairn: fast dev run passed: " << line << "\n";
  } catch (...) {
    remove_folder(scratch);
    throw;
  }
  remove_folder(scratch);
  return rc;
}

//! What fit's test measured, in words: a best file says it; the final
//! weights are an EMA's average when one validates (its test_begin swaps it
//! in), SWA's once it was applied.
std::string tested_words(Trainer& trainer) {
  const std::string& t = trainer.tested();
  if (t != "the final weights") return t;
  for (const auto& cb : trainer.loop().callbacks()) {
    if (auto* e = dynamic_cast<const Ema*>(cb.get()); e && e->validates_average()) return t + ": the EMA average";
  }
  for (const auto& cb : trainer.loop().callbacks()) {
    if (auto* s = dynamic_cast<const Swa*>(cb.get()); s && s->applied()) return t + ": the SWA average";
  }
  return t;
}

int cmd_fit(const Args& a) {
  if (a.config.empty()) throw UsageError("fit needs --config FILE");
  if (a.fast_dev_run > 0) return fast_dev_run(a);
  if (a.resume.empty()) throw UsageError("--resume needs auto, never or a checkpoint path");
  ExperimentSpec spec = parse_experiment(a.config, a.sets);
  if (a.nproc > 1) return launch(a, spec);
  const std::string run_dir = a.run_dir.empty() ? spec.run_dir : a.run_dir;
  const DistEnv env = DistEnv::from_environment();
  const bool rank0 = env.rank == 0;
  // One owner per run: refuse at once, before loading data or touching a file.
  // (In a job, rank 0 owns it for all ranks.)
  std::shared_ptr<RunLock> lock = rank0 ? RunLock::acquire(run_dir) : nullptr;
  signals::install();
  std::shared_ptr<ProcessGroup> group;
  if (env.distributed()) {
    group = ProcessGroup::join(
        env, std::chrono::milliseconds(static_cast<int64_t>(spec.trainer.dist_timeout() * 1000)),
        spec.trainer.dist_backend(), device_for_rank(resolve_device(spec.trainer.device()), env));
  }
  std::unique_ptr<Trainer> trainer = build_trainer(spec, run_dir, group);
  if (group) trainer->loop().set_process_group(group);
  RunDir run = RunDir::of(trainer->loop());
  if (run.checkpoints.empty()) run = RunDir(run_dir);  // no checkpoint callback: the folder a later one would use
  const std::string& ckpt_dir = run.checkpoints;
  std::error_code ec;

  const Value current = yaml_to_value(spec.resolved());
  trainer->loop().set_allow_unclaimed_state(a.allow_config_change);
  trainer->loop().set_resume_check([&](const Value& ckpt, const std::string& path) {
    const run_checkpoint::View v(ckpt, path);
    const Value* hp = v.config();
    const int64_t saved_world = v.world_size() > 0 ? v.world_size() : 1;
    if (hp && hp->is_dict() && hp->size() > 0) {
      check_config_drift(trainer->loop(), *hp, current, path, a.config, a.allow_config_change, saved_world,
                         env.world_size, v.global_batch_size());
    }
  });
  // The checkpoint folder may lie outside the run directory (a callback's
  // dirpath): own it too before anything in it is read or removed, so that a
  // refused run never touches a live run's files.
  std::shared_ptr<RunLock> ckpt_lock = rank0 ? RunLock::acquire(ckpt_dir) : nullptr;
  if (a.resume == "never") {
    const auto existing = list_checkpoints(ckpt_dir);
    if (group) group->barrier();  // every rank has looked before rank 0 removes anything
    if (!existing.empty()) {
      if (!a.overwrite) {
        throw UsageError("the run directory " + run_dir + " already has checkpoints (" + existing.front() +
                         "); pass --resume auto to continue it, --overwrite to start over, or --run-dir to use another folder");
      }
      if (rank0) {
        for (const auto& f : existing) fs::remove(f, ec);
        // What was derived from the old run goes with it.
        fs::remove(run.report(), ec);
      }
    }
  } else if (a.resume == "auto") {
    // Weights-only files cannot resume a run: starting over would silently
    // replace the trained run (every rank looks, so all refuse together).
    if (holds_weights_only(ckpt_dir)) {
      throw UsageError("the run directory " + run_dir + " holds weights-only checkpoints (save_weights_only) in " +
                       ckpt_dir + ", which cannot resume a run. Evaluate them with cairn test/validate/predict; "
                       "to train it again from scratch pass --resume never --overwrite, or use a new --run-dir");
    }
    trainer->resume_from(ckpt_dir);
  } else {
    if (!fs::exists(a.resume, ec)) throw CheckpointError("checkpoint " + a.resume + " does not exist");
    trainer->resume_from(a.resume);
    // One timeline per folder: once the resume (and its drift check) passed,
    // the checkpoints of the future this resume abandons leave the folder.
    trainer->loop().on(Event::fit_begin, [&](Loop&) {
      if (!rank0 || !trainer->resume_info().resumed) return;
      std::string into;
      const auto moved = abandon_after(ckpt_dir, a.resume, &into);
      if (!moved.empty()) {
        std::cout << "cairn: resuming from " << a.resume << " abandons the later timeline of " << ckpt_dir << ": "
                  << moved.size() << " checkpoint(s) moved to " << into << " (no resume or --ckpt choice picks them)\n";
      }
    }, Order::producer);
  }

  // config.yaml is rewritten only once the resume (and its drift check) passed.
  const std::string config_path = run.config();
  const std::string resolved = yaml_to_string(spec.resolved());
  trainer->loop().on(Event::fit_begin, [&](Loop& loop) {
    if (!rank0) return;
    if (const std::string error = write_text_file(config_path, resolved); !error.empty()) {
      // Informative only: every checkpoint holds the resolved config (hyper_parameters).
      std::cerr << "cairn: warning: " << error << " (the resolved config is in every checkpoint's hyper_parameters too)\n";
    }
    const ResumeInfo& ri = trainer->resume_info();
    if (!ri.resumed) return;
    std::ostringstream lrs;
    bool zero = false;
    for (auto* o : loop.optimizers()) {
      for (auto& g : o->param_groups()) {
        const double lr = g.options().get_lr();
        lrs << (lrs.tellp() > 0 ? ", " : "") << lr;
        zero = zero || lr == 0.0;
      }
    }
    std::cout << "cairn: resumed from " << ri.path << " " << describe_position(ri.epoch, ri.batch_in_epoch, ri.global_step)
              << "; learning rate " << lrs.str() << "\n";
    if (zero) {
      std::cerr << "cairn: warning: the run continues at learning rate 0 (its schedule has ended); the weights will "
                   "not change. Set scheduler.total_steps (or a new schedule with --allow-config-change) to train on\n";
    }
  }, Order::producer);
  if (rank0) {
    std::cout << "cairn: run '" << spec.name << "' in " << run_dir << " (threads " << torch::get_num_threads()
              << ", device " << device_for_rank(resolve_device(spec.trainer.device()), env).str();
    if (group) std::cout << ", " << env.world_size << " processes, global batch " << trainer->data().batch_size * env.world_size;
    std::cout << ")\n";
  }
  // The one rule for "the model": which weights validation, the scores in
  // checkpoints and the test measure (docs/checkpoints.md).
  const std::string rule = evaluated_rule(trainer->loop());
  if (rank0 && !rule.empty()) std::cout << "cairn: " << rule << "\n";
  const FitResult r = trainer->fit();
  const LoopState& st = trainer->loop().state();
  const std::string where = describe_position(st.resume_epoch(), st.resume_batch(), r.global_step);
  if (!r.save_error.empty()) {
    std::cerr << "cairn: the run is NOT saved where it stopped (" << where << "): " << r.save_error << "\n";
    return kExitNotSaved;
  }
  if (r.already_finished) {
    std::cout << "cairn: this run already finished" << (r.stop_reason.empty() ? "" : " (" + r.stop_reason + ")")
              << "; nothing to do\n";
  }
  auto& metrics = trainer->loop().metrics();
  if (r.interrupted && r.signal == 0) {
    std::cout << "cairn: stopped " << where << " (" << st.stop.reason
              << "); checkpoint saved, run the same command to continue\n";
    return kExitOk;
  }
  if (r.interrupted) {
    std::cout << "cairn: interrupted " << where << "; checkpoint saved, run the same command to resume\n";
    std::cout.flush();
    return 128 + r.signal;
  }
  if (auto acc = metrics.last("test/acc")) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4f", *acc);
    std::cout << "cairn: finished; test accuracy " << buf
              << (trainer->tested().empty() ? "" : " (" + tested_words(*trainer) + ")") << "\n";
  } else {
    // Not a classification: the test split's own metrics (test/mae, test/r2, ...).
    std::string line;
    for (const auto& name : metrics.names()) {
      if (name.rfind("test/", 0) != 0) continue;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.4f", metrics.last(name).value_or(0.0));
      line += (line.empty() ? "; " : ", ") + name + " " + buf;
    }
    std::cout << "cairn: finished" << line << (trainer->tested().empty() || line.empty() ? "" : " (" + tested_words(*trainer) + ")")
              << "\n";
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
    if (a.help) {
      std::cout << kUsage;
      return kExitOk;
    }
    check_options(a);
    if (a.command == "fit") return cmd_fit(a);
    if (a.command == "test") return cmd_evaluate(a, "test");
    if (a.command == "validate") return cmd_evaluate(a, "valid");
    if (a.command == "predict") return cmd_predict(a);
    if (a.command == "print-config") return cmd_print_config(a);
    if (a.command == "inspect") return cmd_inspect(a);
    if (a.command == "report") return cmd_report(a);
    if (a.command == "export") return cmd_export(a);
    throw UsageError("unknown command '" + a.command + "'");
  } catch (const UsageError& e) {
    std::cerr << "cairn: " << e.what() << "\n\n" << kUsage;
    return kExitUsage;
  } catch (const RunLocked& e) {
    std::cerr << "cairn: " << e.what() << "\n";
    return kExitLocked;
  } catch (const DistributedError& e) {
    std::cerr << "cairn: distributed error: " << e.what() << "\n";
    return kExitPeer;
  } catch (const ConfigError& e) {
    std::cerr << "cairn: config error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const BadExample& e) {
    std::cerr << "cairn: corrupt data: " << e.what()
              << " (data.skip_bad: true skips such examples, counted and named once)\n";
    return kExitCheckpoint;
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
