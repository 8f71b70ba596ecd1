#include "cairn/trainer.h"

#include "cairn/checkpoint_file.h"
#include "cairn/run_checkpoint.h"
#include "cairn/run_dir.h"

#include "cairn/distributed.h"
#include "cairn/optimizers.h"
#include "cairn/schedulers.h"
#include "cairn/signals.h"

#include "graph/graphed_step.h"
#include "prefetch.h"

#include <torch/torch.h>

#include <dlfcn.h>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

namespace cairn {

std::string short_error(const std::string& what) {
  // A TorchScript error carries two tracebacks; the cause is its last line.
  if (what.find("Traceback of TorchScript") != std::string::npos) {
    std::string last;
    std::istringstream lines(what);
    for (std::string line; std::getline(lines, line);) {
      if (line.find_first_not_of(" \t") != std::string::npos) last = line;
    }
    return last;
  }
  const std::string first = what.substr(0, what.find('\n'));
  return first.size() > 400 ? first.substr(0, 400) + "..." : first;
}

torch::Device resolve_device(const std::string& spec) {
  if (spec == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  if (spec == "cpu") return torch::Device(torch::kCPU);
  if (spec.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) {
      throw std::invalid_argument("device '" + spec + "' asked for, but this LibTorch build or machine has no CUDA; use device: auto or cpu");
    }
    return torch::Device(spec);
  }
  throw std::invalid_argument("device must be auto, cpu, cuda or cuda:N, got '" + spec + "'");
}

void set_threads(int64_t threads) {
  if (threads <= 0) return;
  torch::set_num_threads(static_cast<int>(threads));
  // Debian's LibTorch calls BLAS through libblas.so.3; with OpenBLAS behind it,
  // its own pool would oversubscribe the cores unless told the same count.
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    fn(static_cast<int>(threads));
  }
}

std::string format_bytes(int64_t bytes) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024 * 1024) {
    os << b / (1024.0 * 1024 * 1024) << " GB";
  } else if (b >= 1024.0 * 1024) {
    os << b / (1024.0 * 1024) << " MB";
  } else if (b >= 1024.0) {
    os << b / 1024.0 << " KB";
  } else {
    os << bytes << " bytes";
  }
  return os.str();
}

