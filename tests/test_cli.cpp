// The cairn program end to end on real Fashion-MNIST (small limit_train).
#include "support.h"

TEST_CASE("cairn fit trains, writes the run directory, and re-running a finished run is a no-op") {
  test::TempDir dir("cli_fit");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", test::small_config(run));
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("epoch 2/2 done") != std::string::npos);
  CHECK(r.output.find("cairn: finished; test accuracy") != std::string::npos);
  CHECK(test::fs::exists(run + "/config.yaml"));
  CHECK(test::fs::exists(run + "/checkpoints/last.ckpt"));
  const std::string csv = test::read_file(run + "/metrics.csv");
  CHECK(csv.rfind("epoch,step,split,name,value\n", 0) == 0);
  CHECK(csv.find(",valid,acc,") != std::string::npos);
  CHECK(csv.find(",test,acc,") != std::string::npos);
  // The resolved config round-trips through print-config.
  auto pc = test::cairn_cli({"print-config", "--config", run + "/config.yaml"});
  CHECK_MESSAGE(pc.exit_code == 0, pc.output);

  const auto mtime = test::fs::last_write_time(run + "/checkpoints/last.ckpt");
  auto again = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK_MESSAGE(again.exit_code == 0, again.output);
  CHECK(again.output.find("already finished") != std::string::npos);
  CHECK(test::fs::last_write_time(run + "/checkpoints/last.ckpt") == mtime);
  CHECK(test::read_file(run + "/metrics.csv") == csv);
}

TEST_CASE("cairn inspect shows position, best values and metrics; --json too; exit 3 when corrupt") {
  test::TempDir dir("cli_inspect");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", test::small_config(run, "", 1, 320));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  auto r = test::cairn_cli({"inspect", run + "/checkpoints/last.ckpt"});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("(verified)") != std::string::npos);
  CHECK(r.output.find("experiment   small") != std::string::npos);
  CHECK(r.output.find("best         valid/acc (max) =") != std::string::npos);
  CHECK(r.output.find("valid/loss") != std::string::npos);
  auto j = test::cairn_cli({"inspect", run + "/checkpoints/last.ckpt", "--json"});
  CHECK(j.exit_code == 0);
  CHECK(j.output.find("\"verified\": true") != std::string::npos);
  CHECK(j.output.find("\"valid/acc\": {\"length\": 1") != std::string::npos);
  CHECK(j.output.find("\"finished\": true") != std::string::npos);

  test::write_file(dir / "bad.ckpt", test::read_file(run + "/checkpoints/last.ckpt").substr(0, 5000));
  auto bad = test::cairn_cli({"inspect", dir / "bad.ckpt"});
  CHECK(bad.exit_code == 3);
  CHECK(bad.output.find("bad.ckpt") != std::string::npos);
  CHECK(test::cairn_cli({"inspect", dir / "missing.ckpt"}).exit_code == 3);
}

TEST_CASE("--resume never refuses to overwrite a run's checkpoints unless told") {
  test::TempDir dir("cli_never");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", test::small_config(run, "", 1, 320));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  auto refused = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--resume", "never"});
  CHECK(refused.exit_code == 2);
  CHECK(refused.output.find("--overwrite") != std::string::npos);
  auto fresh = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--resume", "never", "--overwrite"});
  CHECK_MESSAGE(fresh.exit_code == 0, fresh.output);
  CHECK(fresh.output.find("epoch 1/1 done") != std::string::npos);
  CHECK(fresh.output.find("resumed") == std::string::npos);
}

TEST_CASE("--resume PATH continues from that file; a missing or corrupt one is exit 3") {
  test::TempDir dir("cli_resume_path");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", test::small_config(run, "", 1, 320));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  auto missing = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--resume", dir / "nope.ckpt"});
  CHECK(missing.exit_code == 3);
  test::write_file(dir / "junk.ckpt", "not a checkpoint");
  auto junk = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--resume", dir / "junk.ckpt"});
  CHECK(junk.exit_code == 3);
  // More epochs under a cosine schedule whose length came from max_epochs: refused, the
  // extra epochs would train at lr 0.
  auto refused = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=2", "--resume",
                                  run + "/checkpoints/last.ckpt", "--run-dir", dir / "run2"});
  CHECK(refused.exit_code == 2);
  CHECK(refused.output.find("trainer.max_epochs: 1 -> 2") != std::string::npos);
  CHECK(refused.output.find("scheduler.total_steps") != std::string::npos);
  // With the schedule's length explicit, a finished 1-epoch run resumed with max_epochs 2
  // trains its second epoch (as Lightning does), and says at which learning rate.
  auto more = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=2", "--set",
                               "scheduler.total_steps=40", "--resume", run + "/checkpoints/last.ckpt", "--run-dir",
                               dir / "run2"});
  CHECK_MESSAGE(more.exit_code == 0, more.output);
  CHECK(more.output.find("already finished") == std::string::npos);
  CHECK(more.output.find("resumed from") != std::string::npos);
  CHECK(more.output.find("; learning rate ") != std::string::npos);
  CHECK(more.output.find("epoch 2/2 done") != std::string::npos);
  CHECK(more.output.find("epoch 1/2 done") == std::string::npos);
}

