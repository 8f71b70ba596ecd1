// Exact resume in-process: a run interrupted anywhere and resumed ends bit for
// bit where an uninterrupted run ends (CPU, same threads).
#include "support.h"

#include <cairn/callbacks.h>

namespace {
// Synthetic data (fast) with dropout, a cosine schedule, early stopping and
// two checkpoint callbacks: every part of the state is exercised.
std::string config(const std::string& run) {
  return "name: exact\nseed: 11\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 300, valid_size: 64, test_size: 64, batch_size: 16, features: 16}\n"
         "model: {name: mlp, hidden: [24, 12], dropout: 0.3}\n"
         "metrics: [accuracy, {name: f1, average: macro}, {name: top_k_accuracy, k: 2}]\n"
         "optimizer: {name: adamw, lr: 0.01}\n"
         "scheduler: {name: cosine, warmup_steps: 7, min_lr: 0.0001}\n"
         "trainer: {max_epochs: 4, threads: 1, log_every_n_steps: 5, enable_progress_bar: false,\n"
         "          gradient_clip_val: 0.5}\n"
         "callbacks:\n"
         "  - {name: checkpoint, monitor: valid/acc, mode: max, save_top_k: 2, every_n_train_steps: 4}\n"
         "  - {name: checkpoint, monitor: valid/loss, mode: min, save_top_k: 1, dirpath: " + run + "/by_loss}\n"
         "  - {name: early_stopping, monitor: valid/loss, patience: 10}\n"
         "  - {name: lr_monitor}\n"
         "  - {name: jsonl_logger}\n"
         "  - {name: tensorboard}\n"
         "  - {name: terminate_on_nan}\n";
}

std::unique_ptr<cairn::Trainer> make(const std::string& dir) {
  cairn::register_builtin_callbacks();
  test::write_file(dir + ".yaml", config(dir));
  auto spec = cairn::parse_experiment(dir + ".yaml");
  auto t = cairn::build_trainer(spec);
  t->resume_from(dir + "/checkpoints");
  return t;
}

cairn::Value final_state(const std::string& dir) {
  return test::comparable(cairn::read_checkpoint(dir + "/checkpoints/last.ckpt"));
}

//! Runs to the end, interrupting (as SIGTERM would) at each of `stops`:
//! either a global step, or -(epoch+1) for "at the end of that epoch".
void run_with_stops(const std::string& dir, std::vector<int64_t> stops) {
  for (size_t i = 0;; ++i) {
    auto t = make(dir);
    const int64_t stop = i < stops.size() ? stops[i] : 0;
    if (stop > 0) {
      t->loop().on(cairn::Event::batch_end, [stop](cairn::Loop& l) {
        if (l.state().global_step == stop) l.state().request_interrupt(SIGTERM, "test stop");
      });
    } else if (stop < 0) {
      t->loop().on(cairn::Event::epoch_end, [stop](cairn::Loop& l) {
        if (l.state().epoch == -stop - 1) l.state().request_interrupt(SIGTERM, "test stop at epoch end");
      });
    }
    const cairn::FitResult r = t->fit();
    if (i < stops.size()) {
      REQUIRE(r.interrupted);
    } else {
      REQUIRE(!r.interrupted);
      return;
    }
  }
}
}  // namespace

TEST_CASE("resumed runs equal the uninterrupted run bit for bit") {
  test::TempDir dir("resume_exact");
  run_with_stops(dir / "ref", {});
  const cairn::Value ref = final_state(dir / "ref");
  const std::string ref_csv = test::read_file(dir / "ref/metrics.csv");
  REQUIRE(ref.at("global_step").to_int() == 4 * 19);
  REQUIRE(ref.at("loop").at("finished").to_bool());

  struct Case {
    const char* what;
    std::vector<int64_t> stops;
  };
  const std::vector<Case> cases = {
      {"mid-epoch", {5}},
      {"at an epoch boundary", {-1}},
      {"right after a step-triggered save", {8}},
      {"on the last batch of an epoch", {19}},
      {"several times", {3, 21, -3, 70}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    const std::string run = dir / ("run_" + std::to_string(&c - &cases[0]));
    run_with_stops(run, c.stops);
    const cairn::Value got = final_state(run);
    CHECK_MESSAGE(ref.first_difference(got) == "", ref.first_difference(got));
    // Spot checks of the parts that matter most, so a comparison bug cannot hide them.
    CHECK(got.at("state_dict").equals(ref.at("state_dict")));
    CHECK(got.at("optimizer_states").equals(ref.at("optimizer_states")));
    CHECK(got.at("lr_schedulers").equals(ref.at("lr_schedulers")));
    CHECK(got.at("rng_states").equals(ref.at("rng_states")));
    CHECK(got.at("metrics").equals(ref.at("metrics")));
    // An epoch's F1 comes from its running counts, saved mid-epoch and restored.
    CHECK(got.at("metrics").at("train/f1_macro").at("value").to_tensor().numel() == 4);
    CHECK(got.at("callbacks").equals(ref.at("callbacks")));
    CHECK(test::read_file(run + "/metrics.csv") == ref_csv);
    CHECK(test::read_file(run + "/metrics.jsonl") == test::read_file(dir / "ref/metrics.jsonl"));
    // The run knows where it was resumed.
    const auto resumes = cairn::read_checkpoint(run + "/checkpoints/last.ckpt").at("loop").at("resumes");
    CHECK(resumes.size() == c.stops.size());
  }
}

TEST_CASE("a deliberately different run is detected by the same comparison") {
  // Guards the test above: the comparison must be able to fail.
  test::TempDir dir("resume_differs");
  run_with_stops(dir / "a", {});
  auto t = make(dir / "b");
  t->loop().on(cairn::Event::batch_end, [](cairn::Loop& l) {
    if (l.state().global_step == 10) torch::rand({1});  // one extra draw from the global generator
  });
  t->fit();
  CHECK(final_state(dir / "a").first_difference(final_state(dir / "b")) != "");
}

TEST_CASE("user values, registered generators and tracked objects are restored") {
  test::TempDir dir("resume_values");
  struct Counter : cairn::Stateful {
    int64_t n = 0;
    cairn::Value state_dict() const override { return cairn::Value(n); }
    void load_state_dict(const cairn::Value& v) override { n = v.to_int(); }
  };
  auto gen = at::detail::createCPUGenerator(99);
  Counter counter;
  {
    cairn::Loop loop;
    loop.track("counter", counter);
    loop.track_generator("augment", gen);
    loop.values().set("n_classes", int64_t{1000});
    loop.values().set("labels", std::vector<std::string>{"cat", "dog"});
    counter.n = 42;
    torch::rand({3}, gen);
    cairn::write_checkpoint(dir / "a.ckpt", loop.make_checkpoint());
  }
  const auto expected_next = torch::rand({2}, gen);
  Counter restored;
  auto gen2 = at::detail::createCPUGenerator(1);
  cairn::Loop loop;
  loop.track("counter", restored);
  loop.track_generator("augment", gen2);
  auto info = cairn::resume(loop, dir / "a.ckpt");
  CHECK(info.resumed);
  CHECK(restored.n == 42);
  CHECK(loop.values().get<int64_t>("n_classes") == 1000);
  CHECK(loop.values().get<cairn::Value>("labels").items()[1].to_string() == "dog");
  CHECK(torch::rand({2}, gen2).equal(expected_next));
}
