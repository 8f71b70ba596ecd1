// Mixed precision and weight averaging: the gradient scaler against PyTorch's
// own, EMA and SWA arithmetic, their state in checkpoints (read by Python),
// bad options as config errors, and a bf16 + EMA + SWA run killed with
// SIGKILL and resumed ending bit for bit where an uninterrupted run ends.
#include "support.h"

#include <cairn/callbacks.h>
#include <cairn/precision.h>

#include <random>

namespace {
std::string config(const std::string& run, const std::string& precision) {
  return "name: avg\nseed: 4\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 1500, valid_size: 200, test_size: 100, batch_size: 16, features: 16, noise: 2.0}\n"
         "model: {name: mlp, hidden: [32, 16], dropout: 0.3}\n"
         "optimizer: {name: adamw, lr: 0.01}\n"
         "scheduler: {name: cosine, warmup_steps: 10}\n"
         "trainer: {max_epochs: 6, precision: " + precision + ", threads: 1, enable_progress_bar: false, log_every_n_steps: 10}\n"
         "callbacks:\n"
         "  - {name: checkpoint, monitor: valid/acc, mode: max, every_n_train_steps: 7}\n"
         "  - {name: ema, decay: 0.95, warmup: true, every_n_steps: 2}\n"
         "  - {name: swa, swa_lrs: 0.002, swa_epoch_start: 3, annealing_epochs: 2}\n";
}
}  // namespace

TEST_CASE("GradScaler: PyTorch's semantics step by step; the same scales and weights as torch.amp.GradScaler") {
  // Scaled gradients, some with inf or NaN: skipped steps back off, clean
  // ones grow the scale every growth_interval steps.
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> grads = {{1024, -2048, 512}, {1, 2, 3}, {inf, 0, 0}, {4, 4, 4}, {5, -5, 5},
                                           {0, NAN, 0},       {8, 8, 8}, {2, 2, 2},   {1, 1, 1}, {3, 3, 3}};
  at::Tensor g = torch::empty({static_cast<int64_t>(grads.size()), 3});
  for (size_t i = 0; i < grads.size(); ++i) g[static_cast<int64_t>(i)] = torch::tensor(grads[i]);
  cairn::GradScalerOptions o;
  o.init_scale = 1024;
  o.growth_interval = 3;
  cairn::GradScaler scaler(o);
  auto p = torch::zeros({3}, torch::requires_grad());
  torch::optim::SGD opt({p}, torch::optim::SGDOptions(0.1));
  std::vector<double> scales;
  std::vector<at::Tensor> params;
  std::vector<bool> stepped;
  for (int64_t i = 0; i < g.size(0); ++i) {
    p.mutable_grad() = g[i].clone();
    stepped.push_back(scaler.step(opt));
    scaler.update();
    scales.push_back(scaler.get_scale());
    params.push_back(p.detach().clone());
  }
  // The documented rule, by hand: backoff 0.5 after inf/NaN, x2 after 3 clean steps.
  CHECK(stepped == std::vector<bool>{true, true, false, true, true, false, true, true, true, true});
  CHECK(scales == std::vector<double>{1024, 1024, 512, 512, 512, 256, 256, 256, 512, 512});
  CHECK(scaler.skipped_steps() == 2);
  CHECK(params[0][0].item<float>() == doctest::Approx(-0.1));  // 1024 / 1024 * lr 0.1
  // A growth that would overflow float32 keeps the scale (as torch._amp_update_scale_).
  cairn::GradScalerOptions big;
  big.init_scale = 3e38;
  big.growth_interval = 1;
  cairn::GradScaler near_max(big);
  auto q = torch::zeros({1}, torch::requires_grad());
  torch::optim::SGD qopt({q}, torch::optim::SGDOptions(0.1));
  q.mutable_grad() = torch::ones({1});
  CHECK(near_max.step(qopt));
  near_max.update();
  CHECK(near_max.get_scale() == static_cast<double>(3e38f));
  const cairn::Value s = scaler.state_dict();
  CHECK(s.at("scale").to_double() == 512);
  CHECK(s.at("_growth_tracker").to_int() == 1);
  CHECK(s.at("growth_interval").to_int() == 3);

  // PyTorch's own GradScaler on the same gradients (torch >= 2.3 has one for the CPU).
  test::TempDir dir("amp_scaler");
  cairn::Value spec = cairn::Value::dict();
  spec.set("grads", g);
  spec.set("init_scale", 1024.0);
  spec.set("growth_interval", static_cast<int64_t>(3));
  cairn::write_checkpoint(dir / "in.pt", spec);
  auto py = test::python("amp_reference.py", {"scaler", dir / "in.pt", dir / "out.pt"});
  if (py.exit_code == 3) {
    MESSAGE("compared with the documented rule only: " << py.output);
  } else {
    REQUIRE_MESSAGE(py.exit_code == 0, py.output);
    cairn::ReadOptions plain;
    plain.require_checksum = false;  // written by torch.save
    const cairn::Value ref = cairn::read_checkpoint(dir / "out.pt", plain);
    CHECK(ref.at("scales").to_double_list() == scales);
    CHECK(torch::equal(ref.at("params").to_tensor(), torch::stack(params)));
  }

  // Python loads the state into torch.amp.GradScaler.
  cairn::Value c = cairn::Value::dict();
  c.set("grad_scaler", s);
  cairn::write_checkpoint(dir / "scaler.ckpt", c);
  auto load = test::python("amp_reference.py", {"load", dir / "scaler.ckpt", "4", "4", "2"});
  CHECK_MESSAGE(load.exit_code == 0, load.output);
  CHECK(load.output.find("grad_scaler") != std::string::npos);
}

