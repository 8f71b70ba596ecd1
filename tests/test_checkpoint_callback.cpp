// The Checkpoint callback: top-k retention, best values across resume,
// coexisting monitors, corrupt-file fallback, failed writes.
#include "support.h"

#include <cairn/callbacks.h>

#include <future>
#include <set>
#include <sys/resource.h>

namespace {
std::set<std::string> ckpt_files(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : test::fs::directory_iterator(dir)) {
    if (e.path().extension() == ".ckpt") out.insert(e.path().filename().string());
  }
  return out;
}

//! A hand-driven loop whose "validation" logs scripted values.
struct Scripted {
  torch::nn::Linear model{4, 2};
  cairn::Loop loop;
  bool begun = false;
  explicit Scripted(const std::string& run) {
    loop.set_run_dir(run);
    loop.track(*model);
  }
  void begin() {
    if (!begun) loop.fit_begin();
    begun = true;
  }
  void epoch(double value, const std::string& metric = "valid/acc", int batches = 2) {
    begin();
    loop.epoch_begin();
    for (int i = 0; i < batches; ++i) {
      loop.batch_begin();
      loop.batch_end();
    }
    loop.validation_begin();
    loop.metrics().accumulate(metric, value);
    loop.validation_end();
    loop.epoch_end();
    settle();
  }
  //! Waits for background writes so the test can look at the files.
  void settle() {
    for (const auto& cb : loop.callbacks()) {
      if (auto c = std::dynamic_pointer_cast<cairn::Checkpoint>(cb)) c->wait_for_pending(loop);
    }
  }
};
}  // namespace

TEST_CASE("top-k keeps the k best in max mode, never deleting the best or the newest") {
  test::TempDir dir("topk_max");
  Scripted s(dir.str());
  auto cb = std::make_shared<cairn::Checkpoint>(
      cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max).save_top_k(2).filename("e{epoch}-{valid/acc:.2f}"));
  s.loop.add(cb);
  const std::string ck = dir / "checkpoints";
  s.epoch(0.50);
  CHECK(ckpt_files(ck) == std::set<std::string>{"e0-0.50.ckpt", "last.ckpt"});
  s.epoch(0.70);
  CHECK(ckpt_files(ck) == std::set<std::string>{"e0-0.50.ckpt", "e1-0.70.ckpt", "last.ckpt", "last.prev.ckpt"});
  s.epoch(0.60);  // beats 0.50: replaces it
  CHECK(ckpt_files(ck) == std::set<std::string>{"e1-0.70.ckpt", "e2-0.60.ckpt", "last.ckpt", "last.prev.ckpt"});
  s.epoch(0.55);  // worse than both: not kept, but last.ckpt holds it
  CHECK(ckpt_files(ck) == std::set<std::string>{"e1-0.70.ckpt", "e2-0.60.ckpt", "last.ckpt", "last.prev.ckpt"});
  CHECK(cairn::read_checkpoint(ck + "/last.ckpt").at("epoch").to_int() == 4);
  CHECK(test::fs::path(cb->best_model_path()).filename() == "e1-0.70.ckpt");
  CHECK(*cb->best_model_score() == 0.70);
  // The best file holds the state of its epoch.
  CHECK(cairn::read_checkpoint(ck + "/e1-0.70.ckpt").at("epoch").to_int() == 2);
}

TEST_CASE("top-k in min mode, and save_top_k -1 keeps every file") {
  test::TempDir dir("topk_min");
  Scripted s(dir.str());
  s.loop.add(std::make_shared<cairn::Checkpoint>(
      cairn::CheckpointOptions().monitor("valid/loss").mode(cairn::Mode::min).save_top_k(1).save_last(false).filename("{valid/loss:.1f}")));
  s.loop.add(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions(dir / "all")
                                                    .monitor("valid/loss")
                                                    .mode(cairn::Mode::max)
                                                    .save_top_k(-1)
                                                    .save_last(false)
                                                    .filename("{valid/loss:.1f}")));
  for (double v : {0.9, 0.4, 0.6, 0.3}) s.epoch(v, "valid/loss");
  CHECK(ckpt_files(dir / "checkpoints") == std::set<std::string>{"0.3.ckpt"});
  CHECK(ckpt_files(dir / "all") == std::set<std::string>{"0.9.ckpt", "0.4.ckpt", "0.6.ckpt", "0.3.ckpt"});
}