std::optional<std::pair<int64_t, int64_t>> cuda_memory(const torch::Device& device) {
  if (!device.is_cuda() || !torch::cuda::is_available()) return std::nullopt;
  // The CUDA runtime that LibTorch's CUDA library loaded, asked directly: the
  // core library is built without CUDA headers (one build serves both).
  using GetInfo = int (*)(size_t*, size_t*);
  using GetDevice = int (*)(int*);
  using SetDevice = int (*)(int);
  auto info = reinterpret_cast<GetInfo>(::dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
  auto get = reinterpret_cast<GetDevice>(::dlsym(RTLD_DEFAULT, "cudaGetDevice"));
  auto set = reinterpret_cast<SetDevice>(::dlsym(RTLD_DEFAULT, "cudaSetDevice"));
  if (!info || !get || !set) return std::nullopt;
  int previous = 0;
  if (get(&previous) != 0) return std::nullopt;
  const int want = device.has_index() ? device.index() : 0;
  if (want != previous && set(want) != 0) return std::nullopt;
  size_t free = 0, total = 0;
  const int rc = info(&free, &total);
  if (want != previous) set(previous);
  if (rc != 0) return std::nullopt;
  return std::make_pair(static_cast<int64_t>(free), static_cast<int64_t>(total));
}

Trainer::Trainer(TrainerOptions options) : options_(std::move(options)) {
  loop_.set_log_every_n_steps(options_.log_every_n_steps());
}
Trainer::~Trainer() = default;

Trainer& Trainer::add_callback(std::shared_ptr<Callback> cb) {
  loop_.add(std::move(cb));
  return *this;
}
Trainer& Trainer::set_model(Model model) {
  model_ = std::move(model);
  return *this;
}
Trainer& Trainer::set_data(std::shared_ptr<DataModule> data) {
  data_ = std::move(data);
  return *this;
}
Trainer& Trainer::set_optimizer(std::shared_ptr<torch::optim::Optimizer> optimizer) {
  optimizer_ = std::move(optimizer);
  return *this;
}
Trainer& Trainer::set_scheduler(std::shared_ptr<Scheduler> scheduler) {
  scheduler_ = std::move(scheduler);
  return *this;
}
Trainer& Trainer::set_loss(std::shared_ptr<Loss> loss) {
  loss_ = std::move(loss);
  return *this;
}
Trainer& Trainer::add_metric(std::shared_ptr<Metric> metric) {
  if (!metric) throw std::invalid_argument("add_metric: null metric");
  metrics_.push_back(std::move(metric));
  metrics_set_ = true;
  return *this;
}
Trainer& Trainer::set_metrics(std::vector<std::shared_ptr<Metric>> metrics) {
  metrics_ = std::move(metrics);
  metrics_set_ = true;
  return *this;
}
Trainer& Trainer::resume_from(std::string path) {
  resume_path_ = std::move(path);
  return *this;
}
Trainer& Trainer::set_process_group(std::shared_ptr<ProcessGroup> group) {
  group_ = std::move(group);
  return *this;
}

std::pair<int64_t, int64_t> Trainer::shard(int64_t n) const {
  const int64_t w = loop_.world_size(), r = loop_.rank();
  return {n * r / w, n * (r + 1) / w};
}

DataModule& Trainer::data() {
  if (!data_) throw std::logic_error("Trainer has no data: call set_data() first");
  return *data_;
}

torch::optim::Optimizer& Trainer::optimizer() {
  if (!optimizer_) throw std::logic_error("Trainer has no optimizer yet (configure_optimizers() runs in fit())");
  return *optimizer_;
}

at::Tensor Trainer::forward(const at::Tensor& x) { return model_.forward(x); }

Batch Trainer::to_device(const Batch& b) {
  if (device_.is_cpu()) return b;
  // From pinned memory the copy does not wait for the device (from pageable
  // memory it would: a host sync per batch).
  auto move = [&](const at::Tensor& t) {
    if (!t.defined() || t.device() == device_) return t;
    if (pin_batches_ && t.is_cpu() && !t.is_pinned()) return t.pin_memory().to(device_, /*non_blocking=*/true);
    return t.to(device_, /*non_blocking=*/true);
  };
  return Batch{move(b.x), move(b.y)};
}

Batch Trainer::training_batch(const at::Tensor& indices) {
  if (train_maker_) {
    // Example by example (read, decode, transform), on whichever thread.
    Batch b = train_maker_->make(indices);
    if (pin_batches_) {
      if (b.x.defined() && b.x.is_cpu()) b.x = b.x.pin_memory();
      if (b.y.defined() && b.y.is_cpu()) b.y = b.y.pin_memory();
    }
    return b;
  }
  const TensorDataset& train = data().train;
  if (!pin_batches_) return train.gather(indices);
  // Gathered straight into pinned host memory (no second host copy).
  auto gather = [&](const at::Tensor& src) {
    if (!src.defined() || !src.is_cpu()) return src.defined() ? src.index_select(0, indices.to(src.device())) : src;
    std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
    shape[0] = indices.size(0);
    at::Tensor out = at::empty(shape, src.options().pinned_memory(true));
    at::index_select_out(out, src, 0, indices);
    return out;
  };
  return Batch{gather(train.x), gather(train.y)};
}

at::Tensor Trainer::device_order(EpochSampler& sampler, int64_t epoch) {
  if (device_order_epoch_ != epoch || !device_order_.defined()) {
    const std::vector<int64_t>& order = sampler.order(epoch);
    // One blocking copy per epoch; the steps slice it on the device.
    device_order_ = torch::from_blob(const_cast<int64_t*>(order.data()), {static_cast<int64_t>(order.size())}, torch::kLong)
                        .to(device_);
    device_order_epoch_ = epoch;
  }
  return device_order_;
}

namespace {
int64_t bytes_of(const TensorDataset& t) {
  return (t.x.defined() ? static_cast<int64_t>(t.x.nbytes()) : 0) + (t.y.defined() ? static_cast<int64_t>(t.y.nbytes()) : 0);
}
int64_t bytes_of(const DataModule& d) { return bytes_of(d.train) + bytes_of(d.valid) + bytes_of(d.test); }
std::string sizes_of(const DataModule& d) {
  return format_bytes(bytes_of(d)) + " (train " + format_bytes(bytes_of(d.train)) + ", valid " + format_bytes(bytes_of(d.valid)) +
         ", test " + format_bytes(bytes_of(d.test)) + ")";
}
}  // namespace

std::string data_device_problem(const DataModule& d, const torch::Device& model_device, const std::string& want) {
  if (want != "auto" && want != "cpu" && want != "cuda") return "expected auto, cpu or cuda, got '" + want + "'";
  if (want != "cuda") return "";
  if (!model_device.is_cuda()) {
    return "cuda asked for, but " +
           (torch::cuda::is_available() ? "the model is on " + model_device.str() + " (trainer.device)"
                                        : std::string("this LibTorch build or machine has no CUDA")) +
           "; the data sets are " + sizes_of(d) + "; use data.device: auto or cpu";
  }
  const auto mem = cuda_memory(model_device);
  if (mem && bytes_of(d) > mem->first) {
    return "cuda: the data sets, " + sizes_of(d) + ", do not fit in the " + format_bytes(mem->first) + " free on " +
           model_device.str() + " (of " + format_bytes(mem->second) +
           "); use data.device: auto, which keeps them on the CPU and prefetches batches from pinned memory";
  }
  return "";
}

void Trainer::place_data(bool training) {
  DataModule& d = data();
  const std::string& want = options_.data_device();
  const std::string& pf = options_.prefetch();
  if (pf != "auto" && pf != "true" && pf != "false") {
    throw std::invalid_argument("data.prefetch must be auto, true or false, got '" + pf + "'");
  }
  if (const std::string problem = data_device_problem(d, device_, want); !problem.empty()) {
    throw std::invalid_argument("data.device: " + problem);
  }
  const int64_t bytes = bytes_of(d);
  const std::string sizes = sizes_of(d);
  const bool rank_zero = !group_ || group_->rank() == 0;
  bool move = want == "cuda";
  // Evaluating or predicting reads a split once: auto does not move the data sets for that.
  if (want == "auto" && device_.is_cuda() && training) {
    const auto mem = cuda_memory(device_);
    move = mem && bytes <= mem->first / 2;
    if (rank_zero) {
      if (move) {
        std::cout << "cairn: data on " << device_ << ": " << sizes << " of " << format_bytes(mem->first)
                  << " free (data.device: auto)\n";
      } else {
        std::cout << "cairn: data kept on the CPU ("
                  << (mem ? sizes + " is more than half of the " + format_bytes(mem->first) + " free on " + device_.str()
                          : "the free memory of " + device_.str() + " is unknown")
                  << "); batches are copied from pinned memory, the next one prefetched (data.device: auto)\n";
      }
    }
  }
  if (move) {
    try {
      // Splits whose batches are gathered rows; one read example by example
      // (a transform: its generators are CPU ones) stays on the host.
      for (const char* name : {"train", "valid", "test"}) {
        if (!d.gathered(name)) continue;
        TensorDataset* t = std::string(name) == "train" ? &d.train : std::string(name) == "valid" ? &d.valid : &d.test;
        if (t->x.defined()) t->x = t->x.to(device_);
        if (t->y.defined()) t->y = t->y.to(device_);
      }
    } catch (const c10::Error& e) {
      // Where the free memory could not be asked beforehand.
      if (std::string(e.what()).find("out of memory") == std::string::npos) throw;
      throw std::invalid_argument("data.device: " + want + ": the data sets, " + sizes + ", do not fit on " +
                                  device_.str() + " (out of memory); use data.device: cpu");
    }
  }
  data_on_device_ = device_.is_cuda() && d.gathered("train") && d.train.x.defined() && d.train.x.device() == device_;
  pin_batches_ = device_.is_cuda() && !data_on_device_;
  // auto: wherever a batch is gathered on the host (a device-resident data
  // set is gathered by one kernel, nothing to overlap).
  prefetch_ = pf == "true" || (pf == "auto" && !data_on_device_);
  if (options_.workers() < 0) throw std::invalid_argument("data.workers must be >= 0, got " + std::to_string(options_.workers()));
  if (options_.workers() > 0) {
    if (pf == "false") {
      throw std::invalid_argument("data.workers: " + std::to_string(options_.workers()) +
                                  " prepares batches ahead, but data.prefetch is false: leave data.prefetch out (or auto), "
                                  "or set data.workers: 0");
    }
    prefetch_ = true;
  }
  device_order_ = at::Tensor();
  device_order_epoch_ = -1;
}

at::Tensor Trainer::measure(const std::string& split, const at::Tensor& output, const Batch& batch, bool per_step) {
  if (!loss_) throw std::logic_error("Trainer::measure before setup(): no loss yet");
  if (!shapes_checked_) {
    loss_->check(output, batch.y);
    for (const auto& m : metrics_) m->check(output, batch.y);
    shapes_checked_ = true;
  }
  auto loss = (*loss_)(output, batch.y);
  const double n = static_cast<double>(batch.size());
  // Kept on the device: read at log_every_n_steps points and when the split ends.
  if (per_step) {
    loop_.log_step_tensor(split + "/loss", loss.detach(), n);
  } else {
    loop_.metrics().accumulate_tensor(split + "/loss", loss.detach(), n);
  }
  const at::Tensor out = output.detach();
  for (const auto& m : metrics_) loop_.update_metric(split + "/" + m->name(), out, batch.y);
  return loss;
}

at::Tensor Trainer::training_step(const Batch& batch) { return measure("train", forward(batch.x), batch, true); }

void Trainer::validation_step(const Batch& batch) { measure("valid", forward(batch.x), batch, false); }

void Trainer::test_step(const Batch& batch) { measure("test", forward(batch.x), batch, false); }

void Trainer::configure_optimizers() {
  if (!optimizer_) {
    optimizer_ = std::make_shared<cairn::Adam>(model_.module->parameters(), torch::optim::AdamOptions(1e-3));
  }
}

void Trainer::setup(bool training) {
  if (!model_) throw std::logic_error("Trainer has no model: call set_model() first");
  set_threads(options_.threads());
  const DistEnv env = DistEnv::from_environment();
  // In a job, LOCAL_RANK picks this process's GPU (see device_for_rank).
  device_ = device_for_rank(resolve_device(options_.device()), env);
  // "cuda" without an index is device 0 (CUDA_VISIBLE_DEVICES' first): with
  // the index, tensors' devices compare equal to it.
  if (device_.is_cuda() && !device_.has_index()) device_ = torch::Device(torch::kCUDA, 0);
  if (!group_ && env.distributed()) {
    group_ = ProcessGroup::join(env, std::chrono::milliseconds(static_cast<int64_t>(options_.dist_timeout() * 1000)),
                                options_.dist_backend(), device_);
  }
  precision_ = parse_precision(options_.precision());
  check_precision(precision_, device_.type());
  if (precision_ == Precision::fp16_mixed && !scaler_) scaler_ = std::make_unique<GradScaler>();
  data().setup();
  model_.module->to(device_);
  if (group_) {
    loop_.set_process_group(group_);
    // Rank 0's weights and buffers everywhere; then each rank its own random stream.
    group_->broadcast_module(*model_.module);
    if (group_->rank() > 0) torch::manual_seed(data().seed * 1000003ULL + static_cast<uint64_t>(group_->rank()));
  }
  place_data(training);
  configure_optimizers();
  // A fused step this LibTorch cannot run on this device: said now, not at the first step.
  if (auto* m = dynamic_cast<MultiTensorOptimizer*>(optimizer_.get())) m->check_device(device_);
  if (group_ && !sync_) {
    sync_ = std::make_unique<GradientSync>(group_, model_.module->parameters(),
                                           static_cast<int64_t>(options_.bucket_cap_mb() * (1 << 20)));
  }
  if (!loss_) loss_ = std::make_shared<CrossEntropyLoss>();
  if (!metrics_set_ && metrics_.empty() && loss_->class_targets()) metrics_.push_back(std::make_shared<Accuracy>());
  for (size_t i = 0; i < metrics_.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (metrics_[i]->name() == metrics_[j]->name()) {
        throw std::invalid_argument("two metrics are named '" + metrics_[i]->name() + "' (metrics " + std::to_string(j) +
                                    " and " + std::to_string(i) + "): each is measured once");
      }
    }
  }
  // Declared before a resume, so the checkpoint's running statistics find
  // them, and alike on every rank, which reduce them in the same order.
  for (const char* split : {"train", "valid", "test"}) {
    loop_.declare_mean(std::string(split) + "/loss");
    for (const auto& m : metrics_) loop_.declare_metric(std::string(split) + "/" + m->name(), m);
  }
  set_up_ = true;
  loop_.track(*model_.module);
  loop_.track(*optimizer_);
  if (scheduler_) loop_.track(*scheduler_);
  if (scaler_) loop_.track_section("grad_scaler", *scaler_);
  // SWA's BatchNorm update: every training example once, in order, without gradients.
  loop_.set_train_pass([this] {
    const DataModule& d = data();
    const int64_t n = d.split("train").size();
    // The training examples as an epoch's batches would hold them (with its
    // augmentation, from the epoch's seeds), in order.
    const BatchMaker maker(d, "train", loop_.state().epoch);
    for (int64_t b = 0; b < n; b += d.batch_size) {
      AutocastGuard autocast(precision_, device_.type());
      const int64_t e = std::min(b + d.batch_size, n);
      Batch batch;
      if (d.gathered("train")) {
        batch = d.train.slice(b, e);
      } else {
        std::vector<int64_t> idx(static_cast<size_t>(e - b));
        for (int64_t i = b; i < e; ++i) idx[static_cast<size_t>(i - b)] = i;
        batch = maker.make(idx);
        if (batch.size() == 0) continue;
      }
      forward(to_device(batch).x);
    }
  });
  auto& st = loop_.state();
  st.max_epochs = options_.max_epochs();
  const int64_t global = data().batch_size * loop_.world_size();
  st.global_batch_size = global;
  st.train_samples = data().split("train").size();
  st.batches_per_epoch = (st.train_samples + global - 1) / global;
  if (training) {
    setup_cuda_graphs();
  } else {
    graphed_.reset();
  }
}