TEST_CASE("EMA and SWA: the averages follow their formulas; validation measures the EMA weights") {
  cairn::Loop loop;
  auto lin = torch::nn::Linear(2, 1);
  loop.track(*lin);
  torch::optim::SGD opt(lin->parameters(), torch::optim::SGDOptions(0.1));
  loop.track(opt);
  cairn::EmaOptions eo;
  eo.decay = 0.5;
  auto ema = std::make_shared<cairn::Ema>(eo);
  loop.add(ema);
  loop.fit_begin();
  torch::NoGradGuard no_grad;
  lin->weight.fill_(1.0);
  loop.epoch_begin();
  loop.batch_begin();
  loop.batch_end();  // the first update copies the weights (AveragedModel)
  CHECK(torch::equal(ema->average()[0], torch::full({1, 2}, 1.0)));
  lin->weight.fill_(3.0);
  loop.batch_begin();
  loop.batch_end();  // avg = lerp(avg, 3, 0.5) = 2
  const at::Tensor want = torch::full({1, 2}, 2.0);
  CHECK(torch::equal(ema->average()[0], want));
  CHECK(ema->updates() == 2);
  // Validation sees the average; the training weights come back after.
  at::Tensor seen;
  loop.on(cairn::Event::validation_batch_end, [&](cairn::Loop&) { seen = lin->weight.detach().clone(); });
  loop.validation_begin();
  loop.validation_batch_end();
  loop.validation_end();
  CHECK(torch::equal(seen, ema->average()[0]));
  CHECK(torch::equal(lin->weight, torch::full({1, 2}, 3.0)));
  // The checkpoint holds it for Python, and says validation measured it.
  const cairn::Value c = loop.make_checkpoint();
  CHECK(torch::equal(c.at("ema_state_dict").at("weight").to_tensor(), ema->average()[0]));
  CHECK(c.at("evaluate_with").to_string() == "ema_state_dict");
  // A weights-only file keeps the weights its score was measured with.
  const cairn::Value slim = cairn::run_checkpoint::weights_only(c);
  CHECK(slim.at("evaluate_with").to_string() == "ema_state_dict");
  CHECK(slim.at("ema_state_dict").equals(c.at("ema_state_dict")));

  // SWA: the running mean of epoch-end weights, from the start epoch on.
  cairn::Loop l2;
  auto lin2 = torch::nn::Linear(1, 1);
  l2.track(*lin2);
  torch::optim::SGD opt2(lin2->parameters(), torch::optim::SGDOptions(0.1));
  l2.track(opt2);
  cairn::SwaOptions so;
  so.swa_lrs = {0.01};
  so.swa_epoch_start = 1;
  so.annealing_epochs = 0;
  auto swa = std::make_shared<cairn::Swa>(so);
  l2.add(swa);
  l2.state().max_epochs = 4;
  l2.fit_begin();
  const std::vector<float> at_end = {5, 1, 2, 6};
  for (int e = 0; e < 4; ++e) {
    l2.epoch_begin();
    l2.batch_begin();
    if (e >= 1) CHECK(opt2.param_groups()[0].options().get_lr() == 0.01);
    lin2->weight.fill_(at_end[e]);
    l2.batch_end();
    l2.epoch_end();
  }
  CHECK(swa->n_averaged() == 3);
  // Epochs 1..3 averaged (1 + 2 + 6) / 3 = 3, and put in place at the last epoch's end.
  CHECK(lin2->weight.item<float>() == doctest::Approx(3.0));
}