TEST_CASE("a step-triggered save before the first validation writes last.ckpt only") {
  test::TempDir dir("early_save");
  Scripted s(dir.str());
  s.loop.add(std::make_shared<cairn::Checkpoint>(
      cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max).every_n_train_steps(1)));
  s.begin();
  s.loop.epoch_begin();
  s.loop.batch_begin();
  s.loop.batch_end();
  s.settle();
  CHECK(ckpt_files(dir / "checkpoints") == std::set<std::string>{"last.ckpt"});
  CHECK(cairn::read_checkpoint(dir / "checkpoints/last.ckpt").at("global_step").to_int() == 1);
}

TEST_CASE("the best value survives resume: a worse value never replaces a better file") {
  test::TempDir dir("best_resume");
  const std::string ck = dir / "checkpoints";
  auto opts = cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max).save_top_k(1).filename("e{epoch}");
  {
    Scripted s(dir.str());
    s.loop.add(std::make_shared<cairn::Checkpoint>(opts));
    s.epoch(0.8);
    s.epoch(0.6);
  }
  Scripted s(dir.str());
  auto cb = std::make_shared<cairn::Checkpoint>(opts);
  s.loop.add(cb);
  REQUIRE(cairn::resume(s.loop, ck).resumed);
  CHECK(*cb->best_model_score() == 0.8);
  s.epoch(0.7);  // better than the last epoch, worse than the best
  CHECK(ckpt_files(ck).count("e0.ckpt") == 1);
  CHECK(ckpt_files(ck).count("e2.ckpt") == 0);
  s.epoch(0.9);
  CHECK(ckpt_files(ck).count("e3.ckpt") == 1);
  CHECK(ckpt_files(ck).count("e0.ckpt") == 0);
}

TEST_CASE("checkpoint callbacks with different monitors keep separate state") {
  test::TempDir dir("two_monitors");
  Scripted s(dir.str());
  auto by_acc = std::make_shared<cairn::Checkpoint>(
      cairn::CheckpointOptions(dir / "acc").monitor("valid/acc").mode(cairn::Mode::max));
  auto by_loss = std::make_shared<cairn::Checkpoint>(
      cairn::CheckpointOptions(dir / "loss").monitor("valid/loss").mode(cairn::Mode::min));
  s.loop.add(by_acc);
  s.loop.add(by_loss);
  s.begin();
  s.loop.epoch_begin();
  s.loop.validation_begin();
  s.loop.metrics().accumulate("valid/acc", 0.9);
  s.loop.metrics().accumulate("valid/loss", 0.2);
  s.loop.validation_end();
  s.loop.epoch_end();
  s.settle();
  // Each file holds its own callback's updated state under its own key.
  const cairn::Value a = cairn::read_checkpoint(dir / "acc/last.ckpt");
  const cairn::Value l = cairn::read_checkpoint(dir / "loss/last.ckpt");
  CHECK(a.at("callbacks").at(by_acc->key()).at("best_model_score").to_double() == 0.9);
  CHECK(l.at("callbacks").at(by_loss->key()).at("best_model_score").to_double() == 0.2);
  CHECK(l.at("callbacks").at(by_acc->key()).at("best_model_score").to_double() == 0.9);
  CHECK(by_acc->key() != by_loss->key());
}

TEST_CASE("'/' in metric names gives valid file names") {
  test::TempDir dir("slash");
  Scripted s(dir.str());
  auto cb = std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max));
  s.loop.add(cb);
  s.epoch(0.8125);
  CHECK(ckpt_files(dir / "checkpoints").count("epoch=0-step=2-valid_acc=0.8125.ckpt") == 1);
}

