// MetricLog and Best.
#include "support.h"

TEST_CASE("the metric log keeps points in logging order and per series") {
  cairn::MetricLog log;
  log.log("train/loss", 1.0, 0, 1);
  log.log("valid/acc", 0.5, 0, 1);
  log.log("train/loss", 0.8, 0, 2);
  CHECK(log.size() == 3);
  CHECK(log.names() == std::vector<std::string>{"train/loss", "valid/acc"});
  const auto s = log.series("train/loss");
  REQUIRE(s.size() == 2);
  CHECK(s[1].value == 0.8);
  CHECK(s[1].step == 2);
  CHECK(*log.last("valid/acc") == 0.5);
  CHECK(!log.last("test/acc"));
  CHECK(cairn::MetricLog::split_name("valid/acc").first == "valid");
  CHECK(cairn::MetricLog::split_name("valid/acc").second == "acc");
}

TEST_CASE("accumulated values flush as batch-size-weighted means, split by split") {
  cairn::MetricLog log;
  log.accumulate("train/loss", 1.0, 32);
  log.accumulate("train/loss", 4.0, 16);
  log.accumulate("valid/loss", 9.0, 1);
  log.flush("train", 0, 3);
  CHECK(*log.last("train/loss") == doctest::Approx((32.0 + 64.0) / 48.0));
  CHECK(!log.has("valid/loss"));
  log.flush("valid", 0, 3);
  CHECK(*log.last("valid/loss") == 9.0);
  log.flush("train", 1, 6);  // nothing accumulated: nothing logged
  CHECK(log.series("train/loss").size() == 1);
}

TEST_CASE("device-side means give the bits of sum(double(v) * w) / sum(w), by either arithmetic path") {
  // Float values with whole weights take the one-op path (v * w exact in
  // double); double values and fractional weights the multiply-then-add one.
  torch::manual_seed(3);
  const at::Tensor floats = torch::randn({200}) * 7;
  const at::Tensor doubles = torch::randn({200}, torch::kDouble) * 7;
  struct Case {
    const char* name;
    const at::Tensor* values;
    double weight_scale;
  };
  for (const Case& c : {Case{"train/floats", &floats, 1.0}, Case{"train/doubles", &doubles, 1.0},
                        Case{"train/fractional", &floats, 0.37}}) {
    CAPTURE(c.name);
    cairn::MetricLog log;
    double sum = 0, weights = 0;
    for (int64_t i = 0; i < c.values->size(0); ++i) {
      const double w = static_cast<double>(1 + i % 64) * c.weight_scale;
      const at::Tensor v = (*c.values)[i];
      log.accumulate_tensor(c.name, i % 2 ? v : v.reshape({1}), w);
      const double x = v.to(torch::kDouble).item<double>() * w;  // rounded, then added
      sum = i == 0 ? x : sum + x;
      weights += w;
    }
    log.flush("train", 0, 200);
    CHECK(*log.last(c.name) == sum / weights);  // exact, not approximate
  }
}

TEST_CASE("the metric log survives a state round trip with its journal order") {
  cairn::MetricLog log;
  for (int i = 0; i < 10; ++i) {
    log.log(i % 3 ? "train/loss" : "valid/acc", i * 0.1, i / 4, i);
  }
  log.accumulate("train/acc", 0.75, 2);
  cairn::MetricLog back;
  back.load_state_dict(log.state_dict());
  back.load_accumulator_state(log.accumulator_state());
  REQUIRE(back.rows().size() == log.rows().size());
  for (size_t i = 0; i < log.rows().size(); ++i) {
    CHECK(back.names()[back.rows()[i].series] == log.names()[log.rows()[i].series]);
    CHECK(back.rows()[i].point.value == log.rows()[i].point.value);
    CHECK(back.rows()[i].point.step == log.rows()[i].point.step);
  }
  back.flush("train", 3, 11);
  CHECK(*back.last("train/acc") == 0.75);
}