void Trainer::clip_gradients() {
  const double v = options_.gradient_clip_val();
  if (v <= 0) return;
  if (options_.gradient_clip_algorithm() == "value") {
    torch::nn::utils::clip_grad_value_(model_.module->parameters(), v);
    return;
  }
  // By the total 2-norm, as PyTorch's Python clip_grad_norm_: the factor
  // min(1, max_norm / (norm + 1e-6)) stays a device tensor (LibTorch's C++
  // version returns the norm as a double: a host read every step).
  std::vector<at::Tensor> grads;
  for (const auto& p : model_.module->parameters()) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return;
  std::vector<at::Tensor> norms;
  for (const auto& g : grads) norms.push_back(g.detach().norm(2));
  const at::Tensor total = torch::stack(norms).norm(2);
  const at::Tensor factor = (v / (total + 1e-6)).clamp_max(1.0);
  torch::NoGradGuard no_grad;
  for (auto& g : grads) g.mul_(factor.to(g.scalar_type()));
}

int64_t Trainer::val_check_batches(int64_t n) {
  const double v = options_.val_check_interval();
  if (v <= 0 || data().split("valid").empty()) return 0;
  const int64_t every = options_.val_check_fraction() ? std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(n) * v))
                                                      : static_cast<int64_t>(v);
  if (every > n) {
    throw std::invalid_argument("trainer.val_check_interval is " + std::to_string(every) + " batches, but an epoch has " +
                                std::to_string(n) + ": use at most " + std::to_string(n) + " (or a fraction of the epoch)");
  }
  return every;
}

