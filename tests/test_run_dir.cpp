// The run on disk: one timeline per folder (a roll-back moves the abandoned
// future aside), run folders that can be copied or moved (a run names its
// own files, never another folder's), weights-only runs that can be
// evaluated and are never silently retrained. Real `cairn` processes.
#include "support.h"

#include <set>

namespace {
//! A small job on synthetic data with the given checkpoint callback options.
std::string job(const std::string& run, int epochs, const std::string& checkpoint) {
  return "name: rundir\nseed: 11\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 320, valid_size: 64, test_size: 64, features: 8, num_classes: 3, "
         "batch_size: 32}\n"
         "model: {name: mlp, hidden: [16]}\noptimizer: {name: adam, lr: 0.01}\n"
         "trainer: {max_epochs: " + std::to_string(epochs) + ", threads: 1, log_every_n_steps: 5}\n"
         "callbacks:\n  - {name: checkpoint, " + checkpoint + "}\n";
}

//! The checkpoint files directly in `dir`, by name.
std::set<std::string> ckpt_names(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : test::fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".ckpt") out.insert(e.path().filename().string());
  }
  return out;
}

//! Every file below `dir` with its size and content hash: what "untouched" means.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : test::fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string bytes = test::read_file(e.path().string());
    out[e.path().string()] = std::to_string(bytes.size()) + ":" + std::to_string(std::hash<std::string>()(bytes));
  }
  return out;
}

std::string starts_with_step(const std::set<std::string>& names, const std::string& prefix) {
  for (const auto& n : names) {
    if (n.rfind(prefix, 0) == 0) return n;
  }
  return "";
}
}  // namespace

TEST_CASE("--resume FILE into the run's own folder moves the abandoned future aside; no choice picks it again") {
  test::TempDir dir("rundir_timeline");
  const std::string run = dir / "run", ckpts = run + "/checkpoints";
  test::write_file(dir / "c.yaml", job(run, 3, "monitor: valid/acc, mode: max, save_top_k: -1"));
  auto first = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  REQUIRE_MESSAGE(first.exit_code == 0, first.output);
  const auto before = ckpt_names(ckpts);
  const std::string epoch0 = starts_with_step(before, "epoch=0-"), epoch2 = starts_with_step(before, "epoch=2-");
  REQUIRE(!epoch0.empty());
  REQUIRE(!epoch2.empty());

  // Roll back to epoch 0 with another learning rate, into the same folder, for 2 epochs.
  auto again = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--resume", ckpts + "/" + epoch0,
                                "--allow-config-change", "--set", "optimizer.lr=0.002", "--set",
                                "trainer.max_epochs=2"});
  REQUIRE_MESSAGE(again.exit_code == 0, again.output);
  CHECK_MESSAGE(again.output.find("abandons the later timeline") != std::string::npos, again.output);
  // The old epochs 1 and 2 and the old last.ckpt are in abandoned/<UTC time>/, nowhere a choice looks.
  std::string aside;
  for (const auto& e : test::fs::directory_iterator(ckpts + "/abandoned")) aside = e.path().string();
  REQUIRE(!aside.empty());
  const auto moved = ckpt_names(aside);
  CHECK(moved.count(epoch2) == 1);
  CHECK(moved.count("last.ckpt") == 1);
  CHECK(starts_with_step(moved, "epoch=0-").empty());  // the file resumed from stays
  CHECK(ckpt_names(ckpts).count(epoch0) == 1);
  CHECK(ckpt_names(ckpts).count(epoch2) == 0);

  // test --ckpt last evaluates the new timeline's last file, and the next
  // plain fit continues it: the run at 2 epochs is finished.
  auto last = test::cairn_cli({"test", "--config", dir / "c.yaml", "--ckpt", "last"});
  REQUIRE_MESSAGE(last.exit_code == 0, last.output);
  CHECK_MESSAGE(last.output.find("checkpoint   " + ckpts + "/last.ckpt") != std::string::npos, last.output);
  const cairn::Value now = cairn::read_checkpoint(ckpts + "/last.ckpt");
  CHECK(now.at("epoch").to_int() == 2);
  auto plain = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "optimizer.lr=0.002", "--set",
                                "trainer.max_epochs=2", "--allow-config-change"});
  CHECK_MESSAGE(plain.exit_code == 0, plain.output);
  CHECK_MESSAGE(plain.output.find(epoch2) == std::string::npos, plain.output);
  CHECK(plain.output.find("abandoned") == std::string::npos);
}