TEST_CASE("SWA recomputes BatchNorm statistics over the training data with the averaged weights") {
  torch::nn::Sequential net(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4));
  torch::manual_seed(1);
  const at::Tensor x = torch::randn({40, 3});
  const int64_t n = cairn::update_batchnorm(*net.ptr(), [&] {
    for (int64_t b = 0; b < 40; b += 10) net->forward(x.slice(0, b, b + 10));
  });
  CHECK(n == 1);
  // The cumulative mean of the four batches' statistics, as PyTorch's update_bn (momentum None).
  torch::NoGradGuard no_grad;
  const at::Tensor h = net[0]->as<torch::nn::Linear>()->forward(x);
  at::Tensor mean = torch::zeros({4});
  for (int64_t b = 0; b < 40; b += 10) mean += h.slice(0, b, b + 10).mean(0) / 4;
  auto* bn = net[1]->as<torch::nn::BatchNorm1d>();
  CHECK(torch::allclose(bn->running_mean, mean, 1e-5, 1e-6));
  CHECK(bn->options.momentum() == 0.1);  // restored
}

TEST_CASE("SWA's learning rates equal torch.optim.swa_utils.SWALR bit for bit, for both strategies and any annealing") {
  test::TempDir dir("swalr_reference");
  auto py = test::python("averaging_reference.py", {"swalr", dir / "lrs.txt"});
  REQUIRE_MESSAGE(py.exit_code == 0, py.output);
  std::ifstream in(dir / "lrs.txt");
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    double start = 0, swa = 0;
    int64_t anneal = 0;
    std::string strategy;
    f >> start >> swa >> anneal >> strategy;
    std::string want;
    for (int64_t k = 0; f >> want; ++k) {
      const double got = cairn::swalr_lr(start, swa, anneal, strategy, k);
      // The exact bits: PyTorch's repr parses back to the double it printed.
      INFO(line << " at epoch " << k);
      CHECK(got == std::stod(want));
    }
    ++cases;
  }
  CHECK(cases == 30);
  // The example: anneal over 2 epochs, cos, 0.05 -> 0.01.
  CHECK(cairn::swalr_lr(0.05, 0.01, 2, "cos", 0) == 0.05);
  CHECK(cairn::swalr_lr(0.05, 0.01, 2, "cos", 1) == doctest::Approx(0.03));
  CHECK(cairn::swalr_lr(0.05, 0.01, 2, "cos", 2) == doctest::Approx(0.01));
}