TEST_CASE("resume auto falls back to the newest checkpoint that verifies, naming what it skipped") {
  struct Damage {
    const char* what;
    std::function<std::string(const std::string&)> apply;
  };
  const std::vector<Damage> damages = {
      {"truncated", [](const std::string& b) { return b.substr(0, b.size() - 100); }},
      {"flipped byte", [](const std::string& b) {
         std::string c = b;
         const auto p = c.find("valid/acc");
         c[p] = 'V';
         return c;
       }},
      {"empty", [](const std::string&) { return std::string(); }},
      {"not a checkpoint", [](const std::string&) { return std::string("hello\n"); }},
  };
  for (const auto& d : damages) {
    CAPTURE(std::string(d.what));
    test::TempDir dir("fallback");
    const std::string ck = dir / "checkpoints";
    {
      Scripted s(dir.str());
      s.loop.add(std::make_shared<cairn::Checkpoint>(
          cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max).save_top_k(1).filename("best")));
      s.epoch(0.9);  // best.ckpt (epoch 1) is kept
      s.epoch(0.5);  // last.ckpt at epoch 2
    }
    test::write_file(ck + "/last.ckpt", d.apply(test::read_file(ck + "/last.ckpt")));
    test::fs::last_write_time(ck + "/last.ckpt", test::fs::file_time_type::clock::now());
    Scripted s(dir.str());
    s.loop.add(std::make_shared<cairn::Checkpoint>(
        cairn::CheckpointOptions().monitor("valid/acc").mode(cairn::Mode::max).save_top_k(1).filename("best")));
    const cairn::ResumeInfo info = cairn::resume(s.loop, ck);
    CHECK(info.resumed);
    REQUIRE(info.skipped.size() == 1);
    CHECK(info.skipped[0].find("last.ckpt") != std::string::npos);
    // last.prev.ckpt (the epoch-1 state, hard-linked to best.ckpt) is the next newest.
    CHECK(s.loop.state().epoch == 1);
  }
}

TEST_CASE("resume auto with every checkpoint corrupt is an error, not a fresh start") {
  test::TempDir dir("all_corrupt");
  test::fs::create_directories(dir / "checkpoints");
  test::write_file(dir / "checkpoints/last.ckpt", "junk");
  cairn::Loop loop;
  CHECK_THROWS_AS(cairn::resume(loop, dir / "checkpoints"), cairn::CheckpointError);
  // Through the CLI: exit 3.
  test::write_file(dir / "c.yaml", test::small_config(dir.str(), "", 1, 320));
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK(r.exit_code == 3);
  CHECK(r.output.find("corrupt") != std::string::npos);
}

TEST_CASE("a failed checkpoint write keeps the last good file; training warns and goes on, or stops") {
  for (const char* on_error : {"warn", "stop"}) {
    CAPTURE(on_error);
    test::TempDir dir("disk_full");
    Scripted s(dir.str());
    auto cb = std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().on_error(on_error).save_top_k(0));
    s.loop.add(cb);
    s.epoch(0.5);
    const std::string last = dir / "checkpoints/last.ckpt";
    const std::string good = test::read_file(last);
    REQUIRE(!good.empty());

    // A "full disk": the process may not write files bigger than 1 KiB.
    struct rlimit old {};
    ::getrlimit(RLIMIT_FSIZE, &old);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 1024;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
    s.epoch(0.6);
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);

    CHECK(test::read_file(last) == good);
    CHECK(cairn::read_checkpoint(last).at("epoch").to_int() == 1);
    CHECK(s.loop.should_stop() == (std::string(on_error) == "stop"));
    if (s.loop.should_stop()) CHECK(s.loop.state().stop.reason.find("checkpoint write failed") != std::string::npos);
    // With space again, the next save succeeds.
    s.epoch(0.7);
    CHECK(cairn::read_checkpoint(last).at("epoch").to_int() == 3);
  }
}

TEST_CASE("an async save writes the state of its save point even if training changes it right after") {
  test::TempDir dir("async_snapshot");
  Scripted s(dir.str());
  auto cb = std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().save_top_k(0).async_save(true));
  s.loop.add(cb);
  s.begin();
  s.loop.epoch_begin();
  s.loop.validation_begin();
  s.loop.validation_end();
  const at::Tensor before = s.model->weight.detach().clone();
  s.loop.epoch_end();  // the save is in flight now (or already done)
  {
    torch::NoGradGuard g;
    s.model->weight.add_(1.0);  // training goes on, mutating the weights in place
  }
  REQUIRE(cb->wait_for_pending(s.loop));
  const cairn::Value c = cairn::read_checkpoint(dir / "checkpoints/last.ckpt");
  CHECK(c.at("state_dict").at("weight").to_tensor().equal(before));
  CHECK(cb->last_save_bytes() > 0);
  CHECK(cb->last_blocking_seconds() >= 0.0);
}