TEST_CASE("a copied run folder resumes on its own files: the original is never read or changed") {
  test::TempDir dir("rundir_copy");
  const std::string a = dir / "A", b = dir / "B";
  test::write_file(dir / "c.yaml", job(a, 2, "monitor: valid/acc, mode: max, save_top_k: 1, every_n_train_steps: 4"));
  auto fit = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  REQUIRE_MESSAGE(fit.exit_code == 0, fit.output);
  test::fs::copy(a, b, test::fs::copy_options::recursive);
  const auto original = snapshot(a);

  // Four epochs in the copy: retention drops files on the way.
  auto more = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--run-dir", b, "--set", "trainer.max_epochs=4"});
  REQUIRE_MESSAGE(more.exit_code == 0, more.output);
  CHECK_MESSAGE(more.output.find("resumed from " + b + "/checkpoints/") != std::string::npos, more.output);
  CHECK(snapshot(a) == original);
  // The run names its files by name, in its own folder.
  const cairn::Value last = cairn::read_checkpoint(b + "/checkpoints/last.ckpt");
  const cairn::Value& cbs = last.at("callbacks");
  REQUIRE(cbs.keys().size() >= 1);
  const cairn::Value& state = cbs.values()[0];
  const std::string best = state.at("best_model_path").to_string();
  CHECK_MESSAGE(best.find('/') == std::string::npos, best);
  CHECK(test::fs::exists(b + "/checkpoints/" + best));
  CHECK(state.at("dirpath").to_string() == "checkpoints");
  for (const auto& k : state.at("best_k_models").keys()) CHECK(k.to_string().find('/') == std::string::npos);
  // Evaluating the copy reads the copy.
  auto tested = test::cairn_cli({"test", "--config", dir / "c.yaml", "--run-dir", b});
  REQUIRE_MESSAGE(tested.exit_code == 0, tested.output);
  CHECK_MESSAGE(tested.output.find("checkpoint   " + b + "/checkpoints/" + best) != std::string::npos, tested.output);

  // Moved instead of copied: it works from its new place too.
  const std::string c = dir / "C";
  test::fs::rename(b, c);
  auto moved = test::cairn_cli({"test", "--config", dir / "c.yaml", "--run-dir", c, "--ckpt", "best"});
  REQUIRE_MESSAGE(moved.exit_code == 0, moved.output);
  CHECK(moved.output.find("checkpoint   " + c + "/checkpoints/" + best) != std::string::npos);
}

TEST_CASE("resumed from another folder's file, a run never deletes or picks its own files by that folder's names") {
  test::TempDir dir("rundir_foreign");
  const std::string a = dir / "A", b = dir / "B";
  test::write_file(dir / "c.yaml", job(a, 2, "monitor: valid/acc, mode: max, save_top_k: 1, every_n_train_steps: 4"));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  const cairn::Value from = cairn::read_checkpoint(a + "/checkpoints/last.ckpt");
  const cairn::Value& state = from.at("callbacks").values()[0];
  // B already holds an unrelated file under each name A's book knows.
  test::fs::create_directories(b + "/checkpoints");
  std::vector<std::string> decoys;
  for (const auto& k : state.at("best_k_models").keys()) decoys.push_back(k.to_string());
  REQUIRE(!decoys.empty());
  for (const auto& d : decoys) test::write_file(b + "/checkpoints/" + d, "not B's checkpoint");
  auto more = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--run-dir", b, "--resume", a + "/checkpoints/last.ckpt",
                               "--set", "trainer.max_epochs=4"});
  REQUIRE_MESSAGE(more.exit_code == 0, more.output);
  CHECK_MESSAGE(more.output.find("starts afresh here") != std::string::npos, more.output);
  for (const auto& d : decoys) {
    CAPTURE(d);
    CHECK(test::read_file(b + "/checkpoints/" + d) == "not B's checkpoint");
  }
  auto best = test::cairn_cli({"test", "--config", dir / "c.yaml", "--run-dir", b, "--ckpt", "best"});
  REQUIRE_MESSAGE(best.exit_code == 0, best.output);
  for (const auto& d : decoys) CHECK(best.output.find("checkpoints/" + d + "\n") == std::string::npos);
}

