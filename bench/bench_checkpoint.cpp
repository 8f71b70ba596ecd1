// Checkpoint cost: size, save and load time for the Fashion-MNIST MLP and a
// ~100M-parameter model with Adam state, beside the raw speed of the same
// bytes on the same disk (`dd if=/dev/zero bs=1M conv=fsync`; `cat` for reads)
// measured in the same run.
//
//   ./build/bench_checkpoint [--dir DIR] [--big-layers N] [--repeats R (0: skip the save/load table)]
//                            [--steps S --every E --batch B] [--history-points P --history-saves K]
#include <cairn/cairn.h>
#include <cairn/callbacks.h>

#include <torch/torch.h>
#include <caffe2/serialize/inline_container.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "../framework/core/src/zip_writer.h"
#include <zlib.h>


#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

namespace {
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double timed_shell(const std::string& cmd) {
  const auto t0 = Clock::now();
  if (std::system(cmd.c_str()) != 0) return -1;
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

bool drop_caches() {
  ::sync();
  std::FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w");
  if (!f) return false;
  const bool ok = std::fputs("3\n", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

struct Row {
  std::string name;
  double params_m, mb, save_s, dd_s, dd_direct_s, load_s, cat_s, assemble_s;
  bool cold;
  cairn::WriteStats last;  //!< the last save's breakdown
  std::vector<double> dd_all, dd_direct_all, save_all;
};

// `from_snapshot`: write what the Checkpoint callback's background thread
// writes (the state copied into StateSnapshot's reused host buffers; the copy
// is not counted), instead of the live tensors through the synchronous API.
Row measure(const std::string& name, torch::nn::Sequential model, const at::Tensor& input, const std::string& dir,
            int repeats, bool from_snapshot = false) {
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  opt.zero_grad();
  model->forward(input).sum().backward();
  opt.step();  // creates the Adam state (exp_avg, exp_avg_sq)
  cairn::Loop loop;
  loop.track(*model);
  loop.track(opt);
  cairn::StateSnapshot snapshot;
  if (from_snapshot) snapshot.reserve(cairn::StateSnapshot::layout(loop.make_checkpoint()));
  Row r{name, 0, 0, 0, 0, 0, 0, 0, 0, false, {}, {}, {}, {}};
  for (const auto& p : model->parameters()) r.params_m += static_cast<double>(p.numel()) / 1e6;
  const std::string path = dir + "/" + name + ".ckpt";
  std::vector<double> save, assemble, dd, dd_direct, load, cat;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = Clock::now();
    cairn::Value c = loop.make_checkpoint();
    if (from_snapshot) {
      c = snapshot.take(c);
      t0 = Clock::now();
    }
    const auto t1 = Clock::now();
    const auto st = cairn::write_checkpoint(path, c);
    const auto t2 = Clock::now();
    r.last = st;
    assemble.push_back(std::chrono::duration<double>(t1 - t0).count());
    save.push_back(std::chrono::duration<double>(t2 - t0).count());
    r.mb = static_cast<double>(st.bytes) / 1e6;
    const long blocks = static_cast<long>(st.bytes / (1 << 20)) + 1;
    const double scale = static_cast<double>(st.bytes) / (static_cast<double>(blocks) * (1 << 20));
    dd.push_back(timed_shell("dd if=/dev/zero of=" + dir + "/dd.bin bs=1M count=" + std::to_string(blocks) +
                             " conv=fsync status=none") * scale);
    dd_direct.push_back(timed_shell("dd if=/dev/zero of=" + dir + "/dd.bin bs=1M count=" + std::to_string(blocks) +
                                    " oflag=direct conv=fsync status=none") * scale);
    r.cold = drop_caches();
    const auto t3 = Clock::now();
    cairn::Value back = cairn::read_checkpoint(path);
    load.push_back(std::chrono::duration<double>(Clock::now() - t3).count());
    r.cold = r.cold && drop_caches();
    cat.push_back(timed_shell("cat " + path + " > /dev/null"));
  }
  fs::remove(dir + "/dd.bin");
  fs::remove(path);
  r.save_s = median(save);
  r.save_all = save;
  r.assemble_s = median(assemble);
  r.dd_s = median(dd);
  r.dd_all = dd;
  r.dd_direct_s = median(dd_direct);
  r.dd_direct_all = dd_direct;
  r.load_s = median(load);
  r.cat_s = median(cat);
  return r;
}
torch::nn::Sequential big_model(int64_t layers) {
  torch::nn::Sequential big;
  for (int64_t i = 0; i < layers; ++i) big->push_back(torch::nn::Linear(4096, 4096));
  return big;
}

// Training steps per second of the big model with an async checkpoint every
// `every` steps, against the same loop without checkpoints; also the time each
// checkpoint blocked training and a plain copy of the same tensors.
struct TrainResult {
  double with_ckpt = 0, without = 0, first_blocking = 0, blocking = 0, plain_copy = 0;
};

TrainResult train_overhead(int64_t layers, int64_t steps, int64_t every, int64_t batch, const std::string& dir) {
  TrainResult r;
  // Pass 0 is an untimed warm-up with one checkpoint: on some VMs the first
  // touch of memory the process never used is far slower than later reuse,
  // which made whichever timed pass ran first look slower.
  for (int pass = 0; pass < 3; ++pass) {
    const bool warm_up = pass == 0;
    const bool ckpt = pass != 1;
    const int64_t n = warm_up ? std::min(steps, every) : steps;
    torch::manual_seed(0);
    auto model = big_model(layers);
    torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-4));
    cairn::Loop loop;
    loop.set_run_dir(dir + "/train_overhead");
    loop.track(*model);
    loop.track(opt);
    std::shared_ptr<cairn::Checkpoint> cb;
    if (ckpt) {
      cb = std::make_shared<cairn::Checkpoint>(
          cairn::CheckpointOptions().every_n_train_steps(every).every_n_epochs(0).save_top_k(0));
      loop.add(cb);
    }
    auto x = torch::randn({batch, 4096});
    loop.fit_begin();
    loop.epoch_begin();
    std::vector<double> blocked;
    const auto t0 = Clock::now();
    for (int64_t s = 0; s < n; ++s) {
      loop.batch_begin();
      opt.zero_grad();
      model->forward(x).pow(2).mean().backward();
      opt.step();
      const auto b0 = Clock::now();
      loop.batch_end();
      if (ckpt && (s + 1) % every == 0) blocked.push_back(std::chrono::duration<double>(Clock::now() - b0).count());
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    loop.fit_end();  // waits for the last write (not counted: training had ended)
    if (warm_up) continue;
    (ckpt ? r.with_ckpt : r.without) = static_cast<double>(steps) / secs;
    if (ckpt) {
      // Buffers are reserved in the background after the first step; the first save reuses them.
      r.first_blocking = blocked.front();
      r.blocking = blocked.size() > 1 ? median(std::vector<double>(blocked.begin() + 1, blocked.end())) : blocked[0];
      // A plain in-memory copy of the same tensors into preallocated buffers.
      std::vector<at::Tensor> src, dst;
      for (const auto& p : model->parameters()) src.push_back(p.detach());
      cairn::Value state = cairn::optimizer_state_dict(opt);
      for (const auto& kv : state.at("state").values()) {
        for (const auto& t : kv.values()) {
          if (t.is_tensor() && t.to_tensor().numel() > 1) src.push_back(t.to_tensor());
        }
      }
      for (const auto& t : src) dst.push_back(torch::empty_like(t));
      for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);  // warm
      const auto c0 = Clock::now();
      for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
      r.plain_copy = std::chrono::duration<double>(Clock::now() - c0).count();
    }
  }
  if (std::system(("rm -rf '" + dir + "/train_overhead'").c_str()) != 0) std::fprintf(stderr, "cleanup failed\n");
  return r;
}
// Time a save blocks training (assembly + snapshot) for the big model with
// `points` metric points already logged, median over `saves` saves (the first,
// which waits for the background buffer reservation, is left out). The write
// itself finishes before the next save starts, so only blocking is measured.
double blocking_with_history(int64_t layers, int64_t points, int saves, const std::string& dir) {
  torch::manual_seed(0);
  auto model = big_model(layers);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-4));
  cairn::Loop loop;
  loop.set_run_dir(dir + "/history");
  loop.track(*model);
  loop.track(opt);
  auto cb = std::make_shared<cairn::Checkpoint>(
      cairn::CheckpointOptions().every_n_train_steps(1).every_n_epochs(0).save_top_k(0));
  loop.add(cb);
  const char* names[] = {"train/loss_step", "train/acc_step", "train/lr", "train/grad_norm"};
  for (int64_t i = 0; i < points; ++i) loop.metrics().log(names[i % 4], 1.0 / static_cast<double>(i + 1), i / 1000, i);
  auto x = torch::randn({2, 4096});
  loop.fit_begin();
  loop.epoch_begin();
  std::vector<double> blocked;
  for (int s = 0; s < saves + 1; ++s) {
    loop.batch_begin();
    opt.zero_grad();
    model->forward(x).pow(2).mean().backward();
    loop.before_optimizer_step();
    opt.step();
    loop.log_step("train/loss", 1.0);
    const auto b0 = Clock::now();
    loop.batch_end();
    blocked.push_back(std::chrono::duration<double>(Clock::now() - b0).count());
    cb->wait_for_pending(loop);
  }
  loop.fit_end();
  if (std::system(("rm -rf '" + dir + "/history'").c_str()) != 0) std::fprintf(stderr, "cleanup failed\n");
  if (std::getenv("CAIRN_BENCH_VERBOSE")) {
    const auto a0 = Clock::now();
    cairn::Value c = loop.make_checkpoint(false);
    std::printf("  [%lld points] assembly %.4f s; blocked:", static_cast<long long>(points),
                std::chrono::duration<double>(Clock::now() - a0).count());
    for (double b : blocked) std::printf(" %.3f", b);
    std::printf("\n");
  }
  return median(std::vector<double>(blocked.begin() + 1, blocked.end()));
}
}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // show each section as it completes
  std::string dir = "bench_tmp";
  int64_t big_layers = 6;  // 6 x Linear(4096, 4096): 100.7M parameters
  int repeats = 3;
  int64_t steps = 150, every = 50, batch = 8;
  int64_t history_points = 1000000;
  int history_saves = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dir") dir = argv[i + 1];
    if (a == "--big-layers") big_layers = std::stoll(argv[i + 1]);
    if (a == "--repeats") repeats = std::stoi(argv[i + 1]);
    if (a == "--steps") steps = std::stoll(argv[i + 1]);
    if (a == "--every") every = std::stoll(argv[i + 1]);
    if (a == "--batch") batch = std::stoll(argv[i + 1]);
    if (a == "--history-points") history_points = std::stoll(argv[i + 1]);
    if (a == "--history-saves") history_saves = std::stoi(argv[i + 1]);
  }
  fs::create_directories(dir);
  cairn::set_threads(1);
  torch::manual_seed(0);
  if (repeats > 0) {  // --repeats 0: only the training sections below
    std::vector<Row> rows;
    rows.push_back(measure("mlp", cairn::make_mlp({{1, 28, 28}, {256, 128}, 10, 0.1}), torch::randn({64, 1, 28, 28}),
                           dir, repeats));
    rows.push_back(measure("big", big_model(big_layers), torch::randn({2, 4096}), dir, repeats));
    rows.push_back(measure("big-bg", big_model(big_layers), torch::randn({2, 4096}), dir, repeats, true));
    std::printf("\n== checkpoint save/load vs the disk (%s), median of %d ==\n", dir.c_str(), repeats);
    std::printf("%-6s %9s %9s %9s %9s %10s %9s %9s %9s %9s %10s\n", "model", "params(M)", "size(MB)", "save(s)", "MB/s",
                "dd MB/s", "ratio", "vs direct", "load(s)", "cat(s)", "load/cat");
    for (const auto& r : rows) {
      std::printf("%-6s %9.1f %9.1f %9.3f %9.0f %10.0f %9.3f %9.3f %9.3f %9.3f %10.2f\n", r.name.c_str(), r.params_m,
                  r.mb, r.save_s, r.mb / r.save_s, r.mb / r.dd_s, r.dd_s / r.save_s, r.dd_direct_s / r.save_s, r.load_s,
                  r.cat_s, r.load_s / r.cat_s);
    }
    std::printf("(ratio = cairn write throughput / `dd bs=1M conv=fsync` throughput, the target's baseline; vs direct ="
                " the same against `dd oflag=direct conv=fsync`; cairn also renames and fsyncs the directory, which dd"
                " does not. big: write_checkpoint of the live state, assembly (%.3f s) included; big-bg: what the"
                " Checkpoint callback's background thread writes, from its snapshot buffers; reads are %s)\n",
                rows[1].assemble_s, rows[1].cold ? "cold (page cache dropped)" : "warm (cannot drop caches here)");

    for (size_t k = 1; k < rows.size(); ++k) {
      const Row& b = rows[k];
      std::printf("%s: save runs (s):", b.name.c_str());
      for (double d : b.save_all) std::printf(" %.3f", d);
      std::printf("; dd conv=fsync runs (MB/s):");
      for (double d : b.dd_all) std::printf(" %.0f", b.mb / d);
      std::printf("; dd oflag=direct runs (MB/s):");
      for (double d : b.dd_direct_all) std::printf(" %.0f", b.mb / d);
      std::printf("\n  breakdown of the last save (%s): pickle+prepare %.3f s, waiting for hashes %.3f s,"
                  " staging+write(2) %.3f s, fsync %.3f s, close+rename+directory fsync %.3f s, total %.3f s\n",
                  b.last.direct_io ? "O_DIRECT" : "buffered", b.last.pickle_seconds, b.last.hash_wait_seconds,
                  b.last.write_seconds, b.last.fsync_seconds, b.last.rename_seconds, b.last.seconds);
    }
    {
      // Hash rates over 256 MB in memory: what each pass costs on this CPU.
      std::vector<unsigned char> buf(256u << 20, 7);
      auto rate = [&](const std::function<void()>& f) {
        const auto t = Clock::now();
        f();
        return static_cast<double>(buf.size()) / 1e6 / std::chrono::duration<double>(Clock::now() - t).count();
      };
      volatile uint64_t sink = 0;
      const double isal_rate = rate([&] { sink = sink + cairn::zip::crc32(buf.data(), buf.size()); });
      const double zlib_rate = rate([&] { sink = sink + ::crc32(0L, buf.data(), static_cast<uInt>(buf.size())); });
      const double xxh_rate = rate([&] { sink = sink + XXH3_64bits(buf.data(), buf.size()); });
      const double miniz_rate = rate([&] {
        caffe2::serialize::PyTorchStreamWriter w([](const void*, size_t n) { return n; });  // CRC, no I/O
        w.writeRecord("data/0", buf.data(), buf.size());
        w.writeEndOfFile();
      });
      std::printf("in-memory rates (MB/s): zip CRC-32 (ISA-L, cairn) %.0f, zlib crc32 %.0f, XXH3-64 %.0f,"
                  " PyTorch's zip writer (miniz CRC) %.0f\n",
                  isal_rate, zlib_rate, xxh_rate, miniz_rate);
    }

    // Python's torch.save of the same big state, where installed.
    const std::string py = std::string(CAIRN_PYTHON) + " " + CAIRN_BENCH_DIR + "/python_save.py " + dir + " " +
                           std::to_string(big_layers) + " " + std::to_string(repeats) + " 2>/dev/null";
    if (std::FILE* p = ::popen(py.c_str(), "r")) {
      double secs = 0, size = 0;
      if (std::fscanf(p, "%lf %lf", &secs, &size) == 2 && secs > 0) {
        std::printf("Python torch.save of the same state (+fsync): %.3f s, %.0f MB/s; cairn/torch.save time %.3f\n", secs,
                    size / 1e6 / secs, rows[1].save_s / secs);
      } else {
        std::printf("Python torch.save: not measured (no torch for %s)\n", CAIRN_PYTHON);
      }
      ::pclose(p);
    }
  }

  if (steps > 0) {
    const TrainResult t = train_overhead(big_layers, steps, every, batch, dir);
    std::printf("\n== training the big model (batch %lld, %lld steps), async checkpoint every %lld steps ==\n",
                static_cast<long long>(batch), static_cast<long long>(steps), static_cast<long long>(every));
    std::printf("%-54s %10s %10s\n", "measure", "value", "target");
    std::printf("%-54s %10.3f %10s\n", "steps/s without checkpoints", t.without, "");
    std::printf("%-54s %10.3f %10s\n", "steps/s with checkpoints", t.with_ckpt, "");
    std::printf("%-54s %9.2f%% %10s\n", "throughput overhead", 100.0 * (1.0 - t.with_ckpt / t.without), "<= 3%");
    std::printf("%-54s %9.3fs %10s\n", "training blocked by the first checkpoint", t.first_blocking, "");
    std::printf("%-54s %9.3fs %10s\n", "training blocked per later checkpoint (median)", t.blocking, "");
    std::printf("%-54s %9.3fs %10s\n", "plain in-memory copy of the same tensors", t.plain_copy, "");
    std::printf("%-54s %10.3f %10s\n", "blocking / plain copy", t.blocking / t.plain_copy, "<= 1.5");
  }

  if (history_points > 0 && history_saves > 0) {
    // Untimed warm-up (the allocator's first large allocations fault pages in),
    // then alternating runs so that neither side gets the warmer process.
    blocking_with_history(big_layers, 0, 1, dir);
    double none = 0, many = 0;
    for (int pass = 0; pass < 2; ++pass) {
      none += blocking_with_history(big_layers, 0, history_saves, dir) / 2;
      many += blocking_with_history(big_layers, history_points, history_saves, dir) / 2;
    }
    std::printf("\n== save blocking time vs the length of the metric history (median of %d saves, mean of 2 runs) ==\n",
                history_saves);
    std::printf("%-54s %9.3fs %10s\n", "blocked per save, no logged points", none, "");
    std::printf("%-54s %9.3fs %10s\n", ("blocked per save, " + std::to_string(history_points) + " logged points").c_str(),
                many, "");
    std::printf("%-54s %10.3f %10s\n", "with history / without", many / none, "<= 1.05");
  }
  return 0;
}