void Trainer::train_epoch(EpochSampler& sampler) {
  auto& st = loop_.state();
  const int64_t n = sampler.batches_per_epoch();
  // Validation inside the epoch (trainer.val_check_interval), after batch
  // `done` of it; the epoch's end validates as always.
  const int64_t val_every = val_check_batches(n);
  auto validates_after = [&](int64_t done) { return val_every > 0 && done > 0 && done < n && done % val_every == 0; };
  if (validates_after(st.batch_in_epoch)) {
    // Resumed at a validation point: the validation runs unless it already ran
    // (a checkpoint saved at its end).
    bool ran = false;
    for (const auto& name : loop_.metrics().names()) {
      if (ran || name.rfind("valid/", 0) != 0) continue;
      const auto points = loop_.metrics().series(name);
      ran = !points.empty() && points.back().step == st.global_step && points.back().epoch == st.epoch;
    }
    if (!ran) {
      run_validation();
      if (loop_.should_stop()) return;
    }
  }
  const int64_t accumulate = std::max<int64_t>(1, options_.accumulate_grad_batches());
  model_.module->train();
  const int64_t world = loop_.world_size(), rank = loop_.rank();
  // This rank's rows of batch k (on the device when the data is there) and its loss weight.
  auto rows = [&](int64_t k, double& weight) {
    at::Tensor indices;
    if (data_on_device_) {
      const at::Tensor order = device_order(sampler, st.epoch);
      const int64_t begin = k * sampler.batch_size();
      indices = order.slice(0, begin, std::min<int64_t>(order.size(0), begin + sampler.batch_size()));
    } else {
      indices = sampler.batch_indices(st.epoch, k);
    }
    // Distributed: the global batch split into near-equal contiguous slices;
    // each rank's loss is weighted so the averaged gradient is the global batch's mean.
    weight = 1.0;
    if (world > 1) {
      const int64_t m = indices.size(0), base = m / world, extra = m % world;
      const int64_t begin = rank * base + std::min(rank, extra), len = base + (rank < extra ? 1 : 0);
      indices = indices.slice(0, begin, begin + len);
      weight = static_cast<double>(len * world) / static_cast<double>(m);
    }
    return indices;
  };
  // Batches made example by example (a Dataset of one's own, transforms,
  // skip_bad) draw from the epoch's per-example seeds.
  train_maker_.reset();
  if (!data().gathered("train")) train_maker_.emplace(data(), "train", st.epoch);
  struct ForgetMaker {
    Trainer* t;
    ~ForgetMaker() {
      if (t->train_maker_) t->skipped_ += t->train_maker_->skipped();
      t->train_maker_.reset();
    }
  };
  // The next batches are made on helper threads while this one's step runs
  // (data.workers of them, one batch ahead each; else one helper, one ahead).
  // One each, not PyTorch's two: on the 2-core machine bench_data measures,
  // a second batch in flight per worker made glibc map and unmap the batches'
  // memory at every step and cost up to 40% of the throughput.
  // Declared after the maker's guard: the workers stop before it is reset.
  const int64_t workers = options_.workers();
  const int64_t ahead = workers > 0 ? workers : 1;
  ForgetMaker forget_maker{this};
  std::unique_ptr<detail::Prefetcher> prefetcher;
  if (prefetch_) {
    prefetcher = std::make_unique<detail::Prefetcher>([this](const at::Tensor& i) { return training_batch(i); },
                                                      std::max<int64_t>(1, workers));
  }
  // Started batches' rows and weights, computed when their prefetch started: used again at their step.
  std::map<int64_t, std::pair<at::Tensor, double>> planned;
  for (int64_t k = st.batch_in_epoch; k < n; ++k) {
    double weight = 1.0;
    at::Tensor indices;
    if (auto it = planned.find(k); it != planned.end()) {
      indices = std::move(it->second.first);
      weight = it->second.second;
      planned.erase(planned.begin(), std::next(it));
    } else {
      planned.clear();
      indices = rows(k, weight);
    }
    const bool cycle_end = (k + 1) % accumulate == 0 || k + 1 == n;
    if (indices.size(0) == 0) {
      // The epoch's last global batch has fewer examples than ranks: this one
      // has none, but still takes part in the gradient average (with zeros).
      st.batch_size = 0;
      loop_.batch_begin();
      if (k % accumulate == 0) optimizer_->zero_grad();
      if (sync_ && cycle_end) sync_->prepare_for_backward();
      at::Tensor zero = torch::zeros({}, torch::TensorOptions().device(device_));
      for (const auto& p : model_.module->parameters()) {
        if (p.requires_grad()) zero = zero + p.sum() * 0.0;
      }
      zero.backward();
    } else {
    // Gathered on the helper thread; moved to the device here (to_device may
    // be a user's override: it runs on this thread, in step order).
    if (prefetcher) {
      // Keep `ahead` batches in flight before waiting for this one.
      for (int64_t j = k + 1; j < std::min(n, k + 1 + ahead); ++j) {
        if (planned.count(j)) continue;
        double w = 1.0;
        at::Tensor rows_j = rows(j, w);
        if (rows_j.size(0) > 0) prefetcher->start(j, rows_j);
        planned.emplace(j, std::make_pair(std::move(rows_j), w));
      }
    }
    Batch batch = to_device(prefetcher ? prefetcher->take(k, indices) : training_batch(indices));
    if (batch.size() == 0) {
      throw DataError("every example of training batch " + std::to_string(k) + " of epoch " + std::to_string(st.epoch) +
                      " was bad and skipped (data.skip_bad): there is nothing to train on");
    }
    st.batch_size = batch.size();
    loop_.batch_begin();
    // trainer.cuda_graphs: forward, loss and backward as one replay.
    if (!graphed_step(batch)) {
      if (k % accumulate == 0) optimizer_->zero_grad();
      at::Tensor loss;
      std::optional<AutocastGuard> autocast;  // the forward pass and the loss; backward runs outside
      autocast.emplace(precision_, device_.type());
      if (first_step_done_) {
        loss = training_step(batch);
      } else {
        // The run's first step: a model that cannot take the data fails here.
        // Say so in one line with the shapes, not with a raw TorchScript trace.
        try {
          loss = training_step(batch);
        } catch (const std::exception& e) {
          std::ostringstream os;
          os << "the first training step failed on a batch of inputs shaped " << batch.x.sizes();
          if (batch.y.defined()) os << " (targets " << batch.y.sizes() << ")";
          os << ": " << short_error(e.what()) << "; does the model take this data?";
          throw std::runtime_error(os.str());
        }
        first_step_done_ = true;
      }
      // The batch loss that TerminateOnNaN and the progress bar read, at log points.
      loop_.note_step_loss(loss);
      if (accumulate > 1) loss = loss / static_cast<double>(accumulate);
      if (weight != 1.0) loss = loss * weight;
      if (scaler_) loss = scaler_->scale(loss);
      // Only the cycle's last backward communicates (as DDP's no_sync).
      if (sync_ && cycle_end) sync_->prepare_for_backward();
      autocast.reset();
      loss.backward();
    }
    }
    st.accumulating = !cycle_end;
    loop_.after_backward();
    if (cycle_end) {
      // 16-mixed: gradients unscaled before clipping and before callbacks see
      // them (as Lightning); a step with inf/NaN gradients is skipped, and
      // then the schedule does not advance either.
      if (scaler_) scaler_->unscale_(*optimizer_);
      clip_gradients();
      loop_.before_optimizer_step();
      bool stepped = true;
      if (scaler_) {
        stepped = scaler_->step(*optimizer_);
        scaler_->update();
      } else {
        optimizer_->step();
      }
      if (stepped && scheduler_ && scheduler_->interval() == Interval::step) scheduler_->step();
    }
    loop_.batch_end();
    if (loop_.should_stop() && !st.accumulating) return;
    if (!st.accumulating && validates_after(k + 1)) {
      run_validation();  // leaves the model in training mode
      if (loop_.should_stop()) return;
    }
  }
}