TEST_CASE("a weights-only run is evaluable with --ckpt best|last, and a fit into it is refused instead of retraining") {
  test::TempDir dir("rundir_weights");
  const std::string run = dir / "run", ckpts = run + "/checkpoints";
  test::write_file(dir / "c.yaml", job(run, 2, "monitor: valid/acc, mode: max, save_top_k: 1, save_weights_only: true"));
  auto fit = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  REQUIRE_MESSAGE(fit.exit_code == 0, fit.output);
  REQUIRE(cairn::read_checkpoint(ckpts + "/last.ckpt").contains("weights_only"));
  for (const char* which : {"best", "last"}) {
    CAPTURE(which);
    auto t = test::cairn_cli({"test", "--config", dir / "c.yaml", "--ckpt", which});
    CHECK_MESSAGE(t.exit_code == 0, t.output);
    CHECK(t.output.find("test/acc") != std::string::npos);
    auto v = test::cairn_cli({"validate", "--config", dir / "c.yaml", "--ckpt", which, "--json"});
    CHECK_MESSAGE(v.exit_code == 0, v.output);
  }
  auto best = test::cairn_cli({"test", "--config", dir / "c.yaml", "--ckpt", "best"});
  CHECK_MESSAGE(best.output.find("checkpoint   " + ckpts + "/epoch=") != std::string::npos, best.output);
  auto p = test::cairn_cli({"predict", "--config", dir / "c.yaml", "--out", dir / "p.pt"});
  CHECK_MESSAGE(p.exit_code == 0, p.output);

  // A later fit, with another model even, must not start over silently.
  const std::string kept = test::read_file(ckpts + "/last.ckpt");
  auto refit = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "model.hidden=[8]"});
  CHECK(refit.exit_code == 2);
  CHECK_MESSAGE(refit.output.find("weights-only checkpoints") != std::string::npos, refit.output);
  CHECK(refit.output.find("--resume never --overwrite") != std::string::npos);
  CHECK(refit.output.find("--run-dir") != std::string::npos);
  CHECK(test::read_file(ckpts + "/last.ckpt") == kept);
  // Starting over is one flag away.
  auto over = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "model.hidden=[8]", "--overwrite"});
  CHECK_MESSAGE(over.exit_code == 0, over.output);
}

TEST_CASE("a checkpoint whose checksums verify but whose metric statistics cannot be the run's is exit 3 naming the "
          "key, never a crash") {
  test::TempDir dir("rundir_meaning");
  const std::string run = dir / "run", last = run + "/checkpoints/last.ckpt";
  test::write_file(dir / "c.yaml", job(run, 2, "every_n_train_steps: 3"));
  // Stopped mid-epoch (as SIGTERM would), so the file holds running statistics.
  cairn::register_builtin_callbacks();
  {
    auto spec = cairn::parse_experiment(dir / "c.yaml");
    auto t = cairn::build_trainer(spec);
    t->loop().on(cairn::Event::batch_end, [](cairn::Loop& l) {
      if (l.state().global_step == 5) l.state().request_interrupt(SIGTERM, "test stop");
    });
    REQUIRE(t->fit().interrupted);
  }
  const cairn::Value good = cairn::read_checkpoint(last);
  REQUIRE(good.at("loop").at("metric_states").contains("train/acc"));
  REQUIRE(good.at("loop").at("metric_states").contains("train/loss"));
  struct Wrong {
    std::string key, field;
    at::Tensor value;
    std::string says;
  };
  const std::vector<Wrong> cases{
      {"train/acc", "sums", at::empty({0}, at::kDouble), "sums holds 0 values, this metric keeps 2 (correct, counted)"},
      {"train/acc", "sums", at::zeros({5}, at::kDouble), "sums holds 5 values, this metric keeps 2 (correct, counted)"},
      {"train/loss", "sums", at::zeros({0}, at::kDouble), "a positive multiple of 1"},
      {"train/loss", "sums", at::zeros({1, 1}, at::kDouble), "sums must be a 1-D float64 tensor"},
      {"train/acc", "sums", at::zeros({1}, at::kFloat), "sums must be a 1-D float64 tensor"},
  };
  for (const auto& w : cases) {
    CAPTURE(w.says);
    cairn::Value bad = good;
    bad.at("loop").at("metric_states").at(w.key).set(w.field, w.value);
    cairn::write_checkpoint(last, bad);  // valid checksums, wrong contents
    auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
    CHECK_MESSAGE(r.exit_code == 3, r.output);
    CHECK_MESSAGE(r.output.find("loop.metric_states['" + w.key + "']") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find(w.says) != std::string::npos, r.output);
  }
  // The file as it was resumes and finishes.
  cairn::write_checkpoint(last, good);
  auto ok = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK_MESSAGE(ok.exit_code == 0, ok.output);
}