TEST_CASE("EMA equals AveragedModel(get_ema_multi_avg_fn, use_buffers) and SWA equals AveragedModel + update_bn, "
          "bit for bit, on the weights of a real loop with BatchNorm") {
  torch::manual_seed(11);
  torch::nn::Sequential net(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4), torch::nn::ReLU(),
                            torch::nn::Linear(4, 2));
  cairn::Loop loop;
  loop.track(*net.ptr());
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  loop.track(opt);
  cairn::EmaOptions eo;
  eo.decay = 0.9;
  auto ema = std::make_shared<cairn::Ema>(eo);
  cairn::SwaOptions so;
  so.swa_lrs = {0.02};
  so.swa_epoch_start = 2;
  so.annealing_epochs = 2;
  auto swa = std::make_shared<cairn::Swa>(so);
  // EMA first: the order SWA runs in must not depend on the order they were added.
  loop.add(ema);
  loop.add(swa);
  const int64_t epochs = 6, batches = 3;
  loop.state().max_epochs = epochs;
  loop.state().batches_per_epoch = batches;
  const at::Tensor x = torch::randn({epochs, batches, 8, 3});
  const at::Tensor y = torch::randint(0, 2, {epochs, batches, 8});
  const at::Tensor train_x = torch::randn({4, 8, 3});
  loop.set_train_pass([&] {
    for (int64_t b = 0; b < train_x.size(0); ++b) net->forward(train_x[b]);
  });
  auto snapshot = [&] {
    cairn::Value d = cairn::Value::dict();
    for (const auto& kv : net->named_parameters()) d.set(kv.key(), kv.value().detach().clone());
    for (const auto& kv : net->named_buffers()) d.set(kv.key(), kv.value().detach().clone());
    return d;
  };
  cairn::Value run = cairn::Value::dict();
  run.set("initial", snapshot());
  cairn::Value steps = cairn::Value::list(), epoch_ends = cairn::Value::list();
  std::vector<double> lrs;
  at::Tensor validated;  // the weights the last validation measured
  loop.on(cairn::Event::validation_batch_end, [&](cairn::Loop&) { validated = net[3]->as<torch::nn::Linear>()->weight.detach().clone(); });
  loop.fit_begin();
  for (int64_t e = 0; e < epochs; ++e) {
    loop.epoch_begin();
    for (int64_t b = 0; b < batches; ++b) {
      loop.batch_begin();
      if (b == 0) lrs.push_back(opt.param_groups()[0].options().get_lr());
      opt.zero_grad();
      torch::nn::functional::cross_entropy(net->forward(x[e][b]), y[e][b]).backward();
      loop.before_optimizer_step();
      opt.step();
      loop.batch_end();
      steps.push_back(snapshot());
    }
    if (e >= 2) epoch_ends.push_back(snapshot());
    loop.validation_begin();
    loop.validation_batch_end();
    loop.validation_end();
    loop.epoch_end();
  }
  loop.fit_end();
  // SWALR from epoch 2 on, from the optimizer's 0.05.
  for (int64_t k = 0; k < 4; ++k) CHECK(lrs[static_cast<size_t>(2 + k)] == cairn::swalr_lr(0.05, 0.02, 2, "cos", k));
  CHECK(lrs[0] == 0.05);
  CHECK(swa->n_averaged() == 4);
  // The last validation measured the SWA average (with EMA validating, the
  // EMA's weights: validate_with ema swaps its average in after SWA's apply).
  const cairn::Value c = loop.make_checkpoint();
  CHECK(torch::equal(c.at("state_dict").at("3.weight").to_tensor(), c.at("swa_state_dict").at("3.weight").to_tensor()));
  CHECK(torch::equal(validated, c.at("ema_state_dict").at("3.weight").to_tensor()));
  CHECK(c.at("ema_state_dict").find("1.running_mean") != nullptr);
  run.set("steps", steps);
  run.set("epoch_ends", epoch_ends);
  run.set("train_x", train_x);
  run.set("decay", 0.9);
  run.set("ema_state_dict", c.at("ema_state_dict"));
  run.set("swa_state_dict", c.at("swa_state_dict"));
  run.set("final", c.at("state_dict"));
  test::TempDir dir("averaging_reference");
  cairn::write_checkpoint(dir / "run.pt", run);
  auto py = test::python("averaging_reference.py", {"averages", dir / "run.pt"});
  REQUIRE_MESSAGE(py.exit_code == 0, py.output);
  MESSAGE(py.output);
  CHECK(py.output.find("swa equal True max_abs_diff 0.0") != std::string::npos);
  CHECK(py.output.find("update_bn equal True max_abs_diff 0.0") != std::string::npos);
#if TORCH_VERSION_MAJOR >= 2
  CHECK(py.output.find("ema equal True max_abs_diff 0.0") != std::string::npos);
#else
  // Debian's 1.13 has no get_ema_multi_avg_fn: the 2.x build compares the EMA.
  CHECK(py.output.find("ema unavailable") != std::string::npos);
#endif
}

namespace {
//! `name`: number in a one-line JSON object (as cairn prints it).
double json_number(const std::string& json, const std::string& name) {
  const auto at = json.find("\"" + name + "\": ");
  REQUIRE_MESSAGE(at != std::string::npos, name << " in " << json);
  return std::stod(json.substr(at + name.size() + 4));
}
}  // namespace

