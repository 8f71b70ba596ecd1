// Resume you can trust: one owner per run, clean-state checkpoints, fallbacks
// that never destroy, no silent config drift, schedules that know their
// length, no success exit without a durable final state, and no API traps.
// Real `cairn` processes, real signals, a real small filesystem.
#include "support.h"

#include <cairn/callbacks.h>
#include <cairn/run_lock.h>

#include <random>
#include <sys/time.h>

namespace {
//! A Fashion-MNIST experiment whose schedule length is explicit (so that
//! max_epochs may change on resume) unless `scheduler` says otherwise.
std::string config(const std::string& run, int epochs, const std::string& extra_trainer = "",
                   const std::string& scheduler = "{name: cosine, warmup_steps: 5, total_steps: 200}",
                   const std::string& checkpoint = "{name: checkpoint, monitor: valid/acc, mode: max, save_top_k: 2, every_n_train_steps: 3}",
                   int limit_train = 640) {
  std::ostringstream c;
  c << "name: trust\nseed: 7\nrun: {dir: " << run << "}\n"
    << "data: {name: fashion_mnist, batch_size: 32, valid_fraction: 0.1, limit_train: " << limit_train
    << ", limit_test: 300}\n"
    << "model: {name: mlp, hidden: [32], dropout: 0.2}\n"
    << "optimizer: {name: adam, lr: 0.002}\n"
    << "scheduler: " << scheduler << "\n"
    << "trainer: {max_epochs: " << epochs << ", threads: 1, log_every_n_steps: 4" << extra_trainer << "}\n"
    << "callbacks:\n  - " << checkpoint << "\n  - {name: csv_logger}\n  - {name: progress_bar}\n";
  return c.str();
}

bool verifies(const std::string& path) {
  try {
    cairn::read_checkpoint(path);
    return true;
  } catch (const cairn::CheckpointError&) {
    return false;
  }
}

//! A synthetic classification run driven by a Trainer, for in-process tests.
struct Faulty : cairn::Trainer {
  using cairn::Trainer::Trainer;
  static constexpr int64_t kBatches = 13;  //!< training batches an epoch (200 samples, batch 16)
  int64_t throw_at_batch = -1;  //!< throw in the forward of this training batch (counted over the run)
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor out = cairn::Trainer::forward(x);  // the dropout RNG has advanced
    const auto& st = loop().state();
    if (st.stage == cairn::Stage::train && st.epoch * kBatches + st.batch_in_epoch == throw_at_batch) {
      throw std::runtime_error("injected fault in forward");
    }
    return out;
  }
};

cairn::Model dropout_mlp() {
  torch::manual_seed(5);
  auto net = torch::nn::Sequential(torch::nn::Linear(16, 24), torch::nn::ReLU(), torch::nn::Dropout(0.3),
                                   torch::nn::Linear(24, 4));
  return cairn::Model::wrap(net);
}

std::unique_ptr<Faulty> faulty_trainer(const std::string& run, int64_t accumulate) {
  auto t = std::make_unique<Faulty>(cairn::TrainerOptions().max_epochs(3).threads(1).accumulate_grad_batches(accumulate));
  t->set_model(dropout_mlp());
  t->set_data(test::synthetic(200, 16));
  t->loop().set_run_dir(run);
  t->add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().every_n_train_steps(4).save_top_k(0)));
  return t;
}
}  // namespace

