// Data read from disk as training goes, through YAML and real `cairn`
// processes: image folders (real PNG and JPEG files, written here with libpng
// and libjpeg-turbo) and shards written by python/cairn_shards.py. Runs
// SIGKILLed and resumed with another number of worker threads end
// bit-identical; corrupt files are exit 3 naming the file and index (or
// skipped with data.skip_bad); mixed image sizes and changed transforms are
// refused with exit 2.
#include "support.h"

#include <png.h>
#include <turbojpeg.h>

#include <random>

namespace {

//! A uint8 [C, H, W] tensor written as a PNG or a JPEG (by the file's extension).
void write_image(const std::string& path, const at::Tensor& chw) {
  const at::Tensor hwc = chw.permute({1, 2, 0}).contiguous();
  const int c = static_cast<int>(chw.size(0)), h = static_cast<int>(chw.size(1)), w = static_cast<int>(chw.size(2));
  if (test::fs::path(path).extension() == ".png") {
    png_image image;
    std::memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = static_cast<png_uint_32>(w);
    image.height = static_cast<png_uint_32>(h);
    image.format = c == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    REQUIRE(png_image_write_to_file(&image, path.c_str(), 0, hwc.data_ptr<uint8_t>(), w * c, nullptr) != 0);
    return;
  }
  tjhandle tj = tjInitCompress();
  unsigned char* out = nullptr;
  unsigned long size = 0;
  REQUIRE(tjCompress2(tj, hwc.data_ptr<uint8_t>(), w, 0, h, c == 1 ? TJPF_GRAY : TJPF_RGB, &out, &size,
                      c == 1 ? TJSAMP_GRAY : TJSAMP_444, 95, TJFLAG_ACCURATEDCT) == 0);
  test::write_file(path, std::string(reinterpret_cast<char*>(out), size));
  tjFree(out);
  tjDestroy(tj);
}

//! root/<class>/<i>.png|jpg: three classes told apart by which third of the
//! image is bright, with noise; every fourth image a JPEG.
void image_folder(const std::string& root, int per_class, uint64_t seed, int64_t size = 12) {
  torch::manual_seed(seed);
  const char* classes[] = {"boot", "coat", "shirt"};
  for (int c = 0; c < 3; ++c) {
    test::fs::create_directories(root + "/" + classes[c]);
    for (int i = 0; i < per_class; ++i) {
      at::Tensor img = torch::rand({3, size, size}) * 90;
      img.narrow(1, c * size / 3, size / 3).add_(140);
      write_image(root + "/" + classes[c] + "/" + std::to_string(i) + (i % 4 == 3 ? ".jpg" : ".png"),
                  img.clamp(0, 255).to(torch::kByte));
    }
  }
}

std::string image_config(const std::string& run, const std::string& root, const std::string& extra = "") {
  return "name: images\nseed: 11\nrun: {dir: " + run + "}\n"
         "data:\n  name: image_folder\n  path: " + root + "/train\n  test_path: " + root + "/test\n"
         "  batch_size: 8\n  workers: 2\n"
         "  transforms: [{name: random_crop, size: 12, padding: 2}, hflip, {name: normalize, mean: [0.4, 0.4, 0.4], std: [0.3, 0.3, 0.3]}]\n" +
         extra +
         "model: {name: cnn, channels: [8], hidden: 16}\n"
         "optimizer: {name: adam, lr: 0.003}\n"
         "trainer: {max_epochs: 3, threads: 1, log_every_n_steps: 2}\n"
         "callbacks:\n"
         "  - {name: checkpoint, monitor: valid/acc, mode: max, every_n_train_steps: 4}\n"
         "  - {name: csv_logger}\n"
         "  - {name: progress_bar, log_every_n_steps: 1}\n";
}

//! Shards from python/cairn_shards.py: uint8 "images" [1, 10, 10] of 4 classes, 40 per shard.
void python_shards(const std::string& dir) {
  const std::string code =
      "import sys; sys.path.insert(0, '" CAIRN_SOURCE_DIR "/python'); import cairn_shards, numpy as np\n"
      "rng = np.random.default_rng(4)\n"
      "def split(n):\n"
      "    y = rng.integers(0, 4, n)\n"
      "    x = rng.integers(0, 120, (n, 1, 10, 10))\n"
      "    for i, c in enumerate(y): x[i, 0, c * 2:c * 2 + 3, :] += 130\n"
      "    return x.astype(np.uint8), y\n"
      "for name, n in (('train', 300), ('valid', 60), ('test', 60)):\n"
      "    x, y = split(n)\n"
      "    cairn_shards.write_shards('" + dir + "/' + name, x, y, per_shard=40)\n";
  const auto r = test::run({CAIRN_PYTHON, "-c", code});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
}

std::string shard_config(const std::string& run, const std::string& dir, int workers) {
  return "name: shards\nseed: 2\nrun: {dir: " + run + "}\n"
         "data:\n  name: shards\n  path: " + dir + "/train\n  valid_path: " + dir + "/valid\n  test_path: " + dir + "/test\n"
         "  batch_size: 10\n  workers: " + std::to_string(workers) + "\n"
         "  transforms: [{name: normalize, mean: [60], std: [70]}, {name: random_crop, size: 10, padding: 1}, {name: noise, std: 0.05}]\n"
         "model: {name: mlp, hidden: [32], dropout: 0.2}\n"
         "optimizer: {name: adam, lr: 0.002}\n"
         "scheduler: {name: cosine, warmup_steps: 5}\n"
         "trainer: {max_epochs: 4, threads: 1, log_every_n_steps: 3}\n"
         "callbacks:\n"
         "  - {name: checkpoint, monitor: valid/acc, mode: max, save_top_k: 2, every_n_train_steps: 3}\n"
         "  - {name: csv_logger}\n"
         "  - {name: progress_bar, log_every_n_steps: 1}\n";
}

cairn::Value final_state(const std::string& run) {
  return test::comparable(cairn::read_checkpoint(run + "/checkpoints/last.ckpt"));
}

}  // namespace

