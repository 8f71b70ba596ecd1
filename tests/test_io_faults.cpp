// Every I/O error of the save path is reported, and nothing of the last good
// state is lost: a real `cairn fit` process with an interposed libc
// (tests/fault/inject.c) whose Nth write, pwrite, ftruncate, fsync, close,
// rename or link on a file in the run's checkpoint folder fails with EIO, for
// the first, second and last such call in turn. Each faulted run must say the
// error's text and never crash; a clean rerun of the same command then
// resumes and ends bit-identical to a run that never saw a fault.
#include "support.h"

#include <cstring>

namespace {
std::map<std::string, long> read_counts(const std::string& file) {
  std::map<std::string, long> out;
  std::istringstream in(test::read_file(file));
  std::string name;
  for (long n; in >> name >> n;) out[name] += n;
  return out;
}

test::ProcessResult fit(const std::string& config, const std::map<std::string, std::string>& env,
                        const std::string& log) {
  test::ProcessResult r;
  r.exit_code = test::wait_exit(test::spawn({CAIRN_CLI, "fit", "--config", config}, log, 0, env));
  r.output = test::read_file(log);
  return r;
}
}  // namespace

TEST_CASE("an EIO at any call of the save path is reported, and a clean rerun ends bit-identical") {
  test::TempDir dir("io_faults");
  const std::string ref = dir / "ref";
  test::write_file(dir / "ref.yaml", test::small_config(ref));
  auto r = test::cairn_cli({"fit", "--config", dir / "ref.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const cairn::Value expected = test::comparable(cairn::read_checkpoint(ref + "/checkpoints/last.ckpt"));
  const std::string expected_csv = test::read_file(ref + "/metrics.csv");

  // A clean run under the interposed libc counts the calls (and changes nothing).
  const std::string counted = dir / "counted";
  test::write_file(dir / "counted.yaml", test::small_config(counted));
  const auto c = fit(dir / "counted.yaml",
                     {{"LD_PRELOAD", CAIRN_FAULT_INJECT},
                      {"CAIRN_FAULT_DIR", counted + "/checkpoints"},
                      {"CAIRN_FAULT_COUNTS", dir / "counts.txt"}},
                     dir / "counted.log");
  REQUIRE_MESSAGE(c.exit_code == 0, c.output);
  CHECK(test::comparable(cairn::read_checkpoint(counted + "/checkpoints/last.ckpt")).first_difference(expected) == "");
  const auto counts = read_counts(dir / "counts.txt");
  // The interposition reached the save path (else this test would test nothing).
  for (const char* f : {"write", "fsync", "close", "rename", "link"}) {
    CAPTURE(f);
    CHECK(counts.at(f) > 1);
  }

  const std::string eio = std::strerror(EIO);
  int faults = 0;
  for (const auto& kv : counts) {
    const std::string& call = kv.first;
    std::vector<long> nths{1, 2, kv.second};
    std::sort(nths.begin(), nths.end());
    nths.erase(std::unique(nths.begin(), nths.end()), nths.end());
    for (long nth : nths) {
      if (nth < 1 || nth > kv.second) continue;
      const std::string name = call + "-" + std::to_string(nth), run = dir / name;
      CAPTURE(name);
      test::write_file(dir / (name + ".yaml"), test::small_config(run));
      const auto faulted = fit(dir / (name + ".yaml"),
                               {{"LD_PRELOAD", CAIRN_FAULT_INJECT},
                                {"CAIRN_FAULT_DIR", run + "/checkpoints"},
                                {"CAIRN_FAULT_CALL", call},
                                {"CAIRN_FAULT_NTH", std::to_string(nth)}},
                               dir / (name + ".log"));
      ++faults;
      // Said, with the errno's text; an error exit at worst, never a crash.
      CHECK_MESSAGE(faulted.output.find(eio) != std::string::npos, faulted.output);
      CHECK_MESSAGE(faulted.exit_code < 128, faulted.output);
      // The same command again, with no fault: it resumes from what is on
      // disk and ends exactly where the uninterrupted run did.
      const auto rerun = fit(dir / (name + ".yaml"), {}, dir / (name + "-rerun.log"));
      REQUIRE_MESSAGE(rerun.exit_code == 0, (faulted.output + "\n--- rerun ---\n" + rerun.output));
      const cairn::Value got = test::comparable(cairn::read_checkpoint(run + "/checkpoints/last.ckpt"));
      CHECK_MESSAGE(got.first_difference(expected) == "", got.first_difference(expected));
      CHECK(test::read_file(run + "/metrics.csv") == expected_csv);
      test::remove_tree(run);
    }
  }
  MESSAGE(faults << " faulted runs: " << [&] {
    std::string s;
    for (const auto& kv : counts) s += kv.first + " x" + std::to_string(kv.second) + " ";
    return s;
  }());
  CHECK(faults >= 10);
}

TEST_CASE("a full disk under metrics.csv is said once; the run goes on, the file keeps whole rows only") {
  // stdio writes go through glibc's internal write, which no LD_PRELOAD sees:
  // a real small filesystem (tmpfs) holds the run folder, the checkpoints live elsewhere.
  test::TempDir dir("io_faults_csv");
  auto config = [&](const std::string& run, const std::string& ckpts) {
    return "name: csvfull\nseed: 3\nrun: {dir: " + run + "}\n"
           "data: {name: synthetic, train_size: 1280, valid_size: 64, test_size: 64, batch_size: 32}\n"
           "model: {name: mlp, hidden: [8]}\noptimizer: {name: adam, lr: 0.01}\n"
           "trainer: {max_epochs: 4, threads: 1, log_every_n_steps: 1}\n"
           "callbacks:\n  - {name: checkpoint, dirpath: " + ckpts + ", every_n_train_steps: 20}\n"
           "  - {name: csv_logger}\n";
  };
  const std::string ref = dir / "ref", run = dir / "run";
  test::write_file(dir / "ref.yaml", config(ref, dir / "ref-ckpts"));
  test::write_file(dir / "run.yaml", config(run, dir / "run-ckpts"));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "ref.yaml"}).exit_code == 0);
  const std::string full = test::read_file(ref + "/metrics.csv");
  REQUIRE(full.size() > 4096 + 1024);  // more than the one page metrics.csv gets below
  // Three pages: the lock file, config.yaml and the first 4 KiB of metrics.csv.
  test::SmallDisk disk(run, 3 * 4096);
  if (!disk.mounted()) {
    MESSAGE("not root: cannot mount a tmpfs here; this case runs in CI (root)");
    CHECK(::geteuid() != 0);
    return;
  }
  const auto r = test::cairn_cli({"fit", "--config", dir / "run.yaml"});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  const std::string said = "writing " + run + "/metrics.csv failed: " + std::strerror(ENOSPC);
  CHECK_MESSAGE(r.output.find(said) != std::string::npos, r.output);
  CHECK(r.output.find(said, r.output.find(said) + 1) == std::string::npos);  // once
  // Whole rows, a prefix of the uninterrupted run's file; the checkpoint has every value.
  const std::string csv = test::read_file(run + "/metrics.csv");
  CHECK(csv.size() < full.size());
  CHECK(full.compare(0, csv.size(), csv) == 0);
  CHECK((csv.empty() || csv.back() == '\n'));
  const cairn::Value a = test::comparable(cairn::read_checkpoint(dir / "ref-ckpts/last.ckpt"));
  const cairn::Value b = test::comparable(cairn::read_checkpoint(dir / "run-ckpts/last.ckpt"));
  CHECK(a.at("metrics").equals(b.at("metrics")));
}