TEST_CASE("async and sync saves of the same state give the same checkpoint") {
  test::TempDir dir("async_vs_sync");
  cairn::Value files[2];
  for (int async = 0; async < 2; ++async) {
    torch::manual_seed(4);
    Scripted s(dir / std::to_string(async));
    s.loop.add(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().save_top_k(0).async_save(async == 1)));
    s.epoch(0.5);
    s.epoch(0.6);
    files[async] = test::comparable(cairn::read_checkpoint(dir / (std::to_string(async) + "/checkpoints/last.ckpt")));
  }
  CHECK(files[0].first_difference(files[1]) == "");
}

TEST_CASE("the background writer runs one job at a time and reports its failure") {
  cairn::BackgroundWriter w;
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  w.submit([gate] { gate.wait(); });
  CHECK(w.busy());
  CHECK(w.pending());
  CHECK_THROWS_AS(w.submit([] {}), std::logic_error);
  release.set_value();
  CHECK(w.wait() == nullptr);
  CHECK(!w.busy());
  CHECK(!w.pending());
  w.submit([] { throw std::runtime_error("disk on fire"); });
  std::exception_ptr e = w.wait();
  REQUIRE(e != nullptr);
  CHECK_THROWS_WITH(std::rethrow_exception(e), "disk on fire");
}

TEST_CASE("save_weights_only files hold the model and are skipped by resume") {
  test::TempDir dir("weights_only");
  {
    Scripted s(dir.str());
    s.loop.add(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions(dir / "full").save_top_k(0)));
    s.loop.add(std::make_shared<cairn::Checkpoint>(
        cairn::CheckpointOptions(dir / "weights").save_top_k(0).save_weights_only(true).every_n_epochs(1).monitor("valid/acc")));
    s.epoch(0.5);
  }
  const cairn::Value w = cairn::read_checkpoint(dir / "weights/last.ckpt");
  CHECK(w.at("weights_only").to_bool());
  CHECK(w.at("state_dict").contains("weight"));
  CHECK(!w.contains("optimizer_states"));
  auto model = torch::nn::Linear(4, 2);
  cairn::load_weights(*model, dir / "weights/last.ckpt");  // fine-tuning from it works
  cairn::Loop loop;
  loop.track(*model);
  CHECK_THROWS_WITH_AS(cairn::resume(loop, dir / "weights/last.ckpt"), doctest::Contains("holds weights only"),
                       cairn::CheckpointError);
  // This loop has none of the callbacks whose state the file holds: refused,
  // naming them, unless dropping it is allowed.
  CHECK_THROWS_WITH_AS(cairn::resume(loop, dir / "full"), doctest::Contains("Checkpoint{monitor=None,mode=min}"),
                       cairn::UnclaimedState);
  loop.set_allow_unclaimed_state(true);
  CHECK(cairn::resume(loop, dir / "full").resumed);
}

namespace {
struct ThrowsAt : cairn::Trainer {
  int64_t bad_step;
  ThrowsAt(cairn::TrainerOptions o, int64_t s) : cairn::Trainer(std::move(o)), bad_step(s) {}
  at::Tensor training_step(const cairn::Batch& b) override {
    if (loop().state().global_step + 1 == bad_step) throw std::runtime_error("bad batch");
    return cairn::Trainer::training_step(b);
  }
};
}  // namespace

TEST_CASE("a step that throws saves last.ckpt (save_on_exception), then the exception propagates") {
  test::TempDir dir("on_exception");
  ThrowsAt t(cairn::TrainerOptions().max_epochs(2), 7);
  t.set_model(cairn::Model::wrap(cairn::make_mlp({{16}, {8}, 4, 0.0}))).set_data(test::synthetic(128, 16));
  t.loop().set_run_dir(dir.str());
  t.add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().every_n_train_steps(100)));
  CHECK_THROWS_WITH_AS(t.fit(), "bad batch", std::runtime_error);
  const cairn::Value c = cairn::read_checkpoint(dir / "checkpoints/last.ckpt");
  CHECK(c.at("global_step").to_int() == 6);
  CHECK(!c.at("loop").at("finished").to_bool());
}