TEST_CASE("a second process on a run in training is refused at once naming the holder; a killed one never blocks") {
  test::TempDir dir("lock");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", config(run, 60, "", "{name: cosine, warmup_steps: 5, total_steps: 2000}",
                                           "{name: checkpoint, every_n_train_steps: 5}", 6000));
  const pid_t first = test::spawn({CAIRN_CLI, "fit", "--config", dir / "c.yaml"}, dir / "first.log");
  REQUIRE(test::wait_until([&] { return test::read_file(dir / "first.log").find("cairn: run") != std::string::npos; }, 20));

  auto second = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK(second.exit_code == 4);
  CHECK(second.output.find("in use by another process") != std::string::npos);
  CHECK(second.output.find("pid " + std::to_string(first)) != std::string::npos);
  // The library refuses too (a Trainer or a hand-written Loop in another process).
  CHECK_THROWS_AS(cairn::RunLock::acquire(run), cairn::RunLocked);

  // Leftover temp files: one of a dead writer, one of a live process (this one).
  REQUIRE(test::wait_for_file(run + "/checkpoints/last.ckpt"));
  ::kill(first, SIGKILL);
  test::wait_exit(first);
  const std::string dead_tmp = run + "/checkpoints/last.ckpt.999999999-0.tmp";
  const std::string live_tmp = run + "/checkpoints/last.ckpt." + std::to_string(::getpid()) + "-0.tmp";
  test::write_file(dead_tmp, "partial");
  test::write_file(live_tmp, "partial");
  // The dead holder's lock is gone with it: the next process resumes.
  auto third = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=1"});
  CHECK_MESSAGE(third.exit_code == 0, third.output);
  CHECK(third.output.find("resumed from") != std::string::npos);
  CHECK_FALSE(test::fs::exists(dead_tmp));
  CHECK(test::fs::exists(live_tmp));
  // And the lock is free again once it has exited.
  CHECK_NOTHROW(cairn::RunLock::acquire(run));
}

TEST_CASE("a config change that alters the data, seed or model is refused (exit 2, one line per key)") {
  test::TempDir dir("drift");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", config(run, 1));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  const std::string saved_config = test::read_file(run + "/config.yaml");

  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=2", "--set",
                            "data.batch_size=64", "--set", "data.limit_train=1000", "--set", "seed=9"});
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("data.batch_size: 32 -> 64") != std::string::npos);
  CHECK(r.output.find("data.limit_train: 640 -> 1000") != std::string::npos);
  CHECK(r.output.find("seed: 7 -> 9") != std::string::npos);
  CHECK(r.output.find("--allow-config-change") != std::string::npos);
  CHECK(test::read_file(run + "/config.yaml") == saved_config);  // nothing was written

  // A safe change passes with a note.
  auto safe = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=2", "--set",
                               "trainer.log_every_n_steps=2"});
  CHECK_MESSAGE(safe.exit_code == 0, safe.output);
  CHECK(safe.output.find("note: config change on resume: trainer.log_every_n_steps: 4 -> 2") != std::string::npos);

  // Accepted explicitly: warned, and recorded in the checkpoint's resume history.
  auto forced = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=3", "--set",
                                 "trainer.log_every_n_steps=2", "--set", "seed=9", "--allow-config-change"});
  CHECK_MESSAGE(forced.exit_code == 0, forced.output);
  CHECK(forced.output.find("config change accepted (--allow-config-change): seed: 7 -> 9") != std::string::npos);
  const cairn::Value c = cairn::read_checkpoint(run + "/checkpoints/last.ckpt");
  const auto warnings = c.at("loop").at("resume_warnings");
  REQUIRE(warnings.size() == 1);
  CHECK(warnings.items()[0].to_string().find("seed: 7 -> 9") != std::string::npos);
  CHECK(test::read_file(run + "/config.yaml").find("seed: 9") != std::string::npos);
}