TEST_CASE("one rule for which checkpoint: fit's final test, cairn test, choose() and a resume take the same file") {
  test::TempDir dir("rundir_choose");
  const std::string run = dir / "run", ckpts = run + "/checkpoints";
  // save_top_k 1 on valid/loss (min): the best file is an epoch file, last.ckpt is the newest.
  test::write_file(dir / "c.yaml", job(run, 3, "monitor: valid/loss, mode: min, save_top_k: 1"));
  auto fit = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  REQUIRE_MESSAGE(fit.exit_code == 0, fit.output);

  const cairn::RunDir here(run);
  CHECK(here.checkpoints == ckpts);
  CHECK(here.config() == run + "/config.yaml");
  const cairn::CheckpointChoice best = cairn::choose(here, "best", cairn::Purpose::evaluate);
  REQUIRE_MESSAGE(best.found, best.why);
  const cairn::CheckpointChoice last = cairn::choose(here, "last", cairn::Purpose::evaluate);
  REQUIRE_MESSAGE(last.found, last.why);
  CHECK(test::fs::path(last.path).filename() == "last.ckpt");
  CHECK(test::fs::path(best.path).filename().string().rfind("epoch=", 0) == 0);
  CHECK(cairn::choose(here, "auto", cairn::Purpose::evaluate).path == best.path);
  CHECK(cairn::choose(here, "", cairn::Purpose::evaluate).path == best.path);
  // A resume takes the newest run state; "auto" means that for a resume.
  CHECK(cairn::choose(here, "auto", cairn::Purpose::resume).path == last.path);

  // The file fit's final test named is the one choose() gives, and the one `cairn test` evaluates.
  CHECK_MESSAGE(fit.output.find("cairn: testing the best checkpoint " + best.path + ": the trained weights (state_dict)\n") != std::string::npos, fit.output);
  auto tested = test::cairn_cli({"test", "--config", dir / "c.yaml", "--json"});
  REQUIRE_MESSAGE(tested.exit_code == 0, tested.output);
  CHECK_MESSAGE(tested.output.find(best.path) != std::string::npos, tested.output);

  // Moved elsewhere, the folder answers the same, by its new paths.
  const std::string moved = dir / "moved";
  test::fs::rename(run, moved);
  const cairn::CheckpointChoice again = cairn::choose(cairn::RunDir(moved), "best", cairn::Purpose::evaluate);
  REQUIRE_MESSAGE(again.found, again.why);
  CHECK(again.path == moved + "/checkpoints/" + test::fs::path(best.path).filename().string());

  // What cannot be met says why, and nothing is chosen.
  const cairn::CheckpointChoice none = cairn::choose(cairn::RunDir(dir / "empty"), "best", cairn::Purpose::evaluate);
  CHECK_FALSE(none.found);
  CHECK_MESSAGE(none.why.find("the run has no checkpoint in") != std::string::npos, none.why);
  const cairn::CheckpointChoice missing = cairn::choose(cairn::RunDir(moved), dir / "nope.ckpt", cairn::Purpose::evaluate);
  CHECK_FALSE(missing.found);
  CHECK(missing.why.find("no such file") != std::string::npos);

  // A resume that fails (this loop tracks no optimizer) leaves the folder free ...
  {
    cairn::Loop bare;
    CHECK_THROWS_WITH_AS(cairn::resume(bare, moved + "/checkpoints"), doctest::Contains("this run has 0"),
                         cairn::CheckpointMismatch);
    auto free = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--run-dir", moved});
    CHECK_MESSAGE(free.exit_code == 0, free.output);  // the finished run: nothing to do
  }
  // ... and a fit's hold on it is the run layer's lock, until fit_end.
  cairn::Loop loop;
  cairn::lock_for_fit(loop, moved + "/checkpoints");
  auto locked = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--run-dir", moved});
  CHECK_MESSAGE(locked.exit_code != 0, locked.output);
  CHECK_MESSAGE(locked.output.find("another process") != std::string::npos, locked.output);
  loop.fit_end();
  auto after = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--run-dir", moved});
  CHECK_MESSAGE(after.exit_code == 0, after.output);
}

TEST_CASE("a checkpoint that verifies but lacks the run's keys is exit 3 naming the key, before anything is printed") {
  test::TempDir dir("rundir_view");
  cairn::Value c = cairn::Value::dict();
  c.set("state_dict", cairn::Value::dict());
  c.set("global_step", int64_t{3});
  cairn::write_checkpoint(dir / "odd.ckpt", c);  // cairn's writer: every checksum is valid
  const std::vector<std::vector<std::string>> commands = {{"inspect", dir / "odd.ckpt"},
                                                          {"report", dir / "odd.ckpt", "--out", dir / "r.html"}};
  for (const auto& cmd : commands) {
    auto p = test::cairn_cli(cmd);
    CHECK_MESSAGE(p.exit_code == 3, cmd[0] << ": " << p.output);
    CHECK_MESSAGE(p.output.find("has no 'epoch'") != std::string::npos, cmd[0] << ": " << p.output);
    CHECK_MESSAGE(p.output.find("position") == std::string::npos, cmd[0] << ": " << p.output);
  }
  // A key of the wrong type is named too.
  c.set("epoch", "zero");
  c.set("batch_in_epoch", int64_t{0});
  cairn::write_checkpoint(dir / "odd.ckpt", c);
  auto p = test::cairn_cli({"inspect", dir / "odd.ckpt"});
  CHECK_MESSAGE(p.exit_code == 3, p.output);
  CHECK_MESSAGE(p.output.find("'epoch' is str, not an int") != std::string::npos, p.output);
}