namespace {
//! The contiguous batches [begin, end) of an evaluation pass, in order: the
//! in-memory rows sliced, or made example by example (with the split's
//! transform), on data.workers helper threads ahead of the step when asked.
class EvalBatches {
 public:
  EvalBatches(const DataModule& d, const std::string& split, int64_t pass, int64_t begin, int64_t end, int64_t bs,
              int64_t workers, bool pin)
      : EvalBatches(d.split(split), d.transform_of(split), d.seed, pass, begin, end, bs, workers, pin, d.skip_bad,
                    split == "valid" ? "validation" : split) {
    if (d.gathered(split)) tensors_ = &(split == "valid" ? d.valid : d.test);
  }
  EvalBatches(const Dataset& ds, const Transform* t, uint64_t seed, int64_t pass, int64_t begin, int64_t end, int64_t bs,
              int64_t workers, bool pin, bool skip_bad = false, const std::string& what = "prediction")
      : maker_(ds, t, seed, pass, skip_bad, what), end_(end), bs_(bs), workers_(workers), pin_(pin) {
    if (!t) tensors_ = dynamic_cast<const TensorDataset*>(&ds);
    if (workers_ > 0) {
      prefetcher_ = std::make_unique<detail::Prefetcher>([this](const at::Tensor& i) { return make(i); }, workers_);
    }
    next_ = begin;
  }
  Batch take(int64_t b) {
    const int64_t e = std::min(end_, b + bs_);
    if (tensors_) return tensors_->slice(b, e);
    if (!prefetcher_) return make(range(b, e));
    // One batch per worker ahead (as training).
    next_ = std::max(next_, b + bs_);
    while (next_ < end_ && next_ < b + bs_ * (1 + workers_)) {
      prefetcher_->start(next_ / bs_, range(next_, std::min(end_, next_ + bs_)));
      next_ += bs_;
    }
    return prefetcher_->take(b / bs_, range(b, e));
  }
  int64_t skipped() const { return maker_.skipped(); }

