#include "harness.h"


#include "../../framework/core/src/checksums.h"
#include "../../framework/core/src/zip_writer.h"
#include <cairn/datasets.h>
#include <cairn/models.h>
#include "cairn/builtin_callbacks.h"
#include "cairn/checkpoint_file.h"
#include "cairn/config.h"
#include "cairn/experiment.h"
#include "cairn/loop.h"
#include "cairn/models.h"
#include "cairn/registry.h"
#include "cairn/trainer.h"

#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <ftw.h>
#include <unistd.h>
#include <vector>
#include <sys/stat.h>

namespace cairn {
namespace fuzz {

namespace {
//! One scratch file per process (the readers take paths).
std::string scratch(const char* suffix) {
  const char* dir = std::getenv("CAIRN_FUZZ_TMP");
  std::string d = dir ? dir : (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  return d + "/cairn-fuzz-" + std::to_string(::getpid()) + suffix;
}

void write(const std::string& path, const void* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) throw std::runtime_error("fuzz harness: cannot write " + path);
}

Registry& registry() {
  static std::once_flag once;
  std::call_once(once, [] { register_builtin_callbacks(); });
  return Registry::global();
}

//! The file a mode stands for, written to `path`.
void materialise(const uint8_t* data, size_t size, const std::string& path, ReadOptions* ro) {
  const uint8_t mode = size ? data[0] : 0;
  const std::string body(reinterpret_cast<const char*>(data) + (size ? 1 : 0), size ? size - 1 : 0);
  ro->header_only = (mode & 0x80) != 0;
  switch (mode & 3) {
    case 0: ro->require_checksum = true; write(path, body.data(), body.size()); break;
    case 1: ro->require_checksum = false; write(path, body.data(), body.size()); break;
    case 2: {
      ro->require_checksum = true;
      const std::string z = wrap_pickle(body, true);
      write(path, z.data(), z.size());
      break;
    }
    default: {
      ro->require_checksum = false;
      const std::string z = wrap_pickle(body, false);
      write(path, z.data(), z.size());
      break;
    }
  }
}
}  // namespace

std::string wrap_pickle(const std::string& pickle, bool with_checksums) {
  std::string out;
  zip::ZipWriter w([&out](const void* p, size_t n) {
    out.append(static_cast<const char*>(p), n);
    return true;
  });
  checksums::Builder sums;
  w.add("data.pkl", pickle);
  sums.add("data.pkl", pickle.data(), pickle.size());
  static const std::string order = "little";
  w.add("byteorder", order);
  sums.add("byteorder", order.data(), order.size());
  // Storage records of a fixed size whose contents are 0, 1, 2, ... bytes.
  std::string storage(4096, '\0');
  for (size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<char>(i * 7);
  for (int k = 0; k < 16; ++k) {
    const std::string name = "data/" + std::to_string(k);
    w.add(name, storage);
    sums.add(name, storage.data(), storage.size());
  }
  static const std::string version = "3\n";
  sums.add("version", version.data(), version.size());
  if (with_checksums) w.add(checksums::kRecord, sums.text());
  w.add("version", version);
  w.finish();
  return out;
}

Result checkpoint(const uint8_t* data, size_t size) {
  const std::string path = scratch(".ckpt");
  ReadOptions ro;
  materialise(data, size, path, &ro);
  try {
    Value v = read_checkpoint(path, ro);
    (void)v.repr();  // walk the whole tree once
    return {Outcome::accepted, ""};
  } catch (const CheckpointError& e) {
    return {Outcome::rejected, e.what()};
  }
}

Result weights(const uint8_t* data, size_t size) {
  const std::string path = scratch(".pt");
  ReadOptions ro;
  materialise(data, size, path, &ro);
  Result r{Outcome::accepted, ""};
  for (bool strict : {false, true}) {
    // Names as in a Python nn.Sequential(Flatten, Linear(4,3), ReLU, Linear(3,2)).
    auto model = make_mlp(MlpOptions{{4}, {3}, 2, 0.0});
    try {
      load_weights(*model, path, strict);
    } catch (const CheckpointError& e) {
      return {Outcome::rejected, e.what()};
    } catch (const CheckpointMismatch& e) {
      r = {Outcome::rejected, e.what()};
    }
  }
  return r;
}

Result config(const uint8_t* data, size_t size) {
  const std::string path = scratch(".yaml");
  write(path, data, size);
  try {
    ExperimentSpec spec = parse_experiment(path, {}, registry());
    (void)yaml_to_string(spec.doc.resolved);
    (void)yaml_to_value(spec.doc.root).repr();
    return {Outcome::accepted, ""};
  } catch (const ConfigError& e) {
    return {Outcome::rejected, e.what()};
  }
}

Result set_args(const uint8_t* data, size_t size) {
  static const char* kBase =
      "name: fuzz\nseed: 1\nrun: {dir: /nonexistent/fuzz}\n"
      "data: {name: synthetic, train_size: 64, batch_size: 8}\n"
      "model: {name: mlp, hidden: [8, 4], dropout: 0.1}\n"
      "optimizer: {name: sgd, lr: 0.1, momentum: 0.9}\n"
      "scheduler: {name: cosine, warmup_steps: 2}\n"
      "trainer: {max_epochs: 2, log_every_n_steps: 1}\n"
      "callbacks:\n"
      "  - {name: checkpoint, monitor: valid/loss, save_top_k: 2}\n"
      "  - {name: early_stopping, monitor: valid/loss, patience: 3}\n";
  const std::string path = scratch("-base.yaml");
  static std::once_flag once;
  std::call_once(once, [&] { write(path, kBase, std::strlen(kBase)); });
  std::vector<std::string> args;
  std::string cur;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == '\n') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += static_cast<char>(data[i]);
    }
  }
  if (!cur.empty()) args.push_back(cur);
  try {
    ExperimentSpec spec = parse_experiment(path, args, registry());
    (void)yaml_to_string(spec.doc.resolved);
    return {Outcome::accepted, ""};
  } catch (const ConfigError& e) {
    return {Outcome::rejected, e.what()};
  }
}


