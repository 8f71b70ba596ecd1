// The callback library: event filters, early stopping, LR monitor, loggers
// (JSON lines, TensorBoard), NaN and time guards, gradient clipping and
// accumulation, and the HTML report.
#include "support.h"

#include <cairn/callbacks.h>
#include <cairn/report.h>

#include <cstring>
#include <set>

using cairn::Event;

namespace {
std::shared_ptr<cairn::SyntheticData> data(int64_t train = 128, int64_t batch = 16) { return test::synthetic(train, batch); }
cairn::Model model(double dropout = 0.0) { return cairn::Model::wrap(cairn::make_mlp({{16}, {12}, 4, dropout})); }

// Scripted validation values, one per epoch, for monitor tests.
struct Script : cairn::Callback {
  std::vector<double> values;
  std::string metric;
  Script(std::vector<double> v, std::string m) : values(std::move(v)), metric(std::move(m)) {}
  std::string key() const override { return "Script"; }
  cairn::Order order() const override { return cairn::Order::producer; }
  void on_validation_end(cairn::Loop& l) override {
    const auto e = static_cast<size_t>(l.state().epoch);
    l.log(metric, e < values.size() ? values[e] : values.back());
  }
};

struct TbRecord {
  int64_t step = 0;
  std::string tag;
  float value = 0;
  bool is_version = false;
};

// A TFRecord reader that checks both CRCs, and a minimal Event decoder.
std::vector<TbRecord> read_tfevents(const std::string& path) {
  const std::string b = test::read_file(path);
  std::vector<TbRecord> out;
  size_t p = 0;
  auto u64 = [&](size_t at) { uint64_t v; std::memcpy(&v, b.data() + at, 8); return v; };
  auto u32 = [&](size_t at) { uint32_t v; std::memcpy(&v, b.data() + at, 4); return v; };
  while (p < b.size()) {
    REQUIRE(p + 12 <= b.size());
    const uint64_t len = u64(p);
    REQUIRE(u32(p + 8) == cairn::tensorboard::masked_crc32c(b.data() + p, 8));
    REQUIRE(p + 12 + len + 4 <= b.size());
    const std::string data = b.substr(p + 12, len);
    REQUIRE(u32(p + 12 + len) == cairn::tensorboard::masked_crc32c(data.data(), data.size()));
    p += 12 + len + 4;
    // Decode the Event.
    TbRecord r;
    size_t q = 0;
    auto varint = [&](const std::string& s, size_t& i) {
      uint64_t v = 0;
      int shift = 0;
      while (true) {
        const auto c = static_cast<unsigned char>(s[i++]);
        v |= static_cast<uint64_t>(c & 0x7f) << shift;
        if (!(c & 0x80)) return v;
        shift += 7;
      }
    };
    while (q < data.size()) {
      const uint64_t key = varint(data, q);
      const uint64_t field = key >> 3, wire = key & 7;
      if (wire == 1) {
        q += 8;
      } else if (wire == 0) {
        const uint64_t v = varint(data, q);
        if (field == 2) r.step = static_cast<int64_t>(v);
      } else if (wire == 2) {
        const uint64_t n = varint(data, q);
        const std::string sub = data.substr(q, n);
        q += n;
        if (field == 3) r.is_version = sub == "brain.Event:2";
        if (field == 5) {  // Summary { value { tag, simple_value } }
          size_t i = 0;
          varint(sub, i);
          const uint64_t vn = varint(sub, i);
          const std::string val = sub.substr(i, vn);
          size_t j = 0;
          while (j < val.size()) {
            const uint64_t k2 = varint(val, j);
            if ((k2 >> 3) == 1) {
              const uint64_t tn = varint(val, j);
              r.tag = val.substr(j, tn);
              j += tn;
            } else if ((k2 & 7) == 5) {
              std::memcpy(&r.value, val.data() + j, 4);
              j += 4;
            }
          }
        }
      }
    }
    out.push_back(r);
  }
  return out;
}

std::vector<std::string> tfevent_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : test::fs::directory_iterator(dir)) {
    if (e.path().filename().string().find("tfevents") != std::string::npos) out.push_back(e.path().string());
  }
  return out;
}
}  // namespace