TEST_CASE("SWA is validated where it is applied: every checkpoint's score is the score of its weights; inspect, "
          "validate and export name them; Python loads the export strictly") {
  test::TempDir dir("swa_validated");
  const std::string run = dir / "run";
  test::write_file(dir / "swa.yaml",
                   "name: swa_e2e\nseed: 4\nrun: {dir: " + run + "}\n"
                   "data: {name: synthetic, train_size: 480, valid_size: 160, test_size: 96, batch_size: 32, "
                   "features: 16, noise: 2.0}\n"
                   "model: {name: mlp, hidden: [32], dropout: 0.0}\n"
                   "optimizer: {name: sgd, lr: 0.05}\n"
                   "trainer: {max_epochs: 4, threads: 1, enable_progress_bar: false}\n"
                   "callbacks:\n"
                   "  - {name: checkpoint, monitor: valid/acc, mode: max, save_top_k: -1}\n"
                   "  - {name: swa, swa_lrs: 0.01, swa_epoch_start: 1, annealing_epochs: 2}\n");
  auto fit = test::cairn_cli({"fit", "--config", dir / "swa.yaml"});
  REQUIRE_MESSAGE(fit.exit_code == 0, fit.output);
  CHECK(fit.output.find("SWA's average replaces them before that epoch's validation") != std::string::npos);
  const std::string last = run + "/checkpoints/last.ckpt";
  const cairn::Value c = cairn::read_checkpoint(last);
  const cairn::run_checkpoint::View view(c, last);
  CHECK(view.evaluated_kind() == "swa");
  // Each file's logged valid/acc (at its epoch) is what validating its weights gives.
  std::map<int64_t, double> logged;  // epoch -> valid/acc
  for (const auto& s : view.series()) {
    if (s.name != "valid/acc") continue;
    for (size_t i = 0; i < s.value.size(); ++i) logged[s.epoch[i]] = s.value[i];
  }
  REQUIRE(logged.size() == 4);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(run + "/checkpoints")) {
    if (e.path().extension() != ".ckpt") continue;
    const cairn::Value f = cairn::read_checkpoint(e.path().string());
    const int64_t epoch = cairn::run_checkpoint::View(f).epoch() - 1;  // saved at the end of that epoch
    auto v = test::cairn_cli({"validate", "--config", dir / "swa.yaml", "--ckpt", e.path().string(), "--json"});
    REQUIRE_MESSAGE(v.exit_code == 0, v.output);
    INFO(e.path().filename().string() << ": " << v.output);
    CHECK(json_number(v.output, "valid/acc") == logged.at(epoch));
    ++files;
  }
  CHECK(files >= 5);  // four epochs' files and last.ckpt
  auto inspect = test::cairn_cli({"inspect", last, "--json"});
  CHECK(inspect.output.find("\"weights\": {\"kind\": \"swa\", \"key\": \"state_dict\"}") != std::string::npos);
  auto val = test::cairn_cli({"validate", "--config", dir / "swa.yaml", "--ckpt", "last", "--json"});
  CHECK(val.output.find("\"weights\": \"swa\"") != std::string::npos);
  // export: the evaluated weights, a plain state_dict Python loads with strict=True.
  auto ex = test::cairn_cli({"export", "--run-dir", run, "--ckpt", "last", "--out", dir / "model.pt"});
  REQUIRE_MESSAGE(ex.exit_code == 0, ex.output);
  cairn::ReadOptions any;
  const cairn::Value exported = cairn::read_checkpoint(dir / "model.pt", any);
  CHECK(exported.equals(view.evaluated_weights()));
  auto py = test::python("averaging_reference.py", {"load_mlp", dir / "model.pt", "16", "32", "4"});
  CHECK_MESSAGE(py.exit_code == 0, py.output);
  CHECK(py.output.find("with strict=True") != std::string::npos);
  // Asking for a set the file does not hold is a usage error naming it.
  auto none = test::cairn_cli({"export", "--ckpt", last, "--weights", "ema", "--out", dir / "ema.pt"});
  CHECK(none.exit_code == 2);
  CHECK(none.output.find("holds no ema_state_dict") != std::string::npos);
}