TEST_CASE("shards from the Python writer: SIGKILLed and resumed with 0, 2 and 4 workers in turn, the end is bit-identical") {
  test::TempDir dir("disk_shards");
  python_shards(dir / "data");
  const std::string ref = dir / "ref", run = dir / "run";
  test::write_file(dir / "ref.yaml", shard_config(ref, dir / "data", 0));
  auto r = test::cairn_cli({"fit", "--config", dir / "ref.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const int64_t total = cairn::read_checkpoint(ref + "/checkpoints/last.ckpt").at("global_step").to_int();
  REQUIRE(total == 120);  // 300 examples, batches of 10, 4 epochs

  // Kills placed by training progress (a step printed), never by time; each
  // process runs with the next worker count.
  const int workers[] = {2, 4, 0, 4, 2, 0};
  const int64_t at[] = {7, 23, 41, 56, 70, 88};
  int kills = 0;
  for (size_t i = 0; i < 6; ++i) {
    test::write_file(dir / "run.yaml", shard_config(run, dir / "data", workers[i]));
    const std::string log = dir / ("log-" + std::to_string(i) + ".txt");
    const pid_t pid = test::spawn({CAIRN_CLI, "fit", "--config", dir / "run.yaml"}, log);
    test::StepsPrinted steps(log);
    int status = 0;
    bool exited = false;
    auto ended = [&] { return exited || (exited = ::waitpid(pid, &status, WNOHANG) == pid); };
    const bool reached = test::wait_until([&] { return ended() || steps.update() >= at[i]; }, 1);
    if (!exited) {
      ::kill(pid, SIGKILL);
      const int code = test::wait_exit(pid);
      // A process may finish between the test's look and its kill (a loaded machine): then it ended cleanly.
      if (code == 0) break;
      REQUIRE_MESSAGE(code == 128 + SIGKILL, test::read_file(log));
      ++kills;
    } else {
      const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      REQUIRE_MESSAGE(clean, test::read_file(log));
      break;  // it ran to the end before its kill: nothing left to interrupt
    }
    REQUIRE_MESSAGE(reached, "no progress to step " << at[i] << ":\n" << test::read_file(log));
  }
  MESSAGE(kills << " SIGKILLs, the worker count changed at each resume");
  CHECK(kills >= 1);
  // SIGTERM with four workers busy: saved at the next batch, exit 143, no hang.
  test::write_file(dir / "run.yaml", shard_config(run, dir / "data", 4));
  {
    const std::string log = dir / "log-term.txt";
    const pid_t pid = test::spawn({CAIRN_CLI, "fit", "--config", dir / "run.yaml"}, log);
    test::StepsPrinted steps(log);
    int status = 0;
    bool exited = false;
    auto ended = [&] { return exited || (exited = ::waitpid(pid, &status, WNOHANG) == pid); };
    REQUIRE(test::wait_until([&] { return ended() || steps.update() >= 95; }, 1));
    if (!exited) {
      ::kill(pid, SIGTERM);
      const int code = test::wait_exit(pid);
      CHECK_MESSAGE((code == 128 + SIGTERM || code == 0), test::read_file(log));  // 0: it finished first
    }
  }
  auto last = test::cairn_cli({"fit", "--config", dir / "run.yaml"});
  REQUIRE_MESSAGE(last.exit_code == 0, last.output);
  // A changed worker count is not drift: every resume went on (exit 0 above, and no refusal).
  CHECK(last.output.find("refused") == std::string::npos);
  const cairn::Value a = final_state(ref), b = final_state(run);
  CHECK_MESSAGE(a.first_difference(b) == "", a.first_difference(b));
  CHECK(a.at("state_dict").equals(b.at("state_dict")));
  CHECK(test::read_file(ref + "/metrics.csv") == test::read_file(run + "/metrics.csv"));

  // A changed transform list is refused on resume (exit 2, the key named);
  // --allow-config-change takes it.
  std::string text = shard_config(run, dir / "data", 0);
  text.replace(text.find("std: 0.05"), 9, "std: 0.10");
  text.replace(text.find("max_epochs: 4"), 13, "max_epochs: 5");
  test::write_file(dir / "more.yaml", text);
  auto refused = test::cairn_cli({"fit", "--config", dir / "more.yaml"});
  CHECK_MESSAGE(refused.exit_code == 2, refused.output);
  CHECK_MESSAGE(refused.output.find("data.transforms[2].std: 0.05 -> 0.1") != std::string::npos, refused.output);

  // test and predict read shard folders too.
  auto tested = test::cairn_cli({"test", "--config", dir / "ref.yaml", "--input", dir / "data/valid", "--json"});
  CHECK_MESSAGE(tested.exit_code == 0, tested.output);
  CHECK(tested.output.find("\"test/acc\"") != std::string::npos);
  auto predicted = test::cairn_cli({"predict", "--config", dir / "ref.yaml", "--input", dir / "data/test", "--out", dir / "p.pt"});
  REQUIRE_MESSAGE(predicted.exit_code == 0, predicted.output);
  CHECK(cairn::read_checkpoint(dir / "p.pt").at("outputs").to_tensor().size(0) == 60);
}

TEST_CASE("an image folder from YAML (PNG and JPEG) trains with augmentation on workers, resumes exactly; test and predict read folders") {
  test::TempDir dir("disk_images");
  image_folder(dir / "img/train", 16, 1);
  image_folder(dir / "img/test", 5, 2);
  test::write_file(dir / "a.yaml", image_config(dir / "a", dir / "img"));
  auto r = test::cairn_cli({"fit", "--config", dir / "a.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  // 48 images, 4 carved out for validation (valid_fraction 0.1): 44 in batches of 8.
  const cairn::Value end = cairn::read_checkpoint(dir / "a/checkpoints/last.ckpt");
  CHECK(end.at("global_step").to_int() == 18);
  const double acc = end.at("metrics").at("valid/acc").at("value").to_double_list().back();
  CHECK(acc > 0.5);
  // Stopped (as SIGTERM would) mid-epoch with 2 workers, resumed with none: the same end.
  test::write_file(dir / "b1.yaml", image_config(dir / "b", dir / "img"));
  std::string zero = image_config(dir / "b", dir / "img");
  zero.replace(zero.find("workers: 2"), 10, "workers: 0");
  test::write_file(dir / "b2.yaml", zero);
  const cairn::Value b = test::fit_stop_resume(dir / "b1.yaml", dir / "b2.yaml", 8);
  const cairn::Value a = final_state(dir / "a");
  CHECK_MESSAGE(a.first_difference(b) == "", a.first_difference(b));

  // predict --input: a folder of images, one row per file, named.
  auto p = test::cairn_cli({"predict", "--config", dir / "a.yaml", "--input", dir / "img/test", "--out", dir / "p.csv"});
  REQUIRE_MESSAGE(p.exit_code == 0, p.output);
  const std::string csv = test::read_file(dir / "p.csv");
  CHECK(csv.rfind("index,file,prediction,", 0) == 0);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 16);
  CHECK(csv.find("img/test/boot/0.png") != std::string::npos);
  CHECK(csv.find("img/test/shirt/3.jpg") != std::string::npos);
  // One image file: one row.
  auto one = test::cairn_cli({"predict", "--config", dir / "a.yaml", "--input", dir / "img/test/coat/3.jpg", "--out", dir / "one.csv"});
  REQUIRE_MESSAGE(one.exit_code == 0, one.output);
  const std::string one_csv = test::read_file(dir / "one.csv");
  CHECK(std::count(one_csv.begin(), one_csv.end(), '\n') == 2);
  // test --input: class folders measured with training's classes.
  auto t = test::cairn_cli({"test", "--config", dir / "a.yaml", "--input", dir / "img/test", "--json"});
  CHECK_MESSAGE(t.exit_code == 0, t.output);
  CHECK(t.output.find("\"test/acc\"") != std::string::npos);
}

TEST_CASE("bad data: a corrupt image is exit 3 naming it (or skipped alike for any worker count), mixed sizes and short shards are refused") {
  test::TempDir dir("disk_bad");
  image_folder(dir / "img/train", 8, 3);
  image_folder(dir / "img/test", 2, 4);
  // A PNG cut short and a "JPEG" of text.
  const std::string good = test::read_file(dir / "img/train/coat/2.png");
  test::write_file(dir / "img/train/coat/2.png", good.substr(0, good.size() / 2));
  test::write_file(dir / "img/train/shirt/7.jpg", "\xff\xd8\xff not really a jpeg");
  test::write_file(dir / "bad.yaml", image_config(dir / "bad", dir / "img"));
  auto r = test::cairn_cli({"fit", "--config", dir / "bad.yaml"});
  CHECK_MESSAGE(r.exit_code == 3, r.output);
  CHECK_MESSAGE(r.output.find("img/train/") != std::string::npos, r.output);
  CHECK_MESSAGE(r.output.find("(example ") != std::string::npos, r.output);
  CHECK_MESSAGE(r.output.find("data.skip_bad") != std::string::npos, r.output);

  // skip_bad: both named once, counted; the same run with 0 and 2 workers.
  for (const char* w : {"0", "2"}) {
    std::string c = image_config(dir / (std::string("skip") + w), dir / "img", "  skip_bad: true\n");
    c.replace(c.find("workers: 2"), 10, std::string("workers: ") + w);
    test::write_file(dir / (std::string("skip") + w + ".yaml"), c);
    auto s = test::cairn_cli({"fit", "--config", dir / (std::string("skip") + w + ".yaml")});
    REQUIRE_MESSAGE(s.exit_code == 0, s.output);
    CHECK_MESSAGE(s.output.find("coat/2.png") != std::string::npos, s.output);
    CHECK_MESSAGE(s.output.find("shirt/7.jpg") != std::string::npos, s.output);
    CHECK(s.output.find("bad examples skipped") != std::string::npos);
  }
  const cairn::Value s0 = final_state(dir / "skip0"), s2 = final_state(dir / "skip2");
  CHECK_MESSAGE(s0.first_difference(s2) == "", s0.first_difference(s2));

  // Mixed sizes without a resize: exit 2 naming two files and their sizes; with one, it trains.
  image_folder(dir / "mixed/train", 4, 5);
  image_folder(dir / "mixed/test", 1, 6);
  torch::manual_seed(1);
  write_image(dir / "mixed/train/boot/big.png", (torch::rand({3, 16, 14}) * 255).to(torch::kByte));
  test::write_file(dir / "mixed.yaml", image_config(dir / "mixed_run", dir / "mixed"));
  auto m = test::cairn_cli({"fit", "--config", dir / "mixed.yaml"});
  CHECK_MESSAGE(m.exit_code == 2, m.output);
  CHECK_MESSAGE(m.output.find("16x14") != std::string::npos, m.output);
  CHECK_MESSAGE(m.output.find("12x12") != std::string::npos, m.output);
  CHECK_MESSAGE(m.output.find("mixed.yaml:") != std::string::npos, m.output);
  std::string resized = image_config(dir / "mixed_ok", dir / "mixed");
  resized.replace(resized.find("transforms: ["), 13, "transforms: [{name: resize, size: [12, 12]}, ");
  test::write_file(dir / "mixed_ok.yaml", resized);
  auto ok = test::cairn_cli({"fit", "--config", dir / "mixed_ok.yaml", "--set", "data.valid_transforms=[{name: resize, size: [12, 12]}]"});
  CHECK_MESSAGE(ok.exit_code == 0, ok.output);

  // A shard shorter than its header says: exit 3 naming the file.
  python_shards(dir / "sh");
  const std::string shard = dir / "sh/train/shard-00003.cshard";
  const std::string bytes = test::read_file(shard);
  test::write_file(shard, bytes.substr(0, bytes.size() - 7));
  test::write_file(dir / "sh.yaml", shard_config(dir / "sh_run", dir / "sh", 0));
  auto s = test::cairn_cli({"fit", "--config", dir / "sh.yaml"});
  CHECK_MESSAGE(s.exit_code == 3, s.output);
  CHECK_MESSAGE(s.output.find("shard-00003.cshard") != std::string::npos, s.output);
  CHECK_MESSAGE(s.output.find("truncated") != std::string::npos, s.output);
}

TEST_CASE("two processes read their shares of a shard folder with workers: the same training as one process at the global batch") {
  test::TempDir dir("disk_two");
  python_shards(dir / "data");
  std::string one = shard_config(dir / "one", dir / "data", 2), two = shard_config(dir / "two", dir / "data", 2);
  one.replace(one.find("max_epochs: 4"), 13, "max_epochs: 2");
  two.replace(two.find("max_epochs: 4"), 13, "max_epochs: 2");
  two.replace(two.find("batch_size: 10"), 14, "batch_size: 5");
  // No dropout: its masks are drawn per process (the augmentation is not: it is per example).
  for (std::string* c : {&one, &two}) c->replace(c->find("dropout: 0.2"), 12, "dropout: 0.0");
  test::write_file(dir / "one.yaml", one);
  test::write_file(dir / "two.yaml", two);
  auto r1 = test::cairn_cli({"fit", "--config", dir / "one.yaml"});
  REQUIRE_MESSAGE(r1.exit_code == 0, r1.output);
  auto r2 = test::cairn_cli({"fit", "--config", dir / "two.yaml", "--nproc", "2"});
  REQUIRE_MESSAGE(r2.exit_code == 0, r2.output);
  const cairn::Value a = cairn::read_checkpoint(dir / "one/checkpoints/last.ckpt"),
                     b = cairn::read_checkpoint(dir / "two/checkpoints/last.ckpt");
  CHECK(a.at("global_step").to_int() == 60);
  CHECK(b.at("global_step").to_int() == 60);
  // Every example was augmented alike (its seed is its index, not its rank): only the gradient sum's order differs.
  const double dw = test::max_difference(a.at("state_dict"), b.at("state_dict"));
  MESSAGE("2 processes x 5 vs 1 x 10, shards with random crops: max weight difference " << dw);
  CHECK(dw < 1e-4);
  const double va = a.at("metrics").at("valid/acc").at("value").to_double_list().back(),
               vb = b.at("metrics").at("valid/acc").at("value").to_double_list().back();
  CHECK(std::abs(va - vb) < 1e-6);
}