TEST_CASE("event filters: every N, once at N, and a predicate") {
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(3));
  t.set_model(model()).set_data(data(128, 16));  // 8 steps per epoch
  std::vector<int64_t> every3, once_epoch, big_steps;
  t.loop().on(Event::batch_end, cairn::every(3), [&](cairn::Loop& l) { every3.push_back(l.state().global_step); });
  t.loop().on(Event::epoch_end, cairn::once(2), [&](cairn::Loop& l) { once_epoch.push_back(l.state().epoch); });
  t.loop().on(Event::batch_end, cairn::when([](const cairn::Loop& l) { return l.state().global_step > 20; }),
              [&](cairn::Loop& l) { big_steps.push_back(l.state().global_step); });
  t.fit();
  CHECK(every3 == std::vector<int64_t>{3, 6, 9, 12, 15, 18, 21, 24});
  CHECK(once_epoch == std::vector<int64_t>{1});
  CHECK(big_steps == std::vector<int64_t>{21, 22, 23, 24});
  CHECK_THROWS_AS(cairn::every(0), std::invalid_argument);
}

TEST_CASE("early stopping stops after `patience` checks without improvement, at the same epoch after a resume") {
  const std::vector<double> losses = {1.0, 0.8, 0.85, 0.9, 0.7, 0.95, 0.96, 0.97, 0.5};
  auto run = [&](const std::string& dir, int64_t stop_at_epoch) {
    cairn::Trainer t(cairn::TrainerOptions().max_epochs(9));
    t.set_model(model()).set_data(data());
    t.loop().set_run_dir(dir);
    t.add_callback(std::make_shared<Script>(losses, "valid/score"));
    auto es = std::make_shared<cairn::EarlyStopping>(cairn::EarlyStoppingOptions().monitor("valid/score").patience(3));
    t.add_callback(es);
    t.add_callback(std::make_shared<cairn::Checkpoint>());
    t.resume_from(dir + "/checkpoints");
    if (stop_at_epoch >= 0) {
      t.loop().on(Event::epoch_end, [stop_at_epoch](cairn::Loop& l) {
        if (l.state().epoch == stop_at_epoch) l.state().request_interrupt(SIGTERM, "test");
      });
    }
    const auto r = t.fit();
    return std::make_tuple(r, es->stopped_epoch(), es->wait_count(), *es->best());
  };
  test::TempDir dir("es");
  const auto [r, stopped, wait, best] = run(dir / "a", -1);
  CHECK(stopped == 7);  // 0.7 at epoch 4, then 0.95, 0.96, 0.97: three checks without improvement
  CHECK(wait == 3);
  CHECK(best == 0.7);
  CHECK(r.stop_reason.find("did not improve for 3 validation checks") != std::string::npos);
  CHECK(r.epochs_completed == 8);
  // Interrupted at epoch 5 (one bad check so far), resumed: stops at the same epoch.
  run(dir / "b", 5);
  const auto [r2, stopped2, wait2, best2] = run(dir / "b", -1);
  CHECK(stopped2 == 7);
  CHECK(wait2 == 3);
  CHECK(r2.stop_reason == r.stop_reason);
  const cairn::Value c = cairn::read_checkpoint(dir / "b/checkpoints/last.ckpt");
  CHECK(c.at("loop").at("stop_reason").to_string() == r.stop_reason);
}

TEST_CASE("early stopping thresholds and non-finite values") {
  struct Case {
    std::vector<double> values;
    cairn::EarlyStoppingOptions options;
    int64_t epoch;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {{0.5, 0.7, 0.91, 0.95}, cairn::EarlyStoppingOptions().monitor("valid/acc").mode(cairn::Mode::max).stopping_threshold(0.9), 2, "stopping threshold"},
      {{1.0, 2.0, 50.0, 1.0}, cairn::EarlyStoppingOptions().monitor("valid/acc").divergence_threshold(10.0), 2, "divergence threshold"},
      {{1.0, NAN, 1.0}, cairn::EarlyStoppingOptions().monitor("valid/acc"), 1, "is nan"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.reason);
    cairn::Trainer t(cairn::TrainerOptions().max_epochs(4));
    t.set_model(model()).set_data(data());
    t.add_callback(std::make_shared<Script>(c.values, "valid/acc"));
    auto es = std::make_shared<cairn::EarlyStopping>(c.options);
    t.add_callback(es);
    const auto r = t.fit();
    CHECK(es->stopped_epoch() == c.epoch);
    CHECK(r.stop_reason.find(c.reason) != std::string::npos);
  }
}