// ---------------------------------------------------------------------------
// state: a verified checkpoint with wrong contents, resumed by a Trainer.

namespace {
const char* kStateConfig =
    "name: fuzz_state\nseed: 3\n"
    "data: {name: synthetic, train_size: 16, valid_size: 8, test_size: 8, features: 4, num_classes: 3, batch_size: 8}\n"
    "model: {name: mlp, hidden: [3]}\n"
    "optimizer: {name: adam, lr: 0.01}\n"
    "scheduler: {name: cosine, warmup_steps: 1}\n"
    "metrics: [{name: accuracy}, {name: f1}]\n"
    "trainer: {max_epochs: 2, threads: 1, log_every_n_steps: 1, enable_progress_bar: false}\n"
    "callbacks:\n"
    "  - {name: checkpoint, monitor: valid/loss, save_top_k: 1}\n"
    "  - {name: early_stopping, monitor: valid/loss, patience: 3}\n"
    "  - {name: ema, decay: 0.9}\n";

//! Removes a folder tree with nftw (std::filesystem::remove_all binds to a
//! broken copy inside the torch wheel's libtorch.so and crashes there).
void remove_tree(const std::string& dir) {
  ::nftw(
      dir.c_str(),
      [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

//! Fixed at first use: a forked child (tests/test_hostile.cpp) uses its parent's base files.
const std::string& state_dir() {
  static const std::string dir = scratch("-state");
  static const pid_t owner = ::getpid();
  static std::once_flag once;
  // Removed when the process that made it exits (forked children leave by _exit).
  std::call_once(once, [] {
    std::atexit([] {
      if (::getpid() == owner) {
        remove_tree(dir);
      }
    });
  });
  return dir;
}

//! Builds the trainer of kStateConfig writing into `run_dir`.
std::unique_ptr<Trainer> state_trainer(const std::string& run_dir, const std::vector<std::string>& sets = {}) {
  const std::string cfg = state_dir() + "/config.yaml";
  ExperimentSpec spec = parse_experiment(cfg, sets, registry());
  auto t = build_trainer(spec, run_dir);
  return t;
}

//! The base checkpoint: one epoch of kStateConfig, which the inputs' runs
//! continue for a second (optimizer moments, schedule, metric series,
//! callback states: everything a resume restores).
const Value& state_base() {
  static Value base;
  static std::once_flag once;
  std::call_once(once, [] {
    namespace fs = std::filesystem;
    remove_tree(state_dir());
    fs::create_directories(state_dir());
    write(state_dir() + "/config.yaml", kStateConfig, std::strlen(kStateConfig));
    auto t = state_trainer(state_dir() + "/base", {"trainer.max_epochs=1"});
    t->fit();
    base = read_checkpoint(state_dir() + "/base/checkpoints/last.ckpt");
  });
  return base;
}

void collect(Value& v, std::vector<Value*>& out) {
  out.push_back(&v);
  if (v.is_list()) {
    for (auto& item : v.items()) collect(item, out);
  } else if (v.is_dict()) {
    for (const auto& k : std::vector<Value>(v.keys())) collect(*v.find(k), out);
  }
}

//! The parent of `target` in the tree below `root` (nullptr for the root).
Value* parent_of(Value& root, const Value* target) {
  if (root.is_list()) {
    for (auto& item : root.items()) {
      if (&item == target) return &root;
      if (Value* p = parent_of(item, target)) return p;
    }
  } else if (root.is_dict()) {
    for (const auto& k : std::vector<Value>(root.keys())) {
      Value* child = root.find(k);
      if (child == target) return &root;
      if (Value* p = parent_of(*child, target)) return p;
    }
  }
  return nullptr;
}

void mutate(Value& root, size_t node, StateOp op, uint8_t arg) {
  std::vector<Value*> nodes;
  collect(root, nodes);
  Value& v = *nodes[node % nodes.size()];
  switch (op) {
    case StateOp::remove: {
      Value* parent = parent_of(root, &v);
      if (parent && parent->is_dict()) {
        for (const auto& k : parent->keys()) {
          if (parent->find(k) == &v) {
            const Value key = k;
            parent->erase(key);
            return;
          }
        }
      }
      if (v.is_list() && v.size() > 0) {
        v.items().pop_back();
      } else {
        v = Value();
      }
      return;
    }
    case StateOp::integer: {
      static const int64_t ints[] = {-1, 0, 1, int64_t{1} << 31, INT64_MIN, 1000000000000LL, 7, int64_t{1} << 62};
      v = Value(ints[arg % 8]);
      return;
    }
    case StateOp::real: {
      static const double reals[] = {std::nan(""), INFINITY, -INFINITY, -1.5, 0.0, 1e300};
      v = Value(reals[arg % 6]);
      return;
    }
    case StateOp::text: v = Value(std::string(arg % 2 ? "fuzz" : "")); return;
    case StateOp::reshape: {
      const auto dtype = v.is_tensor() ? v.to_tensor().scalar_type() : at::kFloat;
      std::vector<int64_t> shape;
      for (int d = 0; d < arg % 4; ++d) shape.push_back((arg >> (2 + d)) % 4);
      v = Value(at::zeros(shape, at::TensorOptions().dtype(dtype)));
      return;
    }
    case StateOp::retype: {
      static const at::ScalarType types[] = {at::kDouble, at::kLong, at::kBool, at::kByte, at::kFloat};
      const at::Tensor t = v.is_tensor() ? v.to_tensor() : at::zeros({2});
      v = Value(t.to(types[arg % 5]));
      return;
    }
    case StateOp::empty:
      if (v.is_list()) {
        v = Value::list();
      } else if (v.is_dict()) {
        v = Value::dict();
      } else if (v.is_tensor()) {
        v = Value(at::zeros({0}, v.to_tensor().options()));
      } else {
        v = Value(std::string());
      }
      return;
    case StateOp::grow:
      if (v.is_list() && v.size() > 0) {
        const Value first = v.items()[0];
        v.push_back(first);
      } else if (v.is_dict()) {
        v.set("fuzz", Value(int64_t{1}));
      } else if (v.is_tensor() && v.to_tensor().dim() > 0) {
        v = Value(at::cat({v.to_tensor(), v.to_tensor()}, 0));
      } else {
        v = Value::list();
      }
      return;
  }
}
}  // namespace

namespace {
void names(const Value& v, const std::string& path, std::vector<std::string>& out) {
  out.push_back(path.empty() ? "<root>" : path);
  if (v.is_list()) {
    for (size_t i = 0; i < v.size(); ++i) names(v.items()[i], path + "[" + std::to_string(i) + "]", out);
  } else if (v.is_dict()) {
    for (size_t i = 0; i < v.keys().size(); ++i) {
      const Value& k = v.keys()[i];
      names(v.values()[i], path + "['" + (k.is_string() ? k.to_string() : std::to_string(k.to_int())) + "']", out);
    }
  }
}
}  // namespace

Result data(const uint8_t* data, size_t size) {
  if (size == 0) return {Outcome::rejected, "empty input"};
  const uint8_t mode = data[0];
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if ((mode & 1) == 0) {
      const at::Tensor img = decode_image(rest, (mode & 2) ? 3 : 1);
      (void)img.sum().item<double>();  // every pixel read
      return {Outcome::accepted, ""};
    }
    const std::string dir = scratch("-shards");
    remove_tree(dir);
    ::mkdir(dir.c_str(), 0700);
    write(dir + "/shard-00000.cshard", rest.data(), rest.size());
    ShardDataset shards(dir, (mode & 2) != 0);
    const int64_t n = std::min<int64_t>(shards.size(), 4096);
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < n; ++i) rows.push_back(i);
    if (n > 0) (void)shards.get_batch(rows, {}).x.sum().item<double>();
    return {Outcome::accepted, ""};
  } catch (const BadExample& e) {
    return {Outcome::rejected, e.what()};
  } catch (const DataError& e) {
    return {Outcome::rejected, e.what()};
  } catch (const std::runtime_error& e) {
    // The decoders' own reasons (decode_image); any other exception type is a finding.
    return {Outcome::rejected, e.what()};
  }
}

void remove_scratch() {
  for (const char* suffix : {".ckpt", ".pt", ".yaml", "-base.yaml"}) ::unlink(scratch(suffix).c_str());
  remove_tree(scratch("-state"));
  remove_tree(scratch("-shards"));
}

void state_cleanup() {
  remove_tree(state_dir());
}

std::string state_node_name(size_t node) {
  std::vector<std::string> out;
  names(state_base(), "", out);
  return out[node % out.size()];
}

size_t state_nodes() {
  Value copy = state_base();
  std::vector<Value*> nodes;
  collect(copy, nodes);
  return nodes.size();
}

Result state(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  Value c = state_base();
  for (size_t i = 0; i + 4 <= size && i < 16; i += 4) {
    const size_t node = static_cast<size_t>(data[i]) << 8 | data[i + 1];
    mutate(c, node, static_cast<StateOp>(data[i + 2] % kStateOps), data[i + 3]);
  }
  const std::string run = state_dir() + "/run";
  remove_tree(run);
  const std::string path = state_dir() + "/in.ckpt";
  try {
    write_checkpoint(path, c);
  } catch (const std::exception& e) {
    return {Outcome::rejected, std::string("not writable: ") + e.what()};  // e.g. a value the writer cannot encode
  }
  auto t = state_trainer(run);
  t->resume_from(path);
  try {
    t->fit();
    return {Outcome::accepted, ""};
  } catch (const CheckpointError& e) {
    return {Outcome::rejected, e.what()};
  } catch (const CheckpointMismatch& e) {
    return {Outcome::rejected, e.what()};
  } catch (const UnclaimedState& e) {
    return {Outcome::rejected, e.what()};
  }
}

}  // namespace fuzz
}  // namespace cairn