 private:
  static at::Tensor range(int64_t b, int64_t e) { return torch::arange(b, e, torch::kLong); }
  Batch make(const at::Tensor& idx) {
    Batch out = maker_.make(idx);
    if (pin_) {
      if (out.x.defined() && out.x.is_cpu()) out.x = out.x.pin_memory();
      if (out.y.defined() && out.y.is_cpu()) out.y = out.y.pin_memory();
    }
    return out;
  }
  BatchMaker maker_;
  const TensorDataset* tensors_ = nullptr;
  int64_t end_, bs_, workers_;
  bool pin_;
  int64_t next_ = 0;
  std::unique_ptr<detail::Prefetcher> prefetcher_;  // last: its workers stop before the rest goes
};
}  // namespace

std::vector<std::string> Trainer::run_eval(const std::string& split) {
  const bool valid = split == "valid";
  const DataModule& d = data();
  const Dataset& ds = d.split(split);
  if (ds.empty()) return {};
  torch::NoGradGuard no_grad;
  model_.module->eval();
  valid ? loop_.validation_begin() : loop_.test_begin();
  const int64_t bs = d.batch_size;
  const auto part = shard(ds.size());  // each rank its share; metrics are summed at the stage's end
  EvalBatches batches(d, split, valid ? kValidPass : kTestPass, part.first, part.second, bs, options_.workers(), pin_batches_);
  for (int64_t b = part.first; b < part.second; b += bs) {
    Batch batch = to_device(batches.take(b));
    if (batch.size() == 0) continue;  // every example of it was bad (data.skip_bad)
    loop_.state().batch_size = batch.size();
    AutocastGuard autocast(precision_, device_.type());
    if (valid) {
      validation_step(batch);
      loop_.validation_batch_end();
    } else {
      test_step(batch);
      loop_.test_batch_end();
    }
  }
  std::vector<std::string> names;
  for (const auto& a : loop_.metrics().accumulators(split)) names.push_back(a.first);
  for (const auto& m : loop_.metrics().declared_names(split)) names.push_back(m);
  skipped_ += batches.skipped();
  valid ? loop_.validation_end() : loop_.test_end();
  model_.module->train();
  return names;
}

void Trainer::run_validation() { run_eval("valid"); }
void Trainer::run_test() { run_eval("test"); }

double Trainer::test() {
  if (!set_up_) setup(/*training=*/false);
  if (data().split("test").empty()) throw std::logic_error("the data has no test split");
  run_test();
  return loop_.metrics().last("test/acc").value_or(0.0);
}

void Trainer::load_model_weights(const std::string& path) {
  const Value c = read_checkpoint(path);
  // A checkpoint whose metrics were measured with other weights (an EMA's)
  // says so: the view lays those over the model's own.
  const run_checkpoint::View view(c, path);
  const Value weights = view.evaluated_weights();
  loaded_weights_ = view.describe_evaluated();
  try {
    load_model_state(*model_.module, weights, /*strict=*/true);
  } catch (const CheckpointMismatch& e) {
    throw CheckpointMismatch(path + ": " + e.what());
  }
}