TEST_CASE("the LR monitor logs each param group's lr as the scheduler moves it") {
  auto net = cairn::make_mlp({{16}, {12}, 4, 0.0});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(net[1]->parameters(), std::make_unique<torch::optim::SGDOptions>(0.1));
  groups.emplace_back(net[3]->parameters(), std::make_unique<torch::optim::SGDOptions>(0.01));
  auto opt = std::make_shared<torch::optim::SGD>(groups, torch::optim::SGDOptions(0.1));
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(2).log_every_n_steps(2));
  t.set_model(cairn::Model::wrap(net)).set_data(data(64, 16)).set_optimizer(opt);  // 4 steps per epoch
  t.set_scheduler(std::make_shared<cairn::ExponentialLR>(*opt, 0.5, cairn::Interval::step));
  t.add_callback(std::make_shared<cairn::LearningRateMonitor>());
  t.fit();
  const auto lr = t.loop().metrics().series("train/lr");
  const auto pg1 = t.loop().metrics().series("train/lr/pg1");
  REQUIRE(lr.size() == 4);  // steps 0, 2, 4, 6
  CHECK(lr[0].value == doctest::Approx(0.1));
  CHECK(lr[1].value == doctest::Approx(0.1 * 0.25));
  CHECK(lr[3].value == doctest::Approx(0.1 * std::pow(0.5, 6)));
  REQUIRE(pg1.size() == 4);
  CHECK(pg1[2].value == doctest::Approx(0.01 * std::pow(0.5, 4)));
}

TEST_CASE("JSON-lines and TensorBoard loggers hold the metric log, without duplicates after a resume") {
  test::TempDir dir("loggers");
  auto run = [&](int64_t stop_step) {
    cairn::Trainer t(cairn::TrainerOptions().max_epochs(3).log_every_n_steps(2));
    t.set_model(model(0.2)).set_data(data());
    t.loop().set_run_dir(dir.str());
    t.add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().every_n_train_steps(3)));
    t.add_callback(std::make_shared<cairn::JsonlLogger>());
    t.add_callback(std::make_shared<cairn::TensorBoardLogger>());
    t.resume_from(dir / "checkpoints");
    if (stop_step > 0) {
      t.loop().on(Event::batch_end, [stop_step](cairn::Loop& l) {
        if (l.state().global_step == stop_step) l.state().request_interrupt(SIGTERM, "test");
      });
    }
    t.fit();
    return t.loop().metrics().rows().size();
  };
  run(13);  // interrupted mid-epoch 1 (8 steps per epoch)
  // A stale event file from the killed process must not survive the resume.
  REQUIRE(tfevent_files(dir / "tensorboard").size() == 1);
  const size_t rows = run(0);
  // JSON lines: one object per logged value.
  std::istringstream jl(test::read_file(dir / "metrics.jsonl"));
  std::string line;
  size_t n = 0;
  while (std::getline(jl, line)) {
    CHECK(line.rfind("{\"epoch\": ", 0) == 0);
    ++n;
  }
  CHECK(n == rows);
  // TensorBoard: one file, version record first, then every value, CRCs intact.
  const auto files = tfevent_files(dir / "tensorboard");
  REQUIRE(files.size() == 1);
  const auto recs = read_tfevents(files[0]);
  REQUIRE(recs.size() == rows + 1);
  CHECK(recs[0].is_version);
  const cairn::Value c = cairn::read_checkpoint(dir / "checkpoints/last.ckpt");
  const auto steps = c.at("metrics").at("valid/acc").at("step").to_int_list();
  const auto values = c.at("metrics").at("valid/acc").at("value").to_double_list();
  std::vector<int64_t> tb_steps;
  std::vector<float> tb_values;
  for (const auto& r : recs) {
    if (r.tag == "valid/acc") {
      tb_steps.push_back(r.step);
      tb_values.push_back(r.value);
    }
  }
  CHECK(tb_steps == steps);
  REQUIRE(tb_values.size() == values.size());
  for (size_t i = 0; i < values.size(); ++i) CHECK(tb_values[i] == static_cast<float>(values[i]));
}