TEST_CASE("more epochs under a schedule derived from max_epochs are refused; never continue at lr 0 unsaid") {
  test::TempDir dir("lr0");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", config(run, 1, "", "{name: cosine}"));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=3"});
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("trainer.max_epochs: 1 -> 3") != std::string::npos);
  CHECK(r.output.find("derived from trainer.max_epochs") != std::string::npos);
  // Forced: the run goes on and says at which learning rate it starts.
  auto forced = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=3",
                                 "--allow-config-change"});
  CHECK_MESSAGE(forced.exit_code == 0, forced.output);
  CHECK(forced.output.find("; learning rate ") != std::string::npos);
  // The schedule ended at lr 0 in the first run: an explicit one that ended says so loudly.
  test::write_file(dir / "d.yaml", config(dir / "run2", 1, "", "{name: cosine, total_steps: 10}"));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "d.yaml"}).exit_code == 0);
  auto zero = test::cairn_cli({"fit", "--config", dir / "d.yaml", "--set", "trainer.max_epochs=2"});
  CHECK_MESSAGE(zero.exit_code == 0, zero.output);
  CHECK(zero.output.find("continues at learning rate 0") != std::string::npos);
}

TEST_CASE("step schedules count optimizer steps under gradient accumulation: cosine reaches min_lr") {
  test::TempDir dir("accum");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", config(run, 1, ", accumulate_grad_batches: 4", "{name: cosine, min_lr: 0.0}"));
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const cairn::Value c = cairn::read_checkpoint(run + "/checkpoints/last.ckpt");
  const double lr = c.at("optimizer_states").items()[0].at("param_groups").items()[0].at("lr").to_double();
  CHECK(lr == doctest::Approx(0.0).epsilon(1e-12));
  // 18 batches of 32 (576 samples) in cycles of 4: 5 optimizer steps.
  CHECK(c.at("global_step").to_int() == 5);
  CHECK(c.at("lr_schedulers").items()[0].at("step_count").to_int() == 5);
}