TEST_CASE("bf16-mixed + EMA + SWA killed with SIGKILL at random moments ends bit-identical; Python reads the averages") {
  test::TempDir dir("amp_kill");
  REQUIRE(cairn::autocast_supported(c10::DeviceType::CPU, at::kBFloat16));
  const std::string ref = dir / "ref", cut = dir / "cut";
  test::write_file(dir / "ref.yaml", config(ref, "bf16-mixed"));
  test::write_file(dir / "cut.yaml", config(cut, "bf16-mixed"));
  auto r = test::cairn_cli({"fit", "--config", dir / "ref.yaml"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);

  std::mt19937 rng(20261130);
  int kills = 0;
  for (int round = 0; round < 12; ++round) {
    const pid_t pid = test::spawn({CAIRN_CLI, "fit", "--config", dir / "cut.yaml"}, dir / "cut.log");
    if (round < 3) {
      test::wait_for_file(cut + "/checkpoints/last.ckpt", 60);
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 400)(rng)));
      ::kill(pid, SIGKILL);
    }
    const int code = test::wait_exit(pid);
    if (code == 128 + SIGKILL || code == -SIGKILL || code == 137) {
      ++kills;
      continue;
    }
    REQUIRE_MESSAGE(code == 0, test::read_file(dir / "cut.log"));
    break;
  }
  MESSAGE(kills << " SIGKILLs before the run finished");
  CHECK(kills >= 1);
  const cairn::Value a = test::comparable(cairn::read_checkpoint(ref + "/checkpoints/last.ckpt"));
  const cairn::Value b = test::comparable(cairn::read_checkpoint(cut + "/checkpoints/last.ckpt"));
  CHECK_MESSAGE(a.first_difference(b) == "", a.first_difference(b));
  CHECK(a.at("ema_state_dict").equals(b.at("ema_state_dict")));
  CHECK(a.at("swa_state_dict").equals(b.at("swa_state_dict")));
  CHECK(a.at("callbacks").at("SWA").at("n_averaged").to_int() == 3);
  // With both, the model is the EMA's: its checkpoint says so.
  CHECK(cairn::run_checkpoint::View(a).evaluated_kind() == "ema");
  CHECK(a.at("callbacks").at("EMA").at("updates").to_int() > 100);
  // The final weights are SWA's average (put in place at the last epoch).
  CHECK(a.at("state_dict").at("1.weight").equals(a.at("swa_state_dict").at("1.weight")));

  auto py = test::python("amp_reference.py", {"load", ref + "/checkpoints/last.ckpt", "16", "32,16", "4"});
  CHECK_MESSAGE(py.exit_code == 0, py.output);
  CHECK(py.output.find("ema_state_dict loaded") != std::string::npos);
  CHECK(py.output.find("swa_state_dict loaded") != std::string::npos);
  CHECK(py.output.find("evaluate_with ema_state_dict") != std::string::npos);
}

TEST_CASE("precision, ema and swa options that cannot work are config errors naming the key; adding EMA to a run is refused") {
  test::TempDir dir("amp_bad");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", config(run, "32"));
  struct Case {
    std::string set, message;
  };
  std::vector<Case> cases = {
      {"callbacks[1].decay=1.5", "callbacks[1].decay"},
      {"callbacks[2].swa_epoch_start=9", "callbacks[2].swa_epoch_start: averaging would start at epoch 10"},
      {"trainer.precision=bf16", "trainer.precision: expected one of 32, 32-true, bf16-mixed, 16-mixed"},
  };
  if (!cairn::autocast_supported(c10::DeviceType::CPU, at::kHalf)) {
    cases.push_back({"trainer.precision=16-mixed", "16-mixed is not supported on the CPU"});
  } else {
    // Where the CPU has float16 autocast (LibTorch 2.x), 16-mixed trains with a
    // scaler whose state is the checkpoint's grad_scaler, loaded by Python.
    auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--run-dir", dir / "fp16", "--set",
                              "trainer.precision=16-mixed", "--set", "trainer.max_epochs=4"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    const cairn::Value c = cairn::read_checkpoint(dir / "fp16/checkpoints/last.ckpt");
    CHECK(c.at("grad_scaler").at("scale").to_double() > 0);
    CHECK(c.at("grad_scaler").at("growth_interval").to_int() == 2000);
    auto py = test::python("amp_reference.py", {"load", dir / "fp16/checkpoints/last.ckpt", "16", "32,16", "4"});
    CHECK_MESSAGE(py.output.find("grad_scaler loaded: scale") != std::string::npos, py.output);
  }
  for (const auto& c : cases) {
    CAPTURE(c.set);
    auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", c.set, "--set", "trainer.device=cpu"});
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(r.output.find(c.message) != std::string::npos, r.output);
  }
  // A run without EMA, resumed with it: its averages would start mid-run.
  std::string plain = config(run, "32");
  plain.erase(plain.find("  - {name: ema"), plain.find("  - {name: swa") - plain.find("  - {name: ema"));
  test::write_file(dir / "plain.yaml", plain);
  auto first = test::cairn_cli({"fit", "--config", dir / "plain.yaml", "--set", "trainer.max_epochs=4"});
  REQUIRE_MESSAGE(first.exit_code == 0, first.output);
  auto more = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=6"});
  CHECK(more.exit_code == 2);
  CHECK_MESSAGE(more.output.find("ema callback's averaged weights are part of the run's state") != std::string::npos, more.output);
}