TEST_CASE("TFRecord framing uses CRC-32C") {
  CHECK(cairn::tensorboard::crc32c("123456789", 9) == 0xE3069283u);  // the standard check value
}

namespace {
//! A loss that turns NaN at step `bad_step`; with `tell_host` false nothing
//! sets batch_loss (no host read): only the device-side sums know.
struct NanAt : cairn::Trainer {
  int64_t bad_step;
  bool tell_host;
  NanAt(cairn::TrainerOptions o, int64_t s, bool host = true)
      : cairn::Trainer(std::move(o)), bad_step(s), tell_host(host) {}
  at::Tensor training_step(const cairn::Batch& b) override {
    at::Tensor loss = cairn::Trainer::training_step(b);
    if (loop().state().global_step + 1 == bad_step) {
      loss = loss * std::nan("");
      if (tell_host) loop().state().batch_loss = loss.item<double>();
    }
    return loss;
  }
};
}  // namespace

TEST_CASE("TerminateOnNaN stops with a reason, and no NaN checkpoint replaces a good one") {
  test::TempDir dir("nan");
  NanAt t(cairn::TrainerOptions().max_epochs(3), 11);
  t.set_model(model()).set_data(data());
  t.loop().set_run_dir(dir.str());
  t.add_callback(std::make_shared<cairn::TerminateOnNaN>());
  t.add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().every_n_train_steps(2)));
  const auto r = t.fit();
  CHECK(r.stop_reason.find("terminate on NaN: the training loss is nan at step 11") != std::string::npos);
  CHECK(t.loop().state().global_step == 11);
  const cairn::Value c = cairn::read_checkpoint(dir / "checkpoints/last.ckpt");
  CHECK(c.at("global_step").to_int() == 10);
  for (const auto& w : c.at("state_dict").values()) CHECK(torch::isfinite(w.to_tensor()).all().item<bool>());
}


TEST_CASE("a loss that went NaN between log points: a stop by signal does not save the NaN state over the last good file") {
  test::TempDir dir("nan_unread");
  // Log points every 50 steps, checkpoints every 4: NaN at step 5, SIGTERM's stop at step 7.
  NanAt t(cairn::TrainerOptions().max_epochs(3), 5, /*host=*/false);
  t.set_model(model()).set_data(data());
  t.loop().set_run_dir(dir.str());
  t.add_callback(std::make_shared<cairn::TerminateOnNaN>());
  t.add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().every_n_train_steps(4)));
  t.loop().on(Event::batch_end, [](cairn::Loop& l) {
    if (l.state().global_step == 7) l.state().request_interrupt(SIGTERM, "test stop");
  });
  const auto r = t.fit();
  CHECK(r.interrupted);
  CHECK(t.loop().state().invalid_state);
  CHECK(t.loop().state().global_step == 7);
  // The weights in memory are NaN; the file on disk is step 4's, finite.
  bool nan_in_memory = false;
  for (const auto& p : t.model().module->parameters()) nan_in_memory = nan_in_memory || !torch::isfinite(p).all().item<bool>();
  CHECK(nan_in_memory);
  const cairn::Value c = cairn::read_checkpoint(dir / "checkpoints/last.ckpt");
  CHECK(c.at("global_step").to_int() == 4);
  for (const auto& w : c.at("state_dict").values()) CHECK(torch::isfinite(w.to_tensor()).all().item<bool>());
}

TEST_CASE("a NaN epoch that early stopping ends first is still invalid: its epoch-end checkpoint is not saved") {
  test::TempDir dir("nan_es");
  // 8 steps an epoch; NaN at step 11 (epoch 2), read only at epoch end (log every 50).
  NanAt t(cairn::TrainerOptions().max_epochs(4), 11, /*host=*/false);
  t.set_model(model()).set_data(data());
  t.loop().set_run_dir(dir.str());
  // Registered first, early stopping asks to stop at epoch 2's end (its
  // valid/loss is NaN) before TerminateOnNaN's epoch-end check runs.
  t.add_callback(std::make_shared<cairn::EarlyStopping>(cairn::EarlyStoppingOptions().monitor("valid/loss").patience(0)));
  t.add_callback(std::make_shared<cairn::TerminateOnNaN>());
  t.add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().every_n_epochs(1)));
  const auto r = t.fit();
  CHECK(r.stop_reason.find("valid/loss") != std::string::npos);  // early stopping's reason stands
  CHECK(t.loop().state().invalid_state);
  CHECK(t.loop().state().global_step == 16);
  const cairn::Value c = cairn::read_checkpoint(dir / "checkpoints/last.ckpt");
  CHECK(c.at("global_step").to_int() == 8);
  for (const auto& w : c.at("state_dict").values()) CHECK(torch::isfinite(w.to_tensor()).all().item<bool>());
}

