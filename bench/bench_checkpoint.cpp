// Checkpoint cost: size, save and load time for the Fashion-MNIST MLP and a
// ~100M-parameter model with Adam state, beside the raw speed of the same
// bytes on the same disk (`dd if=/dev/zero bs=1M conv=fsync`; `cat` for reads)
// measured in the same run.
//
//   ./build/bench_checkpoint [--dir DIR] [--big-layers N] [--repeats R]
#include <cairn/cairn.h>

#include <torch/torch.h>

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
  double params_m, mb, save_s, dd_s, load_s, cat_s, assemble_s;
  bool cold;
};

Row measure(const std::string& name, torch::nn::Sequential model, const at::Tensor& input, const std::string& dir,
            int repeats) {
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  opt.zero_grad();
  model->forward(input).sum().backward();
  opt.step();  // creates the Adam state (exp_avg, exp_avg_sq)
  cairn::Loop loop;
  loop.track(*model);
  loop.track(opt);
  Row r{name, 0, 0, 0, 0, 0, 0, 0, false};
  for (const auto& p : model->parameters()) r.params_m += static_cast<double>(p.numel()) / 1e6;
  const std::string path = dir + "/" + name + ".ckpt";
  std::vector<double> save, assemble, dd, load, cat;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = Clock::now();
    cairn::Value c = loop.make_checkpoint();
    const auto t1 = Clock::now();
    const auto st = cairn::write_checkpoint(path, c);
    const auto t2 = Clock::now();
    assemble.push_back(std::chrono::duration<double>(t1 - t0).count());
    save.push_back(std::chrono::duration<double>(t2 - t0).count());
    r.mb = static_cast<double>(st.bytes) / 1e6;
    const long blocks = static_cast<long>(st.bytes / (1 << 20)) + 1;
    dd.push_back(timed_shell("dd if=/dev/zero of=" + dir + "/dd.bin bs=1M count=" + std::to_string(blocks) +
                             " conv=fsync status=none") * static_cast<double>(st.bytes) /
                 (static_cast<double>(blocks) * (1 << 20)));
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
  r.assemble_s = median(assemble);
  r.dd_s = median(dd);
  r.load_s = median(load);
  r.cat_s = median(cat);
  return r;
}
}  // namespace

int main(int argc, char** argv) {
  std::string dir = "bench_tmp";
  int64_t big_layers = 6;  // 6 x Linear(4096, 4096): 100.7M parameters
  int repeats = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dir") dir = argv[i + 1];
    if (a == "--big-layers") big_layers = std::stoll(argv[i + 1]);
    if (a == "--repeats") repeats = std::stoi(argv[i + 1]);
  }
  fs::create_directories(dir);
  cairn::set_threads(1);
  torch::manual_seed(0);
  std::vector<Row> rows;
  rows.push_back(measure("mlp", cairn::make_mlp({{1, 28, 28}, {256, 128}, 10, 0.1}), torch::randn({64, 1, 28, 28}),
                         dir, repeats));
  {
    torch::nn::Sequential big;
    for (int64_t i = 0; i < big_layers; ++i) big->push_back(torch::nn::Linear(4096, 4096));
    rows.push_back(measure("big", big, torch::randn({2, 4096}), dir, repeats));
  }
  std::printf("\n== checkpoint save/load vs the disk (%s), median of %d ==\n", dir.c_str(), repeats);
  std::printf("%-6s %9s %9s %9s %9s %10s %9s %9s %9s %10s\n", "model", "params(M)", "size(MB)", "save(s)", "MB/s",
              "dd MB/s", "ratio", "load(s)", "cat(s)", "load/cat");
  for (const auto& r : rows) {
    std::printf("%-6s %9.1f %9.1f %9.3f %9.0f %10.0f %9.3f %9.3f %9.3f %10.2f\n", r.name.c_str(), r.params_m, r.mb,
                r.save_s, r.mb / r.save_s, r.mb / r.dd_s, r.dd_s / r.save_s, r.load_s, r.cat_s, r.load_s / r.cat_s);
  }
  std::printf("(ratio = cairn write throughput / dd conv=fsync throughput; save includes assembling the state,"
              " %.3f s for big; reads are %s)\n",
              rows.back().assemble_s, rows.back().cold ? "cold (page cache dropped)" : "warm (cannot drop caches here)");
  return 0;
}
