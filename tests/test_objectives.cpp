// Losses and metrics: each metric against a straightforward reference on the
// same data fed in batches of unequal sizes, the losses' options, shape errors
// that name both shapes, and YAML experiments beyond classification
// (regression, multi-label, binary AUROC) resumed mid-epoch bit for bit.
#include "support.h"

#include <cairn/callbacks.h>
#include <cairn/config_drift.h>
#include <cairn/objectives.h>

#include <yaml-cpp/yaml.h>

#include <cmath>

namespace {
// Unequal batches, a batch of one among them: per-batch means would be wrong.
const std::vector<int64_t> kBatches = {1, 17, 40, 45};  // 103 examples

double feed(const cairn::Metric& m, const at::Tensor& out, const at::Tensor& y) {
  cairn::MetricStats s;
  int64_t at = 0;
  for (int64_t b : kBatches) {
    m.update(s, out.slice(0, at, at + b), y.slice(0, at, at + b));
    at += b;
  }
  REQUIRE(at == out.size(0));
  return m.compute(s);
}

double close(double a, double b) { return std::abs(a - b) <= 1e-12 * std::max(1.0, std::abs(b)); }

//! F1 from per-class counts, the textbook way.
double f1_reference(const std::vector<std::array<double, 3>>& counts, bool macro) {
  double tp = 0, fp = 0, fn = 0, sum = 0;
  for (const auto& c : counts) {
    tp += c[0], fp += c[1], fn += c[2];
    sum += (2 * c[0] + c[1] + c[2]) > 0 ? 2 * c[0] / (2 * c[0] + c[1] + c[2]) : 0.0;
  }
  return macro ? sum / static_cast<double>(counts.size()) : 2 * tp / (2 * tp + fp + fn);
}
}  // namespace

TEST_CASE("classification metrics over unequal batches equal a straightforward computation on all the data") {
  torch::manual_seed(3);
  const int64_t n = 103, c = 5;
  const at::Tensor logits = torch::randn({n, c}, torch::kDouble);
  at::Tensor y = torch::randint(c, {n}, torch::kLong);
  y[7] = 4;  // make sure the last class is present
  auto L = logits.accessor<double, 2>();
  auto Y = y.accessor<int64_t, 1>();

  double correct = 0, top2 = 0;
  std::vector<std::array<double, 3>> counts(c, {0, 0, 0});
  for (int64_t i = 0; i < n; ++i) {
    int64_t best = 0, second = -1;
    for (int64_t k = 1; k < c; ++k) {
      if (L[i][k] > L[i][best]) best = k;
    }
    for (int64_t k = 0; k < c; ++k) {
      if (k != best && (second < 0 || L[i][k] > L[i][second])) second = k;
    }
    correct += best == Y[i];
    top2 += best == Y[i] || second == Y[i];
    if (best == Y[i]) {
      counts[best][0] += 1;
    } else {
      counts[best][1] += 1;
      counts[Y[i]][2] += 1;
    }
  }
  CHECK(close(feed(cairn::Accuracy(), logits, y), correct / n));
  CHECK(close(feed(cairn::TopKAccuracy(2), logits, y), top2 / n));
  CHECK(close(feed(cairn::F1Score(c, cairn::F1Score::macro), logits, y), f1_reference(counts, true)));
  CHECK(close(feed(cairn::F1Score(c, cairn::F1Score::micro), logits, y), f1_reference(counts, false)));
  // Micro F1 of single-label classes is the accuracy; macro is not (the test can tell them apart).
  CHECK(close(feed(cairn::F1Score(c, cairn::F1Score::micro), logits, y), correct / n));
  CHECK_FALSE(close(feed(cairn::F1Score(c, cairn::F1Score::macro), logits, y), correct / n));
  // The mean of per-batch F1 values is not the F1 of the data: exactness matters.
  double batch_mean = 0;
  int64_t at = 0;
  for (int64_t b : kBatches) {
    cairn::MetricStats s;
    cairn::F1Score(c, cairn::F1Score::macro).update(s, logits.slice(0, at, at + b), y.slice(0, at, at + b));
    batch_mean += cairn::F1Score(c, cairn::F1Score::macro).compute(s) * static_cast<double>(b) / n;
    at += b;
  }
  CHECK_FALSE(close(batch_mean, f1_reference(counts, true)));

  // Perplexity: exp of the mean negative log-likelihood over targets that are not ignored.
  at::Tensor yi = y.clone();
  yi.slice(0, 0, 10).fill_(-100);
  auto YI = yi.accessor<int64_t, 1>();
  double nll = 0, count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (YI[i] == -100) continue;
    double z = 0;
    for (int64_t k = 0; k < c; ++k) z += std::exp(L[i][k]);
    nll += std::log(z) - L[i][YI[i]];
    count += 1;
  }
  CHECK(close(feed(cairn::Perplexity(-100), logits, yi), std::exp(nll / count)));
}

