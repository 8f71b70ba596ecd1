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