std::map<std::string, double> Trainer::evaluate(const std::string& split, const std::string& ckpt) {
  if (split != "valid" && split != "test") throw std::invalid_argument("evaluate: split must be valid or test, got '" + split + "'");
  if (!set_up_) setup(/*training=*/false);
  if (data().split(split).empty()) {
    throw std::invalid_argument("the data has no " + split + " split");
  }
  if (!ckpt.empty()) load_model_weights(ckpt);
  loop_.set_evaluating_loaded_weights(!ckpt.empty());
  std::map<std::string, double> out;
  const auto names = run_eval(split);
  loop_.set_evaluating_loaded_weights(false);
  for (const auto& name : names) {
    if (auto v = loop_.metrics().last(name)) out[name] = *v;
  }
  return out;
}

at::Tensor Trainer::predict(const Dataset& ds, const std::string& ckpt) {
  if (!set_up_) setup(/*training=*/false);
  if (!ckpt.empty()) load_model_weights(ckpt);
  torch::NoGradGuard no_grad;
  model_.module->eval();
  std::vector<at::Tensor> parts;
  const int64_t bs = data().batch_size;
  // Every example is predicted: a bad one is an error here, whatever skip_bad says.
  EvalBatches batches(ds, data().eval_transform.get(), data().seed, kPredictPass, 0, ds.size(), bs, options_.workers(),
                      pin_batches_);
  for (int64_t b = 0; b < ds.size(); b += bs) {
    Batch batch;
    batch.x = batches.take(b).x;
    AutocastGuard autocast(precision_, device_.type());
    parts.push_back(forward(to_device(batch).x).detach().to(torch::kCPU).to(torch::kFloat32));
  }
  model_.module->train();
  if (parts.empty()) return at::Tensor();
  return torch::cat(parts, 0);
}

void Trainer::check_monitors(bool after_validation) {
  std::vector<std::pair<std::string, std::string>> watched;  // who, metric
  for (const auto& cb : loop_.callbacks()) {
    for (const auto& m : cb->monitors()) watched.emplace_back("callback " + cb->key(), m);
  }
  if (scheduler_ && !scheduler_->monitor().empty()) watched.emplace_back("the scheduler", scheduler_->monitor());
  if (watched.empty()) return;
  const bool validates = !data().split("valid").empty();
  auto logged = [&] {
    std::string out;
    for (const auto& name : loop_.metrics().names()) {
      if (name.rfind("test/", 0) == 0) continue;
      out += (out.empty() ? "" : ", ") + name;
    }
    if (out.empty()) {
      for (const char* split : {"train", "valid"}) {
        if (std::string(split) == "valid" && !validates) continue;
        out += (out.empty() ? "" : ", ") + std::string(split) + "/loss";
        for (const auto& m : metrics_) out += ", " + std::string(split) + "/" + m->name();
      }
    }
    return out;
  };
  for (const auto& [who, metric] : watched) {
    if (!after_validation && metric.rfind("valid/", 0) == 0 && !validates) {
      throw std::invalid_argument(who + " monitors '" + metric +
                                  "', which this run never logs: it has no validation data (data.valid_fraction "
                                  "0 or an empty valid split); it logs " + logged());
    }
    if (after_validation && !loop_.metrics().last(metric)) {
      throw std::invalid_argument(who + " monitors '" + metric + "', which this run did not log by the end of epoch " +
                                  std::to_string(loop_.state().epoch) + " (it validated); it logs " + logged());
    }
  }
}

void Trainer::final_test() {
  // Saves still in flight land first (a failed one rolls its callback's book
  // back to a file on disk); then the run's files answer, by the one rule
  // `cairn test --ckpt best` uses too.
  // Each callback in turn: its folder's best by choose() (what `cairn test
  // --ckpt best` takes), or what a callback of one's own names.
  std::string best;
  for (const auto& cb : loop_.callbacks()) {
    const std::string own = cb->best_checkpoint(loop_);
    if (options_.test_ckpt() != "best" || !best.empty() || !loop_.is_rank_zero()) continue;
    const std::string dir = cb->checkpoint_dir(loop_);
    if (dir.empty()) {
      best = own;
      continue;
    }
    try {
      const CheckpointChoice c = choose(RunDir(loop_.run_dir(), dir), "best", Purpose::evaluate);
      if (c.found) best = c.path;
    } catch (const std::exception& e) {  // rank 0 still broadcasts below: the others wait there
      std::cerr << "cairn: warning: cannot choose the best checkpoint in " << dir << ": " << e.what() << "\n";
    }
  }
  // Rank 0's choice holds for the job (its writer knows which saves are durable).
  if (loop_.process_group()) best = loop_.process_group()->broadcast_bytes(best, 0);
  std::error_code ec;
  if (best.empty() || !std::filesystem::exists(best, ec)) {
    tested_ = "the final weights";
    if (loop_.is_rank_zero()) {
      std::cout << "cairn: testing the final weights"
                << (options_.test_ckpt() == "best" ? " (no best checkpoint: no monitoring checkpoint callback saved one)"
                                                   : "")
                << "\n";
    }
    run_test();
    return;
  }
  // The best file's weights for the test pass; the run's own state (and so
  // the last.ckpt saved at fit_end) keeps the final weights.
  std::vector<at::Tensor> keep;
  {
    torch::NoGradGuard no_grad;
    for (const auto& t : model_.module->parameters()) keep.push_back(t.detach().clone());
    for (const auto& t : model_.module->buffers()) keep.push_back(t.detach().clone());
  }
  // The final weights come back however the test ends: an exception must not
  // leave the best file's weights to be saved as the run's.
  auto restore = [&] {
    loop_.set_evaluating_loaded_weights(false);
    torch::NoGradGuard no_grad;
    size_t i = 0;
    for (auto& t : model_.module->parameters()) t.copy_(keep[i++]);
    for (auto& t : model_.module->buffers()) t.copy_(keep[i++]);
  };
  try {
    load_model_weights(best);
    tested_ = "the best checkpoint " + best + ": " + loaded_weights_;
    if (loop_.is_rank_zero()) std::cout << "cairn: testing " << tested_ << "\n";
    loop_.set_evaluating_loaded_weights(true);
    run_test();
  } catch (...) {
    restore();
    throw;
  }
  restore();
}