TEST_CASE("multi-label accuracy and F1, and binary AUROC with tied scores, equal their references") {
  torch::manual_seed(4);
  const int64_t n = 103, l = 4;
  const at::Tensor logits = torch::randn({n, l}, torch::kFloat);
  const at::Tensor y = torch::bernoulli(torch::full({n, l}, 0.4));
  auto L = logits.accessor<float, 2>();
  auto Y = y.accessor<float, 2>();
  double correct = 0;
  std::vector<std::array<double, 3>> counts(l, {0, 0, 0});
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < l; ++k) {
      const bool p = L[i][k] > 0, t = Y[i][k] > 0.5f;
      correct += p == t;
      counts[k][0] += p && t;
      counts[k][1] += p && !t;
      counts[k][2] += !p && t;
    }
  }
  CHECK(close(feed(cairn::Accuracy(), logits, y), correct / (n * l)));
  CHECK(close(feed(cairn::F1Score(0, cairn::F1Score::macro), logits, y), f1_reference(counts, true)));
  CHECK(close(feed(cairn::F1Score(0, cairn::F1Score::micro), logits, y), f1_reference(counts, false)));

  // AUROC: scores rounded to one decimal, so many tie; the reference counts
  // every (positive, negative) pair, a tie as half.
  const at::Tensor score = (torch::randn({n}, torch::kDouble) * 3).round() / 10;
  const at::Tensor label = torch::bernoulli(torch::full({n}, 0.35, torch::kDouble)).to(torch::kLong);
  auto S = score.accessor<double, 1>();
  auto B = label.accessor<int64_t, 1>();
  double pairs = 0, wins = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      if (B[i] != 1 || B[j] != 0) continue;
      pairs += 1;
      wins += S[i] > S[j] ? 1.0 : S[i] == S[j] ? 0.5 : 0.0;
    }
  }
  REQUIRE(pairs > 0);
  CHECK(close(feed(cairn::BinaryAuroc(), score, label), wins / pairs));
  // Two logits per example order examples as their difference does.
  const at::Tensor two = torch::stack({torch::zeros_like(score), score}, 1);
  CHECK(close(feed(cairn::BinaryAuroc(), two, label), wins / pairs));
  // One class only: nothing to rank, NaN (not 0.5, not a crash); a NaN score likewise.
  CHECK(std::isnan(feed(cairn::BinaryAuroc(), score, torch::zeros_like(label))));
  at::Tensor nan_score = score.clone();
  nan_score[5] = std::nan("");
  CHECK(std::isnan(feed(cairn::BinaryAuroc(), nan_score, label)));
}

TEST_CASE("regression metrics: MAE, RMSE and R² (per output, averaged) equal their references") {
  torch::manual_seed(5);
  const int64_t n = 103, d = 3;
  const at::Tensor y = torch::randn({n, d}, torch::kDouble) * torch::tensor({1.0, 5.0, 0.1}, torch::kDouble) + 2.0;
  const at::Tensor out = (y + torch::randn({n, d}, torch::kDouble) * 0.3).to(torch::kFloat);
  auto Y = y.accessor<double, 2>();
  auto O = out.accessor<float, 2>();
  double abs_sum = 0, sq_sum = 0, r2 = 0;
  for (int64_t k = 0; k < d; ++k) {
    double mean = 0;
    for (int64_t i = 0; i < n; ++i) mean += Y[i][k] / n;
    double sse = 0, sst = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double e = static_cast<double>(O[i][k]) - Y[i][k];
      abs_sum += std::abs(e);
      sq_sum += e * e;
      sse += e * e;
      sst += (Y[i][k] - mean) * (Y[i][k] - mean);
    }
    r2 += (1 - sse / sst) / d;
  }
  const at::Tensor yf = y.to(torch::kFloat);
  // y in float32 for the metrics, as a data set holds it; the references use it too.
  auto YF = yf.accessor<float, 2>();
  abs_sum = sq_sum = r2 = 0;
  for (int64_t k = 0; k < d; ++k) {
    double mean = 0;
    for (int64_t i = 0; i < n; ++i) mean += static_cast<double>(YF[i][k]) / n;
    double sse = 0, sst = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double e = static_cast<double>(O[i][k]) - static_cast<double>(YF[i][k]);
      abs_sum += std::abs(e);
      sq_sum += e * e;
      sse += e * e;
      sst += (static_cast<double>(YF[i][k]) - mean) * (static_cast<double>(YF[i][k]) - mean);
    }
    r2 += (1 - sse / sst) / d;
  }
  CHECK(close(feed(cairn::ErrorMetric(cairn::ErrorMetric::mae), out, yf), abs_sum / (n * d)));
  CHECK(close(feed(cairn::ErrorMetric(cairn::ErrorMetric::rmse), out, yf), std::sqrt(sq_sum / (n * d))));
  CHECK(std::abs(feed(cairn::R2Score(), out, yf) - r2) < 1e-10);
}