TEST_CASE("max_time stops and saves a resumable checkpoint") {
  test::TempDir dir("timer");
  test::write_file(dir / "c.yaml", test::small_config(dir / "run", "  - {name: timer, max_time: 0.3}\n", 40, 3000));
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("max_time of 0.3 s reached") != std::string::npos);
  const cairn::Value c = cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt");
  CHECK(!c.at("loop").at("finished").to_bool());
  auto again = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK(again.output.find("resumed from") != std::string::npos);
}

TEST_CASE("gradient clipping by norm and by value bounds what the optimizer sees") {
  for (const char* algo : {"norm", "value"}) {
    CAPTURE(algo);
    cairn::Trainer t(cairn::TrainerOptions().max_epochs(1).gradient_clip_val(0.05).gradient_clip_algorithm(algo));
    t.set_model(model()).set_data(data());
    double worst = 0;
    t.loop().on(Event::before_optimizer_step, [&](cairn::Loop& l) {
      double sq = 0, mx = 0;
      for (const auto& p : l.model()->parameters()) {
        sq += p.grad().pow(2).sum().item<double>();
        mx = std::max(mx, p.grad().abs().max().item<double>());
      }
      worst = std::max(worst, std::string(algo) == "norm" ? std::sqrt(sq) : mx);
    });
    t.fit();
    CHECK(worst > 0);
    CHECK(worst <= 0.05 * (1 + 1e-5));
  }
}

TEST_CASE("gradient accumulation: one optimizer step per N batches, exact resume across cycles") {
  auto make = [](const std::string& dir) {
    torch::manual_seed(0);  // same initial weights for every run
    auto t = std::make_unique<cairn::Trainer>(cairn::TrainerOptions().max_epochs(2).accumulate_grad_batches(3));
    t->set_model(model(0.3)).set_data(data(160, 16));  // 10 batches per epoch: cycles 3+3+3+1
    t->loop().set_run_dir(dir);
    t->add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().every_n_train_steps(1)));
    t->resume_from(dir + "/checkpoints");
    return t;
  };
  test::TempDir dir("accumulate");
  auto ref = make(dir / "ref");
  int64_t optimizer_steps = 0;
  ref->loop().on(Event::before_optimizer_step, [&](cairn::Loop&) { ++optimizer_steps; });
  ref->fit();
  CHECK(optimizer_steps == 8);
  CHECK(ref->loop().state().global_step == 8);  // global_step counts optimizer steps
  // Interrupt asked mid-cycle (5th batch): honoured at the cycle's end (6th batch, 2nd step).
  auto a = make(dir / "run");
  a->loop().on(Event::batch_end, [](cairn::Loop& l) {
    if (l.state().batch_in_epoch == 5) l.state().request_interrupt(SIGTERM, "test");
  });
  a->fit();
  CHECK(a->loop().state().batch_in_epoch == 6);
  CHECK(a->loop().state().global_step == 2);
  const cairn::Value saved = cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt");
  CHECK(saved.at("global_step").to_int() == 2);
  CHECK(saved.at("batch_in_epoch").to_int() == 6);
  make(dir / "run")->fit();
  const auto x = test::comparable(cairn::read_checkpoint(dir / "ref/checkpoints/last.ckpt"));
  const auto y = test::comparable(cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt"));
  CHECK_MESSAGE(x.first_difference(y) == "", x.first_difference(y));
}

