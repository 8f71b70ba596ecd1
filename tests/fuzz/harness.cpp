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

#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <mutex>
#include <unistd.h>
#include <vector>

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

}  // namespace fuzz
}  // namespace cairn