namespace {
//! Batch splits of n examples: one batch, ones of one, uneven ones.
std::vector<std::vector<int64_t>> splits(int64_t n) {
  std::vector<std::vector<int64_t>> out = {{n}, {1, n - 1}};
  std::vector<int64_t> uneven;
  for (int64_t at = 0, b = 3; at < n; at += b, b = b * 2 + 1) uneven.push_back(std::min(b, n - at));
  out.push_back(uneven);
  std::vector<int64_t> sevens;
  for (int64_t at = 0; at < n; at += 7) sevens.push_back(std::min<int64_t>(7, n - at));
  out.push_back(sevens);
  return out;
}

//! The metric's value over every split (a list, for Python to compare each).
cairn::Value values(const cairn::Metric& m, const at::Tensor& out, const at::Tensor& y) {
  std::vector<double> v;
  for (const auto& split : splits(out.size(0))) {
    cairn::MetricStats s;
    int64_t at = 0;
    for (int64_t b : split) {
      m.update(s, out.slice(0, at, at + b), y.slice(0, at, at + b));
      at += b;
    }
    v.push_back(m.compute(s));
  }
  return cairn::Value(v);
}
}  // namespace

TEST_CASE("metrics equal scikit-learn and torchmetrics: F1 averages, binary tasks, ignore_index, AUROC with ties, "
          "centred R²; in any batch split") {
  torch::manual_seed(21);
  cairn::Value cases = cairn::Value::dict();
  // One case for metric_reference.py: its kind, the data and cairn's values.
  auto add = [&](const std::string& name, const std::string& kind, const at::Tensor& out, const at::Tensor& y,
                 const cairn::Value& got, const std::string& flag = "", const cairn::Value& flag_value = cairn::Value()) {
    cairn::Value k = cairn::Value::dict();
    k.set("kind", kind);
    if (!flag.empty()) k.set(flag, flag_value);
    k.set("output", out);
    k.set("target", y);
    k.set("cairn", got);
    cases.set(name, k);
  };
  auto add_classes = [&](const std::string& name, const at::Tensor& out, const at::Tensor& y, int64_t ignore) {
    const int64_t c = out.size(1);
    cairn::Value got = cairn::Value::dict();
    got.set("acc", values(cairn::Accuracy(ignore), out, y));
    got.set("top3_acc", values(cairn::TopKAccuracy(3, ignore), out, y));
    got.set("f1_macro", values(cairn::F1Score(c, cairn::F1Score::macro, ignore), out, y));
    got.set("f1_micro", values(cairn::F1Score(c, cairn::F1Score::micro, ignore), out, y));
    got.set("f1_weighted", values(cairn::F1Score(c, cairn::F1Score::weighted, ignore), out, y));
    add(name, "multiclass", out, y, got, "ignore_index", ignore);
    return got;
  };
  // The case: 3 of 10 classes, predicted perfectly: macro F1 is 1, not 0.3.
  {
    const at::Tensor y = torch::tensor({0, 3, 7, 3, 0, 7, 7}, torch::kLong);
    const at::Tensor out = torch::nn::functional::one_hot(y, 10).to(torch::kFloat);
    const cairn::Value got = add_classes("three_of_ten", out, y, -100);
    CHECK(got.at("f1_macro").to_double_list().front() == 1.0);
  }
  // Random: 7 classes, one never present (sometimes predicted), one neither present nor predicted.
  {
    at::Tensor out = torch::randn({203, 7});
    out.select(1, 6).fill_(-1e9);  // class 6 never predicted
    at::Tensor y = torch::randint(0, 5, {203}, torch::kLong);  // classes 5, 6 never present
    add_classes("random", out, y, -100);
    // ignore_index: a fifth of the targets ignored (the loss's -100, and another value).
    at::Tensor yi = y.clone();
    yi.masked_fill_(torch::rand({203}) < 0.2, -100);
    const cairn::Value got = add_classes("ignored", out, yi, -100);
    at::Tensor y3 = y.clone();
    y3.masked_fill_(torch::rand({203}) < 0.2, 255);
    add_classes("ignored_255", out, y3, 255);
    // Every target ignored: nothing measured, NaN (not 0, not a crash).
    CHECK(std::isnan(feed(cairn::Accuracy(), out.slice(0, 0, 103), torch::full({103}, -100, torch::kLong))));
    CHECK(std::isnan(feed(cairn::F1Score(7, cairn::F1Score::macro), out.slice(0, 0, 103), torch::full({103}, -100, torch::kLong))));
  }
  // Binary, one logit: macro is the mean of both classes' F1 (scikit-learn), micro the accuracy.
  {
    const at::Tensor out = torch::randn({157}) + 0.3;
    const at::Tensor y = torch::bernoulli(torch::sigmoid(out * 2)).to(torch::kFloat);
    cairn::Value got = cairn::Value::dict();
    got.set("acc", values(cairn::Accuracy(), out, y));
    got.set("f1_macro", values(cairn::F1Score(0, cairn::F1Score::macro), out, y));
    got.set("f1_micro", values(cairn::F1Score(0, cairn::F1Score::micro), out, y));
    got.set("f1_weighted", values(cairn::F1Score(0, cairn::F1Score::weighted), out, y));
    add("binary", "binary", out, y, got);
    // The same as [N, 1].
    CHECK(feed(cairn::F1Score(0, cairn::F1Score::macro), out.slice(0, 0, 103).unsqueeze(1), y.slice(0, 0, 103).unsqueeze(1)) ==
          feed(cairn::F1Score(0, cairn::F1Score::macro), out.slice(0, 0, 103), y.slice(0, 0, 103)));
  }
  // Multi-label: 5 labels, the last never present nor predicted (it counts 0 in macro, as both references).
  {
    at::Tensor out = torch::randn({131, 5});
    out.select(1, 4).fill_(-3);
    at::Tensor y = torch::bernoulli(torch::full({131, 5}, 0.4));
    y.select(1, 4).zero_();
    cairn::Value got = cairn::Value::dict();
    got.set("f1_macro", values(cairn::F1Score(0, cairn::F1Score::macro), out, y));
    got.set("f1_micro", values(cairn::F1Score(0, cairn::F1Score::micro), out, y));
    got.set("f1_weighted", values(cairn::F1Score(0, cairn::F1Score::weighted), out, y));
    add("multilabel", "multilabel", out, y, got);
  }
  // AUROC with many ties.
  {
    const at::Tensor score = (torch::randn({181}, torch::kDouble) * 3).round() / 10;
    const at::Tensor label = torch::bernoulli(torch::full({181}, 0.35, torch::kDouble)).to(torch::kLong);
    cairn::Value got = cairn::Value::dict();
    got.set("auroc", values(cairn::BinaryAuroc(), score, label));
    add("auroc_ties", "auroc", score, label, got);
  }
  // R²: three outputs of very different scales, far from 0 (an uncentred formula loses digits there).
  {
    const at::Tensor y = torch::randn({149, 3}, torch::kDouble) * torch::tensor({1.0, 5.0, 1e-3}, torch::kDouble) + 1e4;
    const at::Tensor out = y + torch::randn({149, 3}, torch::kDouble) * torch::tensor({0.3, 1.0, 1e-4}, torch::kDouble);
    cairn::Value got = cairn::Value::dict();
    got.set("r2", values(cairn::R2Score(), out, y));
    add("r2", "r2", out, y, got, "far_from_zero", true);
    // Near 0 and of unit scale, where every formula keeps its digits (torchmetrics compared too:
    // it counts a column whose squared errors sum below 1e-4 as perfect, hence no small scales here).
    const at::Tensor y0 = torch::randn({149, 3}, torch::kDouble) * torch::tensor({1.0, 5.0, 2.0}, torch::kDouble);
    const at::Tensor out0 = y0 + torch::randn({149, 3}, torch::kDouble) * torch::tensor({0.3, 1.0, 0.5}, torch::kDouble);
    cairn::Value g0 = cairn::Value::dict();
    g0.set("r2", values(cairn::R2Score(), out0, y0));
    add("r2_near_zero", "r2", out0, y0, g0);
    // A constant target column: NaN (the docs' rule), not -inf.
    at::Tensor yc = y.clone();
    yc.select(1, 1).fill_(0.1);
    cairn::Value gc = cairn::Value::dict();
    gc.set("r2", values(cairn::R2Score(), out, yc));
    for (double v : gc.at("r2").to_double_list()) CHECK(std::isnan(v));
    add("r2_constant", "r2", out, yc, gc, "constant", true);
  }
  test::TempDir dir("metric_reference");
  cairn::write_checkpoint(dir / "cases.pt", cases);
  auto py = test::python("metric_reference.py", {dir / "cases.pt"});
  MESSAGE(py.output.substr(py.output.size() > 600 ? py.output.size() - 600 : 0));
  CHECK_MESSAGE(py.exit_code == 0, py.output);
  CHECK(py.output.find("largest relative difference") != std::string::npos);
#if TORCH_VERSION_MAJOR >= 2
  // The 2.x build's Python has torchmetrics (scripts/torch-wheel.sh installs it).
  CHECK(py.output.find("torchmetrics unavailable") == std::string::npos);
  CHECK(py.output.find("vs torchmetrics") != std::string::npos);
#endif
}