FitResult Trainer::fit() {
  std::optional<signals::Scope> graceful_stop;
  if (options_.handle_signals()) graceful_stop.emplace();
  setup();
  FitResult result;
  auto& st = loop_.state();
  if (!resume_path_.empty()) {
    resume_info_ = resume(loop_, resume_path_);
    // A run that reached its max_epochs continues when asked for more epochs;
    // one that a callback stopped (early stopping) stays finished.
    if (resume_info_.resumed && st.finished && st.stop.reason.empty() && st.epoch < options_.max_epochs()) {
      st.finished = false;
    }
    // One that max_steps ended continues when it may take more steps; one
    // already past a (lowered) max_steps has nothing to do.
    const bool more_steps = options_.max_steps() <= 0 || st.global_step < options_.max_steps();
    if (resume_info_.resumed && !st.finished && !more_steps) {
      st.finished = true;
      st.stop.reason = "max_steps: " + std::to_string(options_.max_steps()) + " optimizer steps done";
    }
    if (resume_info_.resumed && st.finished && st.stop.reason.rfind("max_steps", 0) == 0 && more_steps &&
        st.epoch < options_.max_epochs()) {
      st.finished = false;
      st.stop.reason.clear();
    }
    if (resume_info_.resumed && st.finished) {
      loop_.release_held();  // no fit_end comes: the folder is free again
      result.already_finished = true;
      result.stop_reason = st.stop.reason;
      result.epochs_completed = st.epoch;
      result.global_step = st.global_step;
      return result;
    }
  }
  // The epoch's order and its cut into global batches depend only on the seed
  // and the global batch, not on how many processes share each batch.
  EpochSampler sampler(data().split("train").size(), st.global_batch_size, data().seed, /*shuffle=*/true);
  loop_.declare_optimizer_hook();  // train_epoch calls before_optimizer_step() before each step
  check_monitors(/*after_validation=*/false);
  (void)val_check_batches(EpochSampler(data().split("train").size(), st.global_batch_size, data().seed, true).batches_per_epoch());
  // max_steps: a stop request at the step that reaches it (as a callback's,
  // so every rank agrees on it at that batch_end).
  ScopedConnection step_limit;
  if (options_.max_steps() > 0) {
    const int64_t limit = options_.max_steps();
    step_limit = loop_.on(Event::batch_end, [limit](Loop& loop) {
      auto& s = loop.state();
      if (s.accumulating || s.global_step < limit || s.stop.requested) return;
      s.stop.requested = true;
      s.stop.reason = "max_steps: " + std::to_string(limit) + " optimizer steps done";
    }, Order::monitor);
  }
  try {
    loop_.fit_begin();
    while (st.epoch < options_.max_epochs() && !loop_.should_stop()) {
      loop_.epoch_begin();
      train_epoch(sampler);
      if (loop_.should_stop() && st.batch_in_epoch < sampler.batches_per_epoch()) break;  // mid-epoch stop
      const int64_t every = std::max<int64_t>(1, options_.check_val_every_n_epoch());
      const bool validating = (st.epoch + 1) % every == 0 || st.epoch + 1 == options_.max_epochs();
      if (validating) run_validation();
      if (scheduler_ && scheduler_->interval() == Interval::epoch) {
        loop_.mark_stepped();  // no roll-back past a stepped schedule
        const std::string m = scheduler_->monitor();
        if (!m.empty()) {
          if (auto v = loop_.metrics().last(m)) scheduler_->step_with_metric(*v);
        } else {
          scheduler_->step();
        }
      }
      loop_.epoch_end();
      if (validating && !data().split("valid").empty() && !monitors_checked_) {
        monitors_checked_ = true;
        check_monitors(/*after_validation=*/true);
      }
    }
    if (!st.stop.interrupt && options_.run_test() && !data().split("test").empty()) final_test();
    loop_.fit_end();
  } catch (...) {
    loop_.exception(std::current_exception());
    throw;
  }
  if (skipped_ > 0) {
    std::cerr << "cairn: data.skip_bad: " << skipped_ << " bad example" << (skipped_ == 1 ? "" : "s")
              << " skipped in this process's batches (each named once above)\n";
  }
  result.interrupted = st.stop.interrupt;
  result.signal = st.stop.signal;
  // The stop signal is consumed: a later fit in this process starts clean (and
  // its first Ctrl-C saves instead of counting as a second one).
  if (result.interrupted) signals::clear();
  result.save_error = st.final_save_error;
  result.stop_reason = st.stop.interrupt ? "" : st.stop.reason;
  result.epochs_completed = st.epoch;
  result.global_step = st.global_step;
  return result;
}

}  // namespace cairn