TEST_CASE("an exception in forward (dropout > 0) is rolled back to the batch boundary: resume is bit-identical") {
  for (int64_t accumulate : {1, 3}) {
    CAPTURE(accumulate);
    test::TempDir dir("exception_" + std::to_string(accumulate));
    {
      auto ref = faulty_trainer(dir / "ref", accumulate);
      REQUIRE(ref->fit().save_error.empty());
    }
    // A random batch of epoch 1 or 2; with accumulation, one in the middle of a cycle.
    std::mt19937 rng(17);
    const int64_t at = accumulate == 1 ? std::uniform_int_distribution<int64_t>(14, 38)(rng) : 13 + 4;
    CAPTURE(at);
    {
      auto t = faulty_trainer(dir / "run", accumulate);
      t->throw_at_batch = at;
      CHECK_THROWS_WITH(t->fit(), "injected fault in forward");
      CHECK_FALSE(t->loop().state().dirty);
    }
    const cairn::Value saved = cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt");
    // Saved: the state before the failing batch's accumulation cycle began.
    const int64_t batches_done = at - (at % Faulty::kBatches) % accumulate;
    CHECK(saved.at("epoch").to_int() * Faulty::kBatches + saved.at("batch_in_epoch").to_int() == batches_done);
    {
      auto t = faulty_trainer(dir / "run", accumulate);
      t->resume_from(dir / "run/checkpoints");
      REQUIRE(t->fit().save_error.empty());
      CHECK(t->resume_info().global_step == saved.at("global_step").to_int());
    }
    const auto a = test::comparable(cairn::read_checkpoint(dir / "ref/checkpoints/last.ckpt"));
    const auto b = test::comparable(cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt"));
    CHECK_MESSAGE(a.equals(b), a.first_difference(b));
  }
}

TEST_CASE("an exception after the optimizer step saves nothing dirty; the newest clean file resumes exactly") {
  test::TempDir dir("dirty");
  {
    auto ref = faulty_trainer(dir / "ref", 1);
    REQUIRE(ref->fit().save_error.empty());
  }
  struct ThrowAfterStep : cairn::Callback {
    std::string key() const override { return "ThrowAfterStep"; }
    void on_batch_end(cairn::Loop& l) override {
      if (l.state().global_step == 10) throw std::runtime_error("fault after the step");
    }
  };
  {
    auto t = faulty_trainer(dir / "run", 1);
    t->add_callback(std::make_shared<ThrowAfterStep>());
    CHECK_THROWS(t->fit());
    CHECK(t->loop().state().dirty);
  }
  // The newest clean file is the step-8 save (every 4 steps), not a half-step state.
  CHECK(cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt").at("global_step").to_int() == 8);
  {
    auto t = faulty_trainer(dir / "run", 1);
    t->resume_from(dir / "run/checkpoints");
    REQUIRE(t->fit().save_error.empty());
  }
  const auto a = test::comparable(cairn::read_checkpoint(dir / "ref/checkpoints/last.ckpt"));
  const auto b = test::comparable(cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt"));
  CHECK_MESSAGE(a.equals(b), a.first_difference(b));
}

TEST_CASE("cp -r without times and a damaged last.ckpt: the newest file by content resumes, the damaged one is set aside") {
  test::TempDir dir("copied");
  const std::string run = dir / "run", copy = dir / "copy";
  const std::string keep3 = "{name: checkpoint, every_n_train_steps: 3, save_top_k: 3}";
  const std::string sched = "{name: cosine, warmup_steps: 5, total_steps: 200}";
  test::write_file(dir / "c.yaml", config(run, 1, "", sched, keep3));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  const int64_t final_step = cairn::read_checkpoint(run + "/checkpoints/last.ckpt").at("global_step").to_int();
  REQUIRE(test::run({"/bin/cp", "-r", run, copy}).exit_code == 0);
  // Scramble the times: the oldest state looks newest, last.ckpt oldest.
  std::string oldest;
  int64_t oldest_step = INT64_MAX;
  for (const auto& e : test::fs::directory_iterator(copy + "/checkpoints")) {
    if (e.path().extension() != ".ckpt") continue;
    const int64_t step = cairn::read_checkpoint(e.path().string()).at("global_step").to_int();
    if (step < oldest_step) oldest_step = step, oldest = e.path().string();
  }
  REQUIRE(oldest_step < final_step);
  struct timeval future[2] = {{2000000000, 0}, {2000000000, 0}};
  ::utimes(oldest.c_str(), future);
  struct timeval past[2] = {{1000000000, 0}, {1000000000, 0}};
  ::utimes((copy + "/checkpoints/last.ckpt").c_str(), past);
  // Damage last.ckpt in the middle.
  {
    std::fstream f(copy + "/checkpoints/last.ckpt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(test::fs::file_size(copy + "/checkpoints/last.ckpt") / 2));
    f.write("\xde\xad\xbe\xef\xde\xad\xbe\xef", 8);
  }
  test::write_file(dir / "copy.yaml", config(copy, 2, "", sched, keep3));
  auto r = test::cairn_cli({"fit", "--config", dir / "copy.yaml", "--set", "trainer.max_epochs=2"});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("(global step " + std::to_string(final_step) + "); learning rate") != std::string::npos);
  CHECK(r.output.find("set aside as") != std::string::npos);
  CHECK(test::fs::exists(copy + "/checkpoints/last.ckpt.corrupt"));
  CHECK_FALSE(verifies(copy + "/checkpoints/last.ckpt.corrupt"));
  // Saves later, last.ckpt and its fallback both verify.
  CHECK(verifies(copy + "/checkpoints/last.ckpt"));
  CHECK(verifies(copy + "/checkpoints/last.prev.ckpt"));
  CHECK(cairn::read_checkpoint(copy + "/checkpoints/last.prev.ckpt").at("global_step").to_int() > final_step);
}

TEST_CASE("a final save that fails exits 5 naming the newest durable step; the next run continues from it") {
  // Every write of the continued run fails (a file-size limit below a checkpoint's size).
  test::TempDir dir("final_save");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", config(run, 1, "", "{name: cosine, warmup_steps: 5, total_steps: 200}",
                                           "{name: checkpoint, every_n_train_steps: 3, save_top_k: 0}"));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  const auto size = static_cast<long>(test::fs::file_size(run + "/checkpoints/last.ckpt"));
  const int64_t durable_step = cairn::read_checkpoint(run + "/checkpoints/last.ckpt").at("global_step").to_int();
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=2"}, size / 3);
  CHECK(r.exit_code == 5);
  CHECK(r.output.find("final checkpoint was not saved") != std::string::npos);
  CHECK(r.output.find("global step " + std::to_string(durable_step)) != std::string::npos);
  CHECK(r.output.find("cairn: finished") == std::string::npos);
  CHECK(cairn::read_checkpoint(run + "/checkpoints/last.ckpt").at("global_step").to_int() == durable_step);
  auto again = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=2"});
  CHECK_MESSAGE(again.exit_code == 0, again.output);
  CHECK(again.output.find("(global step " + std::to_string(durable_step) + "); learning rate") != std::string::npos);
}

TEST_CASE("on a full disk (tmpfs), a save that does not fit deletes nothing: with save_top_k 1 and no last.ckpt the "
          "only checkpoint stays; a final state that cannot fit exits 5") {
  test::TempDir dir("retention");
  const std::string mnt = dir / "disk";
  test::SmallDisk disk(mnt, 24l << 20);
  if (!disk.mounted()) {
    MESSAGE("not root: cannot mount a tmpfs here; this case runs in CI (root)");
    CHECK(::geteuid() != 0);
    return;
  }
  const std::string run = mnt + "/run";
  // k=1 newest files, no last.ckpt during training: each save's file replaces the previous one.
  test::write_file(dir / "c.yaml", config(run, 1, "", "{name: cosine, warmup_steps: 5, total_steps: 200}",
                                           "{name: checkpoint, every_n_train_steps: 6, save_top_k: 1, save_last: false}"));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  long size = 0;
  for (const auto& e : test::fs::directory_iterator(run + "/checkpoints")) {
    if (e.path().extension() == ".ckpt") size = std::max<long>(size, static_cast<long>(e.file_size()));
  }
  REQUIRE(size > 0);
  test::remove_tree(run);
  disk.leave_free(size * 3 / 2);  // room for one file and a half: two never fit together
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  // The first save fits; every later one fails on the full disk, loudly, and
  // the file retention would replace stays (it used to be freed for a retry
  // that failed too, leaving no checkpoint at all).
  CHECK(r.output.find("checkpoint not saved") != std::string::npos);
  CHECK(r.output.find("retrying") == std::string::npos);
  std::vector<std::string> files;
  for (const auto& e : test::fs::directory_iterator(run + "/checkpoints")) {
    if (e.path().extension() == ".ckpt") files.push_back(e.path().string());
  }
  REQUIRE(files.size() == 1);
  CHECK(verifies(files[0]));
  const int64_t step = cairn::read_checkpoint(files[0]).at("global_step").to_int();
  CHECK(step == 6);
  // The finished state cannot be saved: loud, exit 5, naming the durable file.
  CHECK(r.exit_code == 5);
  CHECK(r.output.find("newest durable checkpoint is " + files[0]) != std::string::npos);
  disk.remove_filler();
  auto again = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK_MESSAGE(again.exit_code == 0, again.output);
  CHECK(again.output.find("(global step " + std::to_string(step) + "); learning rate") != std::string::npos);
}

// The batch loss reaches TerminateOnNaN in all three ways in.
TEST_CASE("TerminateOnNaN sees the loss a Trainer subclass's training_step returns") {
  struct NanTrainer : cairn::Trainer {
    using cairn::Trainer::Trainer;
    at::Tensor training_step(const cairn::Batch& b) override {
      auto loss = torch::cross_entropy_loss(forward(b.x), b.y);
      return loop().state().global_step >= 3 ? loss * std::nan("") : loss;  // logs nothing itself
    }
  };
  // The loss is read at log points: logged every step, the NaN stops step 4.
  NanTrainer t(cairn::TrainerOptions().max_epochs(2).threads(1).log_every_n_steps(1));
  t.set_model(dropout_mlp());
  t.set_data(test::synthetic(128, 16));
  t.add_callback(std::make_shared<cairn::TerminateOnNaN>());
  const auto r = t.fit();
  CHECK(r.stop_reason.find("terminate on NaN") != std::string::npos);
  CHECK(t.loop().state().global_step == 4);
  // Logged every 50 steps (the default), it is caught at the end of the epoch (8 steps).
  NanTrainer late(cairn::TrainerOptions().max_epochs(2).threads(1));
  late.set_model(dropout_mlp());
  late.set_data(test::synthetic(128, 16));
  late.add_callback(std::make_shared<cairn::TerminateOnNaN>());
  const auto r2 = late.fit();
  CHECK_MESSAGE(r2.stop_reason.find("terminate on NaN: a training loss of epoch 1 was NaN") != std::string::npos, r2.stop_reason);
  CHECK(late.loop().state().global_step == 8);
}

TEST_CASE("TerminateOnNaN sees the train/loss a hand-written loop logs with log_step") {
  cairn::Loop loop;
  loop.add(std::make_shared<cairn::TerminateOnNaN>());
  loop.fit_begin();
  loop.epoch_begin();
  int batches = 0;
  for (int k = 0; k < 10 && !loop.should_stop(); ++k, ++batches) {
    loop.batch_begin();
    loop.log_step("train/loss", k == 2 ? std::nan("") : 1.0);
    loop.batch_end();
  }
  CHECK(loop.should_stop());
  CHECK(batches == 3);
}

TEST_CASE("TerminateOnNaN stops a YAML experiment whose learning rate diverges") {
  test::TempDir dir("nan_yaml");
  test::write_file(dir / "c.yaml",
                   "name: nan\nseed: 1\nrun: {dir: " + dir.str() + "/run}\n"
                   "data: {name: synthetic, train_size: 256, batch_size: 32}\n"
                   "model: {name: mlp, hidden: [16]}\noptimizer: {name: sgd, lr: 1.0e+30}\n"
                   "trainer: {max_epochs: 3, threads: 1}\ncallbacks:\n  - {name: terminate_on_nan}\n");
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK(r.output.find("terminate on NaN") != std::string::npos);
}

TEST_CASE("on_load_checkpoint reads back the keys a callback added to the checkpoint") {
  struct Extra : cairn::Callback {
    int64_t restored = -1;
    std::string key() const override { return "Extra"; }
    void on_save_checkpoint(cairn::Loop& l) override { l.pending_checkpoint().set("extra_key", int64_t{42}); }
    void on_load_checkpoint(cairn::Loop& l) override {
      REQUIRE(l.loaded_checkpoint() != nullptr);
      restored = l.loaded_checkpoint()->at("extra_key").to_int();
    }
  };
  test::TempDir dir("onload");
  torch::nn::Linear model(4, 2);
  cairn::Loop a;
  a.track(*model);
  a.add(std::make_shared<Extra>());
  cairn::write_checkpoint(dir / "x.ckpt", a.make_checkpoint());
  cairn::Loop b;
  b.track(*model);
  auto extra = std::make_shared<Extra>();
  b.add(extra);
  cairn::resume(b, dir / "x.ckpt");
  CHECK(extra->restored == 42);
  CHECK(b.loaded_checkpoint() == nullptr);
}

TEST_CASE("Loop::track rejects an optimizer it cannot save, at once, naming it") {
  torch::nn::Linear model(4, 2);
  torch::optim::LBFGS lbfgs(model->parameters());
  cairn::Loop loop;
  CHECK_THROWS_WITH_AS(loop.track(lbfgs), doctest::Contains("cannot save the state of this optimizer"),
                       std::invalid_argument);
}

TEST_CASE("metric series are saved as 1-D tensors whose cost does not grow with copies of the log") {
  cairn::MetricLog log;
  for (int i = 0; i < 1000; ++i) log.log(i % 2 ? "train/loss" : "valid/acc", i * 0.5, i / 10, i);
  const cairn::Value s = log.state_dict();
  const cairn::Value& v = s.at("train/loss").at("value");
  REQUIRE(v.is_tensor());
  CHECK(v.to_tensor().dim() == 1);
  CHECK((v.to_tensor().scalar_type() == at::kDouble));
  CHECK(v.to_tensor().numel() == 500);
  CHECK((s.at("valid/acc").at("seq").to_tensor().scalar_type() == at::kLong));
  // Later points (and a roll-back) never change what an earlier state_dict holds.
  const auto before = s.at("train/loss").at("value").to_double_list();
  for (int i = 0; i < 5000; ++i) log.log("train/loss", -1.0, 0, 0);
  log.truncate(1000);
  log.log("train/loss", 7.0, 0, 0);
  CHECK((s.at("train/loss").at("value").to_double_list() == before));
  CHECK(log.count("train/loss") == 501);
  // And a round trip keeps the journal order.
  cairn::MetricLog back;
  back.load_state_dict(log.state_dict());
  REQUIRE(back.rows().size() == log.rows().size());
  CHECK(back.rows().back().point.value == 7.0);
  CHECK(back.series("valid/acc").size() == 500);
}

TEST_CASE("the progress bar shows the batch loss of a hand-written loop (log_step is the one way)") {
  test::TempDir dir("own_loop_progress");
  std::FILE* out = std::fopen((dir / "progress.txt").c_str(), "w+");
  REQUIRE(out != nullptr);
  {
    cairn::Loop loop;
    cairn::ProgressBarOptions o;
    o.log_every_n_steps = 1;
    o.model_summary = false;
    loop.add(std::make_shared<cairn::ProgressBar>(o, out));
    loop.state().max_epochs = 1;
    loop.state().batches_per_epoch = 3;
    loop.fit_begin();
    loop.epoch_begin();
    for (int k = 0; k < 3; ++k) {
      loop.batch_begin();
      loop.log_step("train/loss", 2.5 - k);
      loop.batch_end();
    }
    loop.epoch_end();
    loop.fit_end();
  }
  std::fclose(out);
  const std::string text = test::read_file(dir / "progress.txt");
  CHECK(text.find("step 1/3") != std::string::npos);
  CHECK(text.find("loss 2.5000") != std::string::npos);
  CHECK(text.find("loss 0.5000") != std::string::npos);
}

TEST_CASE("a model that cannot take the data fails its first step in one line with the shapes, and rolls back cleanly") {
  test::TempDir dir("first_step");
  cairn::SyntheticOptions so;  // 16 features
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(1).threads(1));
  t.set_model(cairn::Model::wrap(cairn::make_mlp({{8}, {4}, so.num_classes, 0.0})));  // takes 8
  t.set_data(std::make_shared<cairn::SyntheticData>(so));
  t.loop().set_run_dir(dir.str());
  t.add_callback(std::make_shared<cairn::Checkpoint>());
  std::string what;
  try {
    t.fit();
  } catch (const std::runtime_error& e) {
    what = e.what();
  }
  CHECK_MESSAGE(what.find("the first training step failed on a batch of inputs shaped [") != std::string::npos, what);
  CHECK(what.find(", 16]") != std::string::npos);
  CHECK(what.find("mat1 and mat2") != std::string::npos);
  CHECK(what.find('\n') == std::string::npos);
  // Nothing had stepped: the state rolled back and was saved (it used to be
  // reported as "in the middle of an optimizer step").
  CHECK_FALSE(t.loop().state().dirty);
  CHECK(cairn::read_checkpoint(dir / "checkpoints/last.ckpt").at("global_step").to_int() == 0);
  CHECK(cairn::short_error("x\nTraceback of TorchScript (most recent call last):\n  File ...\nRuntimeError: boom\n") ==
        "RuntimeError: boom");
}
