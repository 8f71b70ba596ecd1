// A training step reads nothing back from the device between log points:
// the loss and every metric accumulate on the device, and are read at
// log_every_n_steps points, on steps a checkpoint is saved (so TerminateOnNaN
// sees the loss first), and at epoch end. Counted with cairn's own counter
// (host_sync.h), so it runs on a CPU; on a GPU each read is a wait.
#include "support.h"

#include <cairn/callbacks.h>

namespace {
struct Counted {
  std::vector<std::pair<int64_t, int64_t>> per_step;  //!< (global step, reads since the previous batch_end)
};

Counted train(cairn::TrainerOptions options, const std::string& dir, int64_t save_every) {
  cairn::Trainer t(options.threads(1));
  torch::manual_seed(0);
  t.set_model(cairn::Model::wrap(torch::nn::Sequential(torch::nn::Linear(16, 32), torch::nn::ReLU(), torch::nn::Dropout(0.2),
                                                       torch::nn::Linear(32, 4))));
  t.set_data(test::synthetic(320, 16));  // 20 steps per epoch
  t.add_metric(std::make_shared<cairn::Accuracy>());
  t.add_metric(std::make_shared<cairn::F1Score>(4, cairn::F1Score::macro));
  t.add_callback(std::make_shared<cairn::TerminateOnNaN>());
  if (save_every > 0) {
    t.add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions(dir).every_n_train_steps(save_every)));
  }
  Counted c;
  int64_t last = -1;
  t.loop().on(cairn::Event::epoch_begin, [&](cairn::Loop&) { last = -1; });
  t.loop().on(
      cairn::Event::batch_end,
      [&](cairn::Loop& l) {
        const int64_t now = cairn::host_reads();
        if (last >= 0) c.per_step.emplace_back(l.state().global_step, now - last);
        last = now;
      },
      cairn::Order::saver);
  REQUIRE_FALSE(t.fit().interrupted);
  return c;
}
}  // namespace

TEST_CASE("a training step reads nothing from the device between log points") {
  test::TempDir dir("host_reads");
  // log every 10 steps, a checkpoint every 7: a read on exactly those steps.
  const Counted c = train(cairn::TrainerOptions().max_epochs(2).log_every_n_steps(10), dir / "a", 7);
  REQUIRE(c.per_step.size() == 2 * 19);
  int64_t total = 0;
  for (const auto& s : c.per_step) {
    CAPTURE(s.first);
    const int64_t expected = (s.first % 10 == 0 || s.first % 7 == 0) ? 1 : 0;
    CHECK(s.second == expected);
    total += s.second;
  }
  MESSAGE("host reads in " << c.per_step.size() << " steps: " << total);
  // Gradient clipping by norm reads nothing either (the clip factor stays on the device).
  const Counted clipped =
      train(cairn::TrainerOptions().max_epochs(1).log_every_n_steps(1000).gradient_clip_val(0.5), dir / "b", 0);
  for (const auto& s : clipped.per_step) CHECK(s.second == 0);
}

TEST_CASE("the loss kept on the device logs what was read before: step values at log points, exact epoch means") {
  // The same numbers a host-side mean gives: each batch loss x its size, summed in float64.
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(1).log_every_n_steps(4).threads(1));
  torch::manual_seed(0);
  t.set_model(cairn::Model::wrap(torch::nn::Sequential(torch::nn::Linear(16, 4))));
  t.set_data(test::synthetic(100, 16));  // 7 batches: 6 of 16 and one of 4
  std::vector<double> losses, sizes;
  t.loop().on(cairn::Event::batch_end, [&](cairn::Loop& l) { sizes.push_back(static_cast<double>(l.state().batch_size)); });
  struct Spy : cairn::Callback {
    std::vector<double>* out;
    std::string key() const override { return "Spy"; }
    bool needs_batch_loss(const cairn::Loop&) const override { return true; }  // read every step, for the test
    void on_batch_end(cairn::Loop& l) override { out->push_back(l.state().batch_loss); }
  };
  auto spy = std::make_shared<Spy>();
  spy->out = &losses;
  t.add_callback(spy);
  t.fit();
  REQUIRE(losses.size() == 7);
  double sum = 0, weight = 0;
  for (size_t i = 0; i < losses.size(); ++i) sum += losses[i] * sizes[i], weight += sizes[i];
  CHECK(t.loop().metrics().last("train/loss").value() == sum / weight);
  const auto steps = t.loop().metrics().series("train/loss_step");
  REQUIRE(steps.size() == 1);  // step 4
  CHECK(steps[0].step == 4);
  CHECK(steps[0].value == losses[3]);
}

TEST_CASE("the step path's sources read device values only through the counted functions") {
  // What the counter cannot see, the source can: a bare item() or cpu() in
  // these files would be an uncounted host read in every step.
  const std::string src = std::string(CAIRN_SOURCE_DIR) + "/framework/core/src/";
  for (const char* file : {"trainer.cpp", "trainer_graphs.cpp", "objectives.cpp", "precision.cpp", "metrics.cpp"}) {
    CAPTURE(file);
    const std::string text = test::read_file(src + file);
    CHECK(text.find(".item<") == std::string::npos);
    CHECK(text.find(".item()") == std::string::npos);
    CHECK(text.find(".cpu()") == std::string::npos);
  }
}