TEST_CASE("best trackers follow min and max with min_delta") {
  cairn::Best lo(cairn::Mode::min, 0.1);
  CHECK(lo.update(1.0, 0, 10));
  CHECK(!lo.update(0.95, 1, 20));  // not better by more than 0.1
  CHECK(lo.update(0.85, 2, 30));
  CHECK(*lo.best() == 0.85);
  CHECK(lo.best_epoch() == 2);
  CHECK(!lo.update(std::nan(""), 3, 40));

  cairn::Best hi(cairn::Mode::max);
  CHECK(hi.update(0.5, 0, 1));
  CHECK(!hi.update(0.5, 1, 2));
  CHECK(hi.update(0.6, 2, 3));
  cairn::Best copy(cairn::Mode::max);
  copy.load_state_dict(hi.state_dict());
  CHECK(*copy.best() == 0.6);
  CHECK(copy.best_step() == 3);
  CHECK(!copy.improves(0.59));
  CHECK_THROWS_AS(cairn::parse_mode("maximum"), std::invalid_argument);
}

TEST_CASE("a mid-epoch checkpoint from before metrics were statistics: its host accuracy mean joins the new statistics (one value)") {
  // The old format's train/acc: batch accuracies times batch sizes (3 correct of 4), on the host.
  cairn::MetricLog log;
  log.declare("train/acc", std::make_shared<cairn::Accuracy>());
  cairn::Value old = cairn::Value::dict();
  old.set("train/acc", cairn::Value(std::vector<double>{3.0, 4.0}));
  log.load_accumulator_state(old);
  // The resumed epoch goes on with 2 more examples, one correct.
  const at::Tensor logits = torch::tensor({{2.0, 0.0}, {2.0, 0.0}});
  log.update("train/acc", logits, torch::tensor({0, 1}, torch::kLong));
  log.flush("train", 0, 3);
  REQUIRE(log.series("train/acc").size() == 1);
  CHECK(*log.last("train/acc") == doctest::Approx(4.0 / 6.0).epsilon(1e-15));
  // A host mean no metric can take keeps its old behaviour: logged as a mean.
  log.accumulate("train/other", 0.5, 2);
  log.flush("train", 1, 6);
  CHECK(*log.last("train/other") == 0.5);
}

TEST_CASE("Loop::record_step_logs: a captured step's logs are recorded, then applied to the tensors as they are then; host values are refused") {
  // trainer.cuda_graphs records what the step logs and applies it after each
  // replay, which rewrites the same tensors: each application must see the
  // values of that moment, as an uncaptured step would have logged them.
  cairn::Loop loop;
  loop.state().stage = cairn::Stage::train;
  loop.declare_mean("train/loss");
  loop.declare_metric("train/acc", std::make_shared<cairn::Accuracy>());
  at::Tensor loss = torch::tensor({0.25});
  at::Tensor logits = torch::tensor({{2.0, 0.0}, {0.0, 2.0}});
  const at::Tensor y = torch::tensor({0, 0}, torch::kLong);
  std::vector<std::function<void()>> recorded;
  loop.record_step_logs(&recorded);
  CHECK(loop.recording_step_logs());
  loop.log_step_tensor("train/loss", loss, 2.0);
  loop.update_metric("train/acc", logits, y);
  loop.note_step_loss(loss);
  CHECK_THROWS_WITH_AS(loop.log_step("train/other", 1.0), doctest::Contains("host value inside a captured training step"),
                       std::logic_error);
  CHECK_THROWS_AS(loop.log("other", 1.0), std::logic_error);
  loop.record_step_logs(nullptr);
  CHECK_FALSE(loop.recording_step_logs());
  REQUIRE(recorded.size() == 3);
  CHECK_FALSE(loop.metrics().stats("train/loss").sums.defined());  // nothing applied yet
  CHECK_FALSE(loop.metrics().stats("train/acc").sums.defined());
  // Two replays: new values in the same tensors, then the records applied.
  loss.fill_(1.5);
  logits.copy_(torch::tensor({{2.0, 0.0}, {2.0, 0.0}}));  // both right
  for (const auto& apply : recorded) apply();
  loss.fill_(0.5);
  logits.copy_(torch::tensor({{0.0, 2.0}, {0.0, 2.0}}));  // both wrong
  for (const auto& apply : recorded) apply();
  loop.metrics().flush("train", 0, 2);
  CHECK(*loop.metrics().last("train/loss") == doctest::Approx((1.5 * 2 + 0.5 * 2) / 4.0).epsilon(1e-15));
  CHECK(*loop.metrics().last("train/acc") == doctest::Approx(2.0 / 4.0).epsilon(1e-15));
}