TEST_CASE("losses: label smoothing, class weights and ignore_index as PyTorch defines them; shapes named on mismatch") {
  torch::manual_seed(6);
  const at::Tensor logits = torch::randn({6, 3}, torch::kDouble);
  const at::Tensor y = torch::tensor({0, 2, 1, 1, -100, 2}, torch::kLong);
  const at::Tensor logp = torch::log_softmax(logits, 1);
  // Smoothing eps: (1 - eps) * nll + eps * mean over classes of -log p, averaged over kept targets.
  const double eps = 0.2;
  double want = 0;
  int kept = 0;
  for (int64_t i = 0; i < 6; ++i) {
    const int64_t t = y[i].item<int64_t>();
    if (t == -100) continue;
    ++kept;
    want += (1 - eps) * -logp[i][t].item<double>() + eps * -logp[i].mean().item<double>();
  }
  cairn::ClassLossOptions o;
  o.label_smoothing = eps;
  CHECK(close(cairn::CrossEntropyLoss(o)(logits, y).item<double>(), want / kept));
  // Class weights: a weighted mean, the weights of the kept targets as denominator.
  o = {};
  o.weight = {1.0, 2.0, 0.5};
  double num = 0, den = 0;
  for (int64_t i = 0; i < 6; ++i) {
    const int64_t t = y[i].item<int64_t>();
    if (t == -100) continue;
    num += o.weight[t] * -logp[i][t].item<double>();
    den += o.weight[t];
  }
  CHECK(close(cairn::CrossEntropyLoss(o)(logits, y).item<double>(), num / den));
  CHECK(close(cairn::NllLoss(o)(logp, y).item<double>(), num / den));

  auto message = [](const auto& fn) {
    try {
      fn();
    } catch (const cairn::ShapeMismatch& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  const std::string mse = message([] { cairn::RegressionLoss(cairn::RegressionLoss::mse).check(torch::zeros({2, 1}), torch::zeros({2})); });
  CHECK_MESSAGE(mse.find("mse needs float targets shaped like the outputs; the model gives [2, 1] for targets [2]") != std::string::npos, mse);
  CHECK(mse.find("save the targets as [N, 1]") != std::string::npos);
  const std::string ce = message([] { cairn::CrossEntropyLoss().check(torch::zeros({4, 3}), torch::zeros({4, 3})); });
  CHECK_MESSAGE(ce.find("cross_entropy needs outputs [N, C, ...] and integer class targets [N, ...]") != std::string::npos, ce);
  const std::string w = message([&] { cairn::CrossEntropyLoss(o).check(torch::zeros({4, 5}), torch::zeros({4}, torch::kLong)); });
  CHECK_MESSAGE(w.find("weight has 3 values but the model gives 5 classes") != std::string::npos, w);
  const std::string k = message([] { cairn::TopKAccuracy(5).check(torch::zeros({4, 3}), torch::zeros({4}, torch::kLong)); });
  CHECK_MESSAGE(k.find("k = 5 but the model gives only 3 classes") != std::string::npos, k);
  // Segmentation-shaped class targets are fine.
  CHECK(message([] { cairn::CrossEntropyLoss().check(torch::zeros({2, 3, 4, 4}), torch::zeros({2, 4, 4}, torch::kLong)); }) == "(no error)");
}

namespace {
//! Tensors for a regression (targets [N, 2]) written as torch.save would.
void write_regression(const std::string& path) {
  torch::manual_seed(8);
  const at::Tensor x = torch::randn({260, 6});
  const at::Tensor w = torch::randn({6, 2});
  const at::Tensor y = torch::tanh(x.matmul(w)) + 0.05 * torch::randn({260, 2});
  cairn::Value d = cairn::Value::dict();
  d.set("train_x", x.slice(0, 0, 200));
  d.set("train_y", y.slice(0, 0, 200));
  d.set("test_x", x.slice(0, 200));
  d.set("test_y", y.slice(0, 200));
  cairn::write_checkpoint(path, d);
}

std::string regression_config(const std::string& run, const std::string& data) {
  return "name: reg\nseed: 2\nrun: {dir: " + run + "}\n"
         "data: {name: tensors, path: " + data + ", batch_size: 16, valid_fraction: 0.2}\n"
         "model: {name: mlp, hidden: [16], dropout: 0.2}\n"
         "loss: {name: smooth_l1, beta: 0.5}\n"
         "metrics: [mae, rmse, r2]\n"
         "optimizer: {name: adam, lr: 0.01}\n"
         "trainer: {max_epochs: 3, threads: 1, log_every_n_steps: 3, enable_progress_bar: false}\n"
         "callbacks:\n  - {name: checkpoint, monitor: valid/r2, mode: max, every_n_train_steps: 3}\n";
}

std::string binary_config(const std::string& run) {
  return "name: bin\nseed: 4\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 150, valid_size: 60, test_size: 60, num_classes: 2, noise: 2.0, batch_size: 16}\n"
         "model: {name: mlp, hidden: [8], dropout: 0.3}\n"
         "loss: {name: cross_entropy, label_smoothing: 0.1}\n"
         "metrics: [auroc, {name: f1, average: macro}]\n"
         "trainer: {max_epochs: 3, threads: 1, enable_progress_bar: false}\n"
         "callbacks:\n  - {name: checkpoint, monitor: valid/auroc, mode: max, every_n_train_steps: 2}\n";
}

//! Fits `yaml` in-process, interrupted (as SIGTERM would) at global step `stop` (0: never), then resumed.
cairn::Value fit(const std::string& yaml_path, int64_t stop) {
  return test::fit_stop_resume(yaml_path, "", stop, [](const cairn::Value& mid) {
    // Stopped mid-epoch: the checkpoint carries the epoch's running statistics.
    CHECK(mid.at("loop").at("metric_states").size() > 0);
  });
}
}  // namespace

TEST_CASE("YAML regression and binary experiments log their metrics and resume mid-epoch bit for bit") {
  test::TempDir dir("objectives");
  write_regression(dir / "reg.pt");
  struct Case {
    std::string name, yaml;
    int64_t stop;
    std::vector<std::string> metrics;
  };
  const std::vector<Case> cases = {
      {"regression", "", 5, {"train/mae", "train/rmse", "train/r2", "valid/r2", "test/mae", "test/rmse", "test/r2"}},
      {"binary", "", 4, {"train/auroc", "train/f1_macro", "valid/auroc", "test/auroc", "test/f1_macro"}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto config = [&](const std::string& run) {
      return c.name == "regression" ? regression_config(run, dir / "reg.pt") : binary_config(run);
    };
    test::write_file(dir / (c.name + "_ref.yaml"), config(dir / (c.name + "_ref")));
    test::write_file(dir / (c.name + "_cut.yaml"), config(dir / (c.name + "_cut")));
    const cairn::Value ref = fit(dir / (c.name + "_ref.yaml"), 0);
    const cairn::Value cut = fit(dir / (c.name + "_cut.yaml"), c.stop);
    for (const auto& m : c.metrics) {
      CAPTURE(m);
      REQUIRE(ref.at("metrics").contains(m));
      const at::Tensor v = ref.at("metrics").at(m).at("value").to_tensor();
      CHECK(v.numel() == (m.rfind("test/", 0) == 0 ? 1 : 3));
      CHECK(std::isfinite(v[-1].item<double>()));
    }
    CHECK_MESSAGE(ref.first_difference(cut) == "", ref.first_difference(cut));
    CHECK(test::read_file(dir / (c.name + "_ref/metrics.csv")) == test::read_file(dir / (c.name + "_cut/metrics.csv")));
  }
  // The regression learned something: R² well above 0 on the test split.
  const cairn::Value reg = cairn::read_checkpoint(dir / "regression_ref/checkpoints/last.ckpt");
  CHECK(reg.at("metrics").at("test/r2").at("value").to_tensor()[-1].item<double>() > 0.3);
}

TEST_CASE("a metric removed from the config: its saved running statistics are dropped with a resume warning") {
  test::TempDir dir("objectives_removed");
  write_regression(dir / "reg.pt");
  const std::string run = dir / "run";
  test::write_file(dir / "a.yaml", regression_config(run, dir / "reg.pt"));
  std::string fewer = regression_config(run, dir / "reg.pt");
  fewer.replace(fewer.find("metrics: [mae, rmse, r2]"), 24, "metrics: [mae, rmse]");
  fewer.replace(fewer.find("monitor: valid/r2, mode: max"), 28, "monitor: valid/mae, mode: min");
  test::write_file(dir / "b.yaml", fewer);
  cairn::register_builtin_callbacks();
  {
    auto spec = cairn::parse_experiment(dir / "a.yaml");
    auto t = cairn::build_trainer(spec);
    t->loop().on(cairn::Event::batch_end, [](cairn::Loop& l) {
      if (l.state().global_step == 5) l.state().request_interrupt(SIGTERM, "test stop");
    });
    REQUIRE(t->fit().interrupted);
  }
  auto spec = cairn::parse_experiment(dir / "b.yaml");
  auto t = cairn::build_trainer(spec);
  t->resume_from(run + "/checkpoints");
  t->loop().set_allow_unclaimed_state(true);  // the r2-monitoring checkpoint callback is gone too
  const cairn::FitResult r = t->fit();
  CHECK_FALSE(r.interrupted);
  bool warned = false;
  for (const auto& w : t->loop().resume_warnings()) warned = warned || w.find("metric 'train/r2'") != std::string::npos;
  CHECK(warned);
  CHECK(t->loop().metrics().count("train/r2") == 0);
}

TEST_CASE("YAML: unknown loss or metric names suggest the closest; shapes that do not fit name the key, the loss and both shapes") {
  test::TempDir dir("objectives_bad");
  // Targets [N] for a model that gives [N, 1].
  cairn::Value d = cairn::Value::dict();
  d.set("train_x", torch::randn({40, 3}));
  d.set("train_y", torch::randn({40}));
  cairn::write_checkpoint(dir / "flat.pt", d);
  const std::string base = "name: bad\nrun: {dir: " + (dir / "run") + "}\n"
                           "data: {name: tensors, path: " + (dir / "flat.pt") + ", batch_size: 8}\n"
                           "model: {name: mlp, hidden: [4]}\n";
  test::write_file(dir / "shape.yaml", base + "loss: {name: mse}\nmetrics: [mae]\n");
  auto r = test::cairn_cli({"fit", "--config", dir / "shape.yaml"});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(r.output.find(dir / "shape.yaml" + ":5:") != std::string::npos, r.output);
  CHECK_MESSAGE(r.output.find("loss.name: mse needs float targets shaped like the outputs; the model gives [2, 1] for targets [2]") !=
                    std::string::npos,
                r.output);

  test::write_file(dir / "names.yaml", base + "loss: {name: cross_entopy}\nmetrics: [acuracy, {name: f1, average: macro}]\n");
  r = test::cairn_cli({"print-config", "--config", dir / "names.yaml"});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(r.output.find("loss.name: unknown loss 'cross_entopy'; did you mean 'cross_entropy'?") != std::string::npos, r.output);
  CHECK_MESSAGE(r.output.find(":6:11: metrics[0].name: unknown metric 'acuracy'; did you mean 'accuracy'?") != std::string::npos,
                r.output);

  // A classification loss on float targets: the data says which loss would take them.
  test::write_file(dir / "kind.yaml", base);
  r = test::cairn_cli({"fit", "--config", dir / "kind.yaml"});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(r.output.find("'train_y' must be an integer tensor of class labels") != std::string::npos, r.output);
  CHECK(r.output.find("float targets need a regression or multi-label loss") != std::string::npos);

  // The same metric twice (on targets [N, 1], which fit the model).
  d.set("train_y", torch::randn({40, 1}));
  cairn::write_checkpoint(dir / "column.pt", d);
  test::write_file(dir / "twice.yaml", base + "loss: {name: mse}\nmetrics: [mae, mae]\n");
  r = test::cairn_cli({"fit", "--config", dir / "twice.yaml", "--set", "data.path=" + (dir / "column.pt")});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(r.output.find("metrics[1].name: metrics[0] already logs 'mae'") != std::string::npos, r.output);
  r = test::cairn_cli({"fit", "--config", dir / "twice.yaml", "--set", "data.path=" + (dir / "column.pt"), "--set",
                       "metrics=[mae, r2]", "--set", "trainer.max_epochs=1"});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
}

TEST_CASE("relative input paths resolve from the config file's folder; with --set, from the current directory") {
  test::TempDir dir("objectives_paths");
  test::fs::create_directories(dir / "exp/data");
  cairn::Value d = cairn::Value::dict();
  d.set("train_x", torch::randn({40, 3}));
  d.set("train_y", torch::randn({40, 1}));
  cairn::write_checkpoint(dir / "exp/data/d.pt", d);
  test::write_file(dir / "exp/c.yaml", "name: rel\nrun: {dir: " + (dir / "run") + "}\n"
                                       "data: {name: tensors, path: data/d.pt, batch_size: 8}\n"
                                       "model: {name: mlp, hidden: [4]}\nloss: {name: l1}\ntrainer: {max_epochs: 1}\n");
  // The test runs elsewhere: data/d.pt exists only next to the config.
  REQUIRE_FALSE(test::fs::exists("data/d.pt"));
  auto pc = test::cairn_cli({"print-config", "--config", dir / "exp/c.yaml"});
  REQUIRE_MESSAGE(pc.exit_code == 0, pc.output);
  CHECK_MESSAGE(pc.output.find("path: " + (dir / "exp/data/d.pt")) != std::string::npos, pc.output);
  auto fit = test::cairn_cli({"fit", "--config", dir / "exp/c.yaml"});
  CHECK_MESSAGE(fit.exit_code == 0, fit.output);
  // --set: relative to where cairn runs (the test's directory).
  const std::string rel = test::fs::relative(dir / "exp/data/d.pt", test::fs::current_path()).string();
  REQUIRE(rel.rfind("/", 0) != 0);
  pc = test::cairn_cli({"print-config", "--config", dir / "exp/c.yaml", "--set", "data.path=" + rel});
  CHECK_MESSAGE(pc.exit_code == 0, pc.output);
  pc = test::cairn_cli({"print-config", "--config", dir / "exp/c.yaml", "--set", "data.path=data/d.pt"});
  CHECK(pc.exit_code == 2);
  CHECK_MESSAGE(pc.output.find("data.path: no such file: " + (test::fs::current_path() / "data/d.pt").string()) != std::string::npos,
                pc.output);
}

TEST_CASE("resume drift: a run saved before loss and metrics existed resumes with the defaults; another loss is refused") {
  const std::string file = std::string(CAIRN_SOURCE_DIR) + "/configs/tabular_csv.yaml";
  auto config = [&](const std::string& extra, const std::string& path) {
    return cairn::yaml_to_value(YAML::Load("seed: 1\ndata: {name: csv, path: " + path + "}\n" + extra));
  };
  const std::string defaults = "loss: {name: cross_entropy, label_smoothing: 0.0, weight: [], ignore_index: -100}\n"
                               "metrics: [{name: accuracy}]\n";
  const cairn::Value old = config("", file);
  const cairn::Value now = config(defaults, file);
  CHECK(cairn::diff_configs(old, now).empty());
  const cairn::Value other = config("loss: {name: mse}\nmetrics: []\n", file);
  bool refused = false;
  for (const auto& c : cairn::diff_configs(old, other)) refused = refused || (c.key == "loss.name" && !c.safe);
  CHECK(refused);
  // The same file named another way is no change; another file is.
  CHECK(cairn::diff_configs(old, config(defaults, std::string(CAIRN_SOURCE_DIR) + "/configs/../configs/tabular_csv.yaml")).empty());
  CHECK(cairn::diff_configs(old, config(defaults, std::string(CAIRN_SOURCE_DIR) + "/configs/multilabel_mlp.yaml")).size() == 1);
}

TEST_CASE("YAML: a monitor the run cannot log is a config error at its key, naming what the run logs (exit 2)") {
  test::TempDir dir("monitor_yaml");
  const std::string base =
      "name: m\nseed: 1\nrun: {dir: " + (dir / "run") + "}\n"
      "data: {name: synthetic, train_size: 64, valid_size: 0, test_size: 0, batch_size: 16}\n"
      "model: {name: mlp, hidden: [8]}\n"
      "trainer: {max_epochs: 1, enable_progress_bar: false}\n"
      "callbacks:\n"
      "  - {name: checkpoint, monitor: valid/acc, mode: max}\n"
      "  - {name: early_stopping, monitor: valid/loss}\n";
  test::write_file(dir / "novalid.yaml", base);
  auto r = test::cairn_cli({"fit", "--config", dir / "novalid.yaml"});
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("novalid.yaml:8:") != std::string::npos);
  CHECK(r.output.find("callbacks[0].monitor") != std::string::npos);
  CHECK(r.output.find("callbacks[1].monitor") != std::string::npos);
  CHECK(r.output.find("no validation data") != std::string::npos);
  CHECK(r.output.find("it logs train/loss, train/acc") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "run/checkpoints"));
  // A typo with validation data: the same error, at the key.
  std::string typo = base;
  typo.replace(typo.find("valid_size: 0"), 13, "valid_size: 32");
  typo.replace(typo.find("monitor: valid/loss"), 19, "monitor: valid/los");
  test::write_file(dir / "typo.yaml", typo);
  r = test::cairn_cli({"fit", "--config", dir / "typo.yaml"});
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("typo.yaml:9:") != std::string::npos);
  CHECK(r.output.find("'valid/los' is never logged") != std::string::npos);
  CHECK(r.output.find("valid/loss") != std::string::npos);
}

