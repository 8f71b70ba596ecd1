// Events: order, slot groups, connections, stop requests.
#include "support.h"

using cairn::Event;

namespace {
std::shared_ptr<cairn::SyntheticData> tiny_data(int64_t train = 64, int64_t batch = 32) { return test::synthetic(train, batch); }

cairn::Model tiny_model() { return cairn::Model::wrap(cairn::make_mlp({{16}, {8}, 4, 0.0})); }

struct Recorder : cairn::Callback {
  std::vector<std::string> seen;
  std::string key() const override { return "Recorder"; }
  void on_fit_begin(cairn::Loop&) override { seen.push_back("fit_begin"); }
  void on_epoch_begin(cairn::Loop&) override { seen.push_back("epoch_begin"); }
  void on_batch_begin(cairn::Loop&) override { seen.push_back("batch_begin"); }
  void on_after_backward(cairn::Loop&) override { seen.push_back("after_backward"); }
  void on_before_optimizer_step(cairn::Loop&) override { seen.push_back("before_optimizer_step"); }
  void on_batch_end(cairn::Loop&) override { seen.push_back("batch_end"); }
  void on_validation_begin(cairn::Loop&) override { seen.push_back("validation_begin"); }
  void on_validation_batch_end(cairn::Loop&) override { seen.push_back("validation_batch_end"); }
  void on_validation_end(cairn::Loop&) override { seen.push_back("validation_end"); }
  void on_epoch_end(cairn::Loop&) override { seen.push_back("epoch_end"); }
  void on_test_begin(cairn::Loop&) override { seen.push_back("test_begin"); }
  void on_test_batch_end(cairn::Loop&) override { seen.push_back("test_batch_end"); }
  void on_test_end(cairn::Loop&) override { seen.push_back("test_end"); }
  void on_fit_end(cairn::Loop&) override { seen.push_back("fit_end"); }
};
}  // namespace

TEST_CASE("the trainer emits the lifecycle events in order") {
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(1));
  t.set_model(tiny_model()).set_data(tiny_data());
  auto rec = std::make_shared<Recorder>();
  t.add_callback(rec);
  t.fit();
  const std::vector<std::string> batch = {"batch_begin", "after_backward", "before_optimizer_step", "batch_end"};
  std::vector<std::string> expected = {"fit_begin", "epoch_begin"};
  for (int i = 0; i < 2; ++i) expected.insert(expected.end(), batch.begin(), batch.end());
  expected.insert(expected.end(), {"validation_begin", "validation_batch_end", "validation_end", "epoch_end",
                                   "test_begin", "test_batch_end", "test_end", "fit_end"});
  CHECK(rec->seen == expected);
}

TEST_CASE("validation metrics of the epoch are visible at epoch_end") {
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(2));
  t.set_model(tiny_model()).set_data(tiny_data());
  std::vector<size_t> valid_points;
  t.loop().on(Event::epoch_end, [&](cairn::Loop& l) { valid_points.push_back(l.metrics().series("valid/acc").size()); });
  t.fit();
  CHECK(valid_points == std::vector<size_t>{1, 2});
}

TEST_CASE("slot groups run producers, normal, monitors, savers in that order whatever the connection order") {
  cairn::Loop loop;
  std::vector<std::string> order;
  loop.on(Event::batch_end, [&](cairn::Loop&) { order.push_back("saver"); }, cairn::Order::saver);
  loop.on(Event::batch_end, [&](cairn::Loop&) { order.push_back("monitor"); }, cairn::Order::monitor);
  loop.on(Event::batch_end, [&](cairn::Loop&) { order.push_back("normal"); });
  loop.on(Event::batch_end, [&](cairn::Loop&) { order.push_back("producer"); }, cairn::Order::producer);
  loop.batch_end();
  CHECK(order == std::vector<std::string>{"producer", "normal", "monitor", "saver"});
}

TEST_CASE("a connection handle disconnects its function") {
  cairn::Loop loop;
  int calls = 0;
  cairn::Connection c = loop.on(Event::batch_end, [&](cairn::Loop&) { ++calls; });
  loop.batch_end();
  CHECK(c.connected());
  c.disconnect();
  CHECK(!c.connected());
  loop.batch_end();
  CHECK(calls == 1);
  {
    cairn::ScopedConnection scoped = loop.on(Event::batch_end, [&](cairn::Loop&) { ++calls; });
    loop.batch_end();
  }
  loop.batch_end();
  CHECK(calls == 2);
  CHECK(loop.bus().slot_count(Event::batch_end) == 0);
}

TEST_CASE("a stop request is honoured at the next batch boundary, with its reason") {
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(5));
  t.set_model(tiny_model()).set_data(tiny_data(256, 16));
  t.loop().on(Event::batch_end, [](cairn::Loop& l) {
    if (l.state().global_step == 3) l.state().request_stop("enough");
  });
  int batches_after_stop = 0;
  t.loop().on(Event::batch_begin, [&](cairn::Loop& l) { batches_after_stop += l.should_stop() ? 1 : 0; });
  const cairn::FitResult r = t.fit();
  CHECK(t.loop().state().global_step == 3);
  CHECK(batches_after_stop == 0);
  CHECK(r.stop_reason == "enough");
  CHECK(!r.interrupted);
  CHECK(t.loop().state().finished);
}

TEST_CASE("two callbacks with the same key are refused") {
  cairn::Loop loop;
  loop.add(std::make_shared<Recorder>());
  CHECK_THROWS_AS(loop.add(std::make_shared<Recorder>()), std::invalid_argument);
}