TEST_CASE("cairn report writes one well-formed HTML file with a chart per metric and the resume marks") {
  test::TempDir dir("report");
  const std::string cfg = test::small_config(dir / "run", "  - {name: lr_monitor}\n", 3, 640);
  test::write_file(dir / "c.yaml", cfg);
  // Interrupt once with SIGTERM so the run has a resume point.
  const pid_t pid = test::spawn({CAIRN_CLI, "fit", "--config", dir / "c.yaml"}, dir / "log.txt");
  REQUIRE(test::wait_for_file(dir / "run/checkpoints/last.ckpt"));
  ::kill(pid, SIGTERM);
  test::wait_exit(pid);
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml"}).exit_code == 0);
  auto r = test::cairn_cli({"report", dir / "run", "--out", dir / "report.html"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const cairn::Value c = cairn::read_checkpoint(dir / "run/checkpoints/last.ckpt");
  std::set<std::string> names;
  for (const auto& k : c.at("metrics").keys()) names.insert(cairn::MetricLog::split_name(k.to_string()).second);
  const size_t resumes = c.at("loop").at("resumes").size();
  // Parse it as XML with Python's standard library and count what matters.
  test::write_file(dir / "check.py",
                   "import sys, xml.etree.ElementTree as ET\n"
                   "root = ET.parse(sys.argv[1]).getroot()\n"
                   "svg = '{http://www.w3.org/2000/svg}'\n"
                   "charts = root.findall('.//' + svg + 'svg')\n"
                   "resume = [l for c in charts for l in c.iter(svg + 'line') if l.get('class') == 'resume']\n"
                   "best = [e for c in charts for e in c.iter(svg + 'circle') if e.get('class') == 'best']\n"
                   "print(len(charts), len(resume), len(best), ' '.join(sorted(c.get('data-metric') for c in charts)))\n");
  auto p = test::run({CAIRN_PYTHON, dir / "check.py", dir / "report.html"});
  REQUIRE_MESSAGE(p.exit_code == 0, p.output);
  std::istringstream is(p.output);
  size_t charts = 0, marks = 0, best = 0;
  is >> charts >> marks >> best;
  CHECK(resumes >= 1);
  CHECK(charts == names.size());
  CHECK(marks == resumes * charts);
  CHECK(best >= 1);
  CHECK(p.output.find(" lr") != std::string::npos);
  // Epoch marks sit where each epoch starts: e0 at step 0 (the left edge of
  // the axis, x=64), e1 where epoch 0's last step was logged.
  const std::string html = test::read_file(dir / "report.html");
  CHECK(html.find("<text class=\"tick epoch\" x=\"64\"") != std::string::npos);
  CHECK(html.find(">e0</text>") != std::string::npos);
}

TEST_CASE("a monitor the run cannot log is refused before training; one not logged by the first validation stops the run") {
  // No validation data: a valid/ monitor can never appear.
  cairn::SyntheticOptions o;
  o.train_size = 64;
  o.valid_size = 0;
  o.test_size = 0;
  o.batch_size = 16;
  cairn::Trainer t(cairn::TrainerOptions().max_epochs(2));
  t.set_model(model()).set_data(std::make_shared<cairn::SyntheticData>(o));
  t.add_callback(std::make_shared<cairn::EarlyStopping>(cairn::EarlyStoppingOptions().monitor("valid/loss")));
  int64_t batches = 0;
  t.loop().on(Event::batch_end, [&](cairn::Loop&) { ++batches; });
  try {
    t.fit();
    FAIL("fit trained with a monitor it can never log");
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    CHECK(what.find("monitors 'valid/loss'") != std::string::npos);
    CHECK(what.find("no validation data") != std::string::npos);
    CHECK(what.find("train/loss") != std::string::npos);  // what it does log
  }
  CHECK(batches == 0);

  // A metric nobody logs (a typo): the run stops at the end of the first epoch that validated.
  cairn::Trainer u(cairn::TrainerOptions().max_epochs(3));
  u.set_model(model()).set_data(data(64, 16));
  u.add_callback(std::make_shared<cairn::EarlyStopping>(cairn::EarlyStoppingOptions().monitor("valid/acc_typo")));
  try {
    u.fit();
    FAIL("fit went on with a monitor that never appears");
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    CHECK(what.find("monitors 'valid/acc_typo'") != std::string::npos);
    CHECK(what.find("valid/acc") != std::string::npos);
  }
  CHECK(u.loop().state().epoch == 1);
}