TEST_CASE("data.limit_train|limit_valid|limit_test cut every kind of data set: a count or a fraction; bad values name the key") {
  test::TempDir dir("limits");
  // A tensors file of 120 examples (10% valid) and the synthetic set: neither knew these keys before.
  const at::Tensor x = torch::randn({120, 4});
  const at::Tensor y = torch::randint(0, 3, {120}, torch::kLong);
  cairn::Value file = cairn::Value::dict();
  file.set("train_x", x);
  file.set("train_y", y);
  cairn::write_checkpoint(dir / "data.pt", file);
  auto sizes = [&](const std::string& data) {
    test::write_file(dir / "l.yaml", "name: l\nseed: 1\nrun: {dir: " + (dir / "run") + "}\ndata: " + data +
                                         "\nmodel: {name: mlp, hidden: [8]}\ntrainer: {max_epochs: 1}\n");
    auto spec = cairn::parse_experiment(dir / "l.yaml");
    auto t = cairn::build_trainer(spec);
    return std::vector<int64_t>{t->data().train.size(), t->data().valid.size(), t->data().test.size()};
  };
  CHECK(sizes("{name: tensors, path: " + (dir / "data.pt") + ", valid_fraction: 0.25}") == std::vector<int64_t>{90, 30, 0});
  CHECK(sizes("{name: tensors, path: " + (dir / "data.pt") + ", valid_fraction: 0.25, limit_train: 40, limit_valid: 0.5}") ==
        std::vector<int64_t>{40, 15, 0});
  CHECK(sizes("{name: synthetic, train_size: 200, valid_size: 64, test_size: 50, limit_train: 0.1, limit_valid: 16, "
              "limit_test: 500}") == std::vector<int64_t>{20, 16, 50});
  // Fashion-MNIST keeps its own limit_train/limit_test (counts; its validation set shrinks with limit_train:
  // 30 here) and takes limit_valid.
  CHECK(sizes("{name: fashion_mnist, limit_train: 300, limit_test: 40}") == std::vector<int64_t>{300, 30, 40});
  CHECK(sizes("{name: fashion_mnist, limit_train: 300, limit_test: 40, limit_valid: 10}") == std::vector<int64_t>{300, 10, 40});
  for (const auto& [bad, says] : std::vector<std::pair<std::string, std::string>>{
           {"limit_train: 0", "data.limit_train"}, {"limit_valid: 1.5", "data.limit_valid"}, {"limit_test: -3", "data.limit_test"}}) {
    test::write_file(dir / "bad.yaml", "name: l\nrun: {dir: " + (dir / "run") + "}\ndata: {name: synthetic, " + bad +
                                           "}\nmodel: {name: mlp, hidden: [8]}\n");
    auto r = test::cairn_cli({"fit", "--config", dir / "bad.yaml"});
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(r.output.find(says) != std::string::npos, r.output);
    CHECK(r.output.find("bad.yaml:3:") != std::string::npos);
  }
}