TEST_CASE("a checkpoint that does not match the model is exit 3 listing the differences") {
  test::TempDir dir("cli_mismatch");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", test::small_config(run, "", 1, 320));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=1"}).exit_code == 0);
  // Same run directory, a wider model, more epochs so it is not "finished".
  // (The config-drift check refuses this first; accepting the change reaches the model check.)
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "model.hidden=[48]", "--set",
                            "trainer.max_epochs=3", "--allow-config-change"});
  CHECK(r.exit_code == 3);
  CHECK(r.output.find("1.weight (checkpoint [32, 784], model [48, 784])") != std::string::npos);
}

TEST_CASE("a different thread count on resume warns that bitwise reproducibility is lost") {
  test::TempDir dir("cli_threads");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", test::small_config(run, "", 1, 320));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.threads=2", "--set",
                            "trainer.max_epochs=2", "--set", "scheduler.total_steps=40"});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("written with 1 intra-op thread(s), this run uses 2") != std::string::npos);
}

TEST_CASE("the progress bar keeps to the terminal's width (tmux at 60 and 80 columns): no refresh leaves a line") {
  test::TempDir dir("tmux");
  test::write_file(dir / "c.yaml",
                   "name: tmux\ndata: {name: synthetic, train_size: 2048, valid_size: 64, batch_size: 16}\n"
                   "model: {name: mlp, hidden: [8]}\ntrainer: {max_epochs: 3, log_every_n_steps: 8}\n"
                   "run: {dir: " + dir / "run" + "}\ncallbacks: [{name: progress_bar, refresh_seconds: 0}]\n");
  for (int columns : {60, 80}) {
    CAPTURE(columns);
    const std::string socket = "cairn-test-" + std::to_string(::getpid()) + "-" + std::to_string(columns);
    const std::string done = dir / ("done-" + std::to_string(columns));
    const std::string cmd = "env -u COLUMNS " + std::string(CAIRN_CLI) + " fit --config " + (dir / "c.yaml") +
                            " --overwrite; touch " + done + "; echo CAIRN-TEST-END; sleep 60";
    auto start = test::run({"/usr/bin/tmux", "-L", socket, "new-session", "-d", "-x", std::to_string(columns), "-y", "40", cmd});
    REQUIRE_MESSAGE(start.exit_code == 0, start.output);
    // The screen is read once tmux has drawn the line printed after cairn's
    // last one (the pane's output is drawn in order, whenever tmux gets to it).
    test::ProcessResult screen;
    test::wait_until([&] {
      screen = test::run({"/usr/bin/tmux", "-L", socket, "capture-pane", "-p", "-S", "-200"});
      return screen.output.find("CAIRN-TEST-END") != std::string::npos;
    }, 50);
    test::run({"/usr/bin/tmux", "-L", socket, "kill-server"});
    REQUIRE(test::fs::exists(done));
    std::istringstream lines(screen.output);
    int done_lines = 0;
    for (std::string line; std::getline(lines, line);) {
      // A bar that wrapped left its first part on a line of its own (lines
      // ended by a newline, like the banner, may wrap: they are not redrawn).
      CHECK_MESSAGE(line.find("it/s") == std::string::npos, screen.output);
      if (line.find(" done in ") != std::string::npos) ++done_lines;
    }
    CHECK_MESSAGE(done_lines == 3, screen.output);
  }
}

TEST_CASE("on a terminal the progress bar redraws one line; in a log it prints plain lines") {
  test::TempDir dir("tty");
  test::write_file(dir / "c.yaml",
                   "name: tty\ndata: {name: synthetic, train_size: 512, batch_size: 16}\nmodel: {name: mlp, hidden: [8]}\n"
                   "trainer: {max_epochs: 1, log_every_n_steps: 8}\nrun: {dir: " + dir / "run" + "}\n"
                   "callbacks: [{name: progress_bar, refresh_seconds: 0}]\n");
  // `script` (util-linux, in every Debian) runs the program on a pseudo-terminal.
  auto tty = test::run({"/usr/bin/script", "-qfec", std::string(CAIRN_CLI) + " fit --config " + (dir / "c.yaml"), "/dev/null"});
  REQUIRE_MESSAGE(tty.exit_code == 0, tty.output);
  CHECK(tty.output.find("\repoch 1/1 [") != std::string::npos);
  CHECK(tty.output.find("it/s ETA") != std::string::npos);
  CHECK(tty.output.find("epoch 1/1 step 8/32") == std::string::npos);
  auto log = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--resume", "never", "--overwrite"});
  REQUIRE(log.exit_code == 0);
  CHECK(log.output.find("\r") == std::string::npos);
  CHECK(log.output.find("epoch 1/1 step 8/32") != std::string::npos);
  CHECK(log.output.find("epoch 1/1 done in") != std::string::npos);
}

TEST_CASE("messages count epochs from 1, as the progress bar does; files count from 0") {
  CHECK(cairn::describe_position(2, 17, 1705) == "in epoch 3 after batch 17 (global step 1705)");
  CHECK(cairn::describe_position(2, 0, 1688) == "after epoch 2 (global step 1688)");
  CHECK(cairn::describe_position(0, 0, 0) == "before the first epoch (global step 0)");
}
