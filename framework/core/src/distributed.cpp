#include "cairn/distributed.h"

#include "c10d/group.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/torch.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>
#include <cstring>
#include <unistd.h>

extern char** environ;

namespace cairn {

namespace {

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

int parse_int(const std::map<std::string, std::string>& env, const std::string& key, int min) {
  const std::string& text = env.at(key);
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < min || v > 1 << 20) {
    throw DistributedError("environment variable " + key + "='" + text + "' is not an integer >= " + std::to_string(min));
  }
  return static_cast<int>(v);
}

}  // namespace

DistEnv DistEnv::from(const std::map<std::string, std::string>& env) {
  DistEnv d;
  auto has = [&](const char* k) { return env.count(k) > 0 && !env.at(k).empty(); };
  const char* rank_key = nullptr;
  const char* size_key = nullptr;
  const char* local_key = nullptr;
  if (has("WORLD_SIZE") || has("RANK")) {
    d.source = "torchrun";
    rank_key = "RANK", size_key = "WORLD_SIZE", local_key = "LOCAL_RANK";
  } else if (has("SLURM_NTASKS") && has("SLURM_PROCID") && (has("MASTER_ADDR") || has("MASTER_PORT"))) {
    // Only a SLURM step that names its rendezvous: a plain `sbatch` script
    // with one task also sets these, and must stay one process.
    d.source = "slurm";
    rank_key = "SLURM_PROCID", size_key = "SLURM_NTASKS", local_key = "SLURM_LOCALID";
  } else {
    return d;
  }
  if (!has(rank_key) || !has(size_key)) {
    throw DistributedError(std::string("the environment sets ") + (has(rank_key) ? rank_key : size_key) + " but not " +
                           (has(rank_key) ? size_key : rank_key) + ": set both (or neither, for one process)");
  }
  d.world_size = parse_int(env, size_key, 1);
  d.rank = parse_int(env, rank_key, 0);
  if (d.rank >= d.world_size) {
    throw DistributedError(std::string(rank_key) + "=" + std::to_string(d.rank) + " is not below " + size_key + "=" +
                           std::to_string(d.world_size));
  }
  d.local_rank = has(local_key) ? parse_int(env, local_key, 0) : d.rank;
  const char* local_size_key = d.source == "slurm" ? "SLURM_NTASKS_PER_NODE" : "LOCAL_WORLD_SIZE";
  // SLURM writes e.g. "2(x3)" for uneven layouts: only a plain count is used.
  if (has(local_size_key) && env.at(local_size_key).find_first_not_of("0123456789") == std::string::npos) {
    d.local_world_size = parse_int(env, local_size_key, 1);
  }
  if (d.world_size > 1) {
    if (!has("MASTER_ADDR") || !has("MASTER_PORT")) {
      throw DistributedError(std::string("a job of ") + std::to_string(d.world_size) + " processes (" + size_key +
                             ") needs MASTER_ADDR and MASTER_PORT: where rank 0 listens");
    }
    d.master_addr = env.at("MASTER_ADDR");
    d.master_port = parse_int(env, "MASTER_PORT", 1);
    if (d.master_port > 65535) throw DistributedError("MASTER_PORT=" + env.at("MASTER_PORT") + " is not a TCP port");
  }
  return d;
}

DistEnv DistEnv::from_environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string kv = *e;
    const auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return from(env);
}

// ---------------------------------------------------------------------------
struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  std::string backend = "gloo";
  DistEnv env;
  std::chrono::milliseconds timeout{0};

  // Runs a collective, turning c10d's errors into DistributedError.
  template <class F>
  void run(const char* what, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      throw DistributedError(std::string(what) + " failed on rank " + std::to_string(env.rank) + " of " +
                             std::to_string(env.world_size) + " (a peer died, or did not answer within " +
                             std::to_string(timeout.count() / 1000.0) + " s): " + first_line(e.what()));
    }
  }
};

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProcessGroup::~ProcessGroup() = default;

std::vector<std::string> available_backends() { return c10d_group::backends(); }

namespace {
std::string join_names(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}
}  // namespace

std::string choose_backend(const std::string& requested, const c10::Device& device, const DistEnv& env) {
  const std::vector<std::string> have = available_backends();
  const bool nccl_here = std::find(have.begin(), have.end(), "nccl") != have.end();
  const int gpus = static_cast<int>(torch::cuda::device_count());
  const int local = std::max(env.local_world_size, env.local_rank + 1);
  if (requested == "gloo") return "gloo";
  // NCCL where it can run: a CUDA model, and a GPU for every local rank
  // (else Gloo, whose ranks may share one).
  if (requested == "auto") return device.is_cuda() && nccl_here && local <= gpus ? "nccl" : "gloo";
  if (requested != "nccl") {
    throw std::invalid_argument("distributed backend must be auto, gloo or nccl, got '" + requested + "'");
  }
  if (!nccl_here) {
    throw std::invalid_argument("distributed backend nccl: this LibTorch build has no NCCL (c10d's ProcessGroupNCCL); "
                                "the backends this build has: " + join_names(have) +
                                " (gloo, or auto, also carries CUDA tensors)");
  }
  if (!device.is_cuda()) {
    throw std::invalid_argument("distributed backend nccl carries CUDA tensors only, and this job trains on " +
                                device.str() + (torch::cuda::is_available() ? "" : " (this machine has no CUDA)") +
                                "; use gloo or auto");
  }
  if (local > gpus) {
    throw std::invalid_argument("distributed backend nccl needs one GPU per local rank: " + std::to_string(local) +
                                " local ranks, " + std::to_string(gpus) +
                                " GPUs on this machine; use fewer processes, or gloo (whose ranks may share a GPU)");
  }
  return "nccl";
}

c10::Device device_for_rank(const c10::Device& resolved, const DistEnv& env) {
  if (!resolved.is_cuda() || !env.distributed()) return resolved;
  const int64_t gpus = std::max<int64_t>(1, torch::cuda::device_count());
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank % gpus));
}

std::shared_ptr<ProcessGroup> ProcessGroup::join(const DistEnv& env, std::chrono::milliseconds timeout,
                                                 const std::string& backend, const c10::Device& device) {
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->timeout = timeout;
  impl->backend = choose_backend(backend, device, env);
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env.master_port);
    so.isServer = env.rank == 0;
    so.numWorkers = env.world_size;
    so.waitWorkers = true;
    so.timeout = timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    c10d_group::Spec spec;
    spec.store = impl->store;
    spec.rank = env.rank;
    spec.size = env.world_size;
    spec.timeout = timeout;
    spec.loopback = env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
    spec.nccl = impl->backend == "nccl";
    spec.cuda_device = device.is_cuda() && device.has_index() ? device.index() : 0;
    impl->pg = c10d_group::make(spec);
  } catch (const std::exception& e) {
    throw DistributedError("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                           " could not join the process group at " + where + " within " +
                           std::to_string(timeout.count() / 1000.0) + " s (" + env.source +
                           " environment; is every rank started, and the port free?): " + first_line(e.what()));
  }
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

const std::string& ProcessGroup::backend() const { return impl_->backend; }

int ProcessGroup::rank() const { return impl_->env.rank; }
int ProcessGroup::size() const { return impl_->env.world_size; }

void ProcessGroup::allreduce_sum(std::vector<at::Tensor>& tensors) {
  impl_->run("allreduce", [&] { impl_->pg->allreduce(tensors)->wait(); });
}

void ProcessGroup::broadcast(std::vector<at::Tensor>& tensors, int root) {
  impl_->run("broadcast", [&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      impl_->pg->broadcast(one, o)->wait();
    }
  });
}

void ProcessGroup::broadcast_module(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> tensors = module.parameters();
  for (auto& b : module.buffers()) tensors.push_back(b);
  impl_->run("broadcast of the model", [&] { c10d::broadcast_coalesced(impl_->pg, tensors, 8 << 20, 0); });
}

void ProcessGroup::barrier() {
  impl_->run("barrier", [&] { impl_->pg->barrier()->wait(); });
}

std::vector<std::string> ProcessGroup::allgather_bytes(const std::string& bytes) {
  const int n = size();
  std::vector<std::string> out(static_cast<size_t>(n));
  impl_->run("allgather", [&] {
    // Lengths first, then the bytes padded to the longest.
    std::vector<at::Tensor> len_in{torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kLong)};
    std::vector<std::vector<at::Tensor>> len_out(1);
    for (int r = 0; r < n; ++r) len_out[0].push_back(torch::zeros({1}, torch::kLong));
    impl_->pg->allgather(len_out, len_in)->wait();
    int64_t longest = 1;
    for (const auto& t : len_out[0]) longest = std::max(longest, t.item<int64_t>());
    at::Tensor in = torch::zeros({longest}, torch::kUInt8);
    std::memcpy(in.data_ptr(), bytes.data(), bytes.size());
    std::vector<at::Tensor> data_in{in};
    std::vector<std::vector<at::Tensor>> data_out(1);
    for (int r = 0; r < n; ++r) data_out[0].push_back(torch::zeros({longest}, torch::kUInt8));
    impl_->pg->allgather(data_out, data_in)->wait();
    for (int r = 0; r < n; ++r) {
      const auto len = static_cast<size_t>(len_out[0][static_cast<size_t>(r)].item<int64_t>());
      out[static_cast<size_t>(r)].assign(static_cast<const char*>(data_out[0][static_cast<size_t>(r)].data_ptr()), len);
    }
  });
  return out;
}

std::string ProcessGroup::broadcast_bytes(const std::string& bytes, int root) {
  std::string out;
  impl_->run("broadcast", [&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    std::vector<at::Tensor> len{torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kLong)};
    impl_->pg->broadcast(len, o)->wait();
    const int64_t n = len[0].item<int64_t>();
    std::vector<at::Tensor> data{torch::zeros({std::max<int64_t>(n, 1)}, torch::kUInt8)};
    if (rank() == root) std::memcpy(data[0].data_ptr(), bytes.data(), bytes.size());
    impl_->pg->broadcast(data, o)->wait();
    out.assign(static_cast<const char*>(data[0].data_ptr()), static_cast<size_t>(n));
  });
  return out;
}

int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw DistributedError(std::string("socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  if (!ok) throw DistributedError(std::string("no free TCP port on 127.0.0.1: ") + std::strerror(errno));
  return ntohs(a.sin_port);
}

// ---------------------------------------------------------------------------
namespace {
struct ReadyHook : torch::autograd::FunctionPostHook {
  std::function<void()> fn;
  explicit ReadyHook(std::function<void()> f) : fn(std::move(f)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    fn();
    return outputs;
  }
};
}  // namespace

struct GradientSync::State {
  std::shared_ptr<ProcessGroup> group;
  std::vector<at::Tensor> params;
  std::vector<std::vector<size_t>> buckets;  // parameter indices, in launch order
  std::vector<size_t> bucket_of, pending;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  // One flat buffer per bucket, allocated once; each parameter's gradient is
  // a view into it (as DDP's gradient_as_bucket_view), so a bucket is
  // allreduced in place with no copy in or out and no fresh memory per step.
  std::vector<at::Tensor> flat;
  std::vector<at::Tensor> views;  // per parameter: its slice of its bucket
  // Autograd keeps only weak pointers to grad accumulators: without these the
  // nodes, and the hooks on them, would be gone.
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  std::vector<uintptr_t> hook_keys;
  bool armed = false, queued = false;
  double wait_seconds = 0;

  void ready(size_t k) {
    if (!armed) return;
    if (!queued) {
      queued = true;
      torch::autograd::Engine::get_default_engine().queue_callback([this] { finish(); });
    }
    // Normally the gradient already is the view (accumulated in place). After
    // a zero_grad that dropped it (set to none), copy it in and point it back.
    at::Tensor g = params[k].grad();
    if (!g.defined()) {
      views[k].zero_();
      params[k].mutable_grad() = views[k];
    } else if (!g.is_same(views[k])) {
      views[k].copy_(g);
      params[k].mutable_grad() = views[k];
    }
    const size_t b = bucket_of[k];
    if (--pending[b] != 0) return;
    flat[b].div_(group->size());
    std::vector<at::Tensor> t{flat[b]};
    group->impl().run("gradient allreduce", [&] { works[b] = group->impl().pg->allreduce(t); });
  }

  void finish() {
    armed = false;
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t b = 0; b < buckets.size(); ++b) {
      if (!works[b]) {
        throw DistributedError("gradient sync: parameter " + std::to_string(buckets[b].front()) +
                               " got no gradient in this backward; every parameter must take part in the loss");
      }
      group->impl().run("gradient allreduce", [&] { works[b]->wait(); });
      works[b].reset();
    }
    wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

GradientSync::GradientSync(std::shared_ptr<ProcessGroup> group, const std::vector<at::Tensor>& parameters,
                           int64_t bucket_bytes)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.group = std::move(group);
  for (const auto& p : parameters) {
    if (p.requires_grad()) s.params.push_back(p);
  }
  // Reverse order: backward produces the last layers' gradients first. As in
  // DDP, the first bucket is small (1 MB) so that communication starts early.
  int64_t bytes = 0;
  for (size_t k = s.params.size(); k-- > 0;) {
    const int64_t b = s.params[k].numel() * static_cast<int64_t>(s.params[k].element_size());
    const int64_t cap = s.buckets.size() <= 1 ? std::min<int64_t>(bucket_bytes, 1 << 20) : bucket_bytes;
    if (s.buckets.empty() || (bytes > 0 && bytes + b > cap)) {
      s.buckets.emplace_back();
      bytes = 0;
    }
    s.buckets.back().push_back(k);
    bytes += b;
  }
  s.bucket_of.resize(s.params.size());
  s.views.resize(s.params.size());
  for (size_t b = 0; b < s.buckets.size(); ++b) {
    int64_t n = 0;
    for (size_t k : s.buckets[b]) n += s.params[k].numel();
    s.flat.push_back(torch::zeros({n}, s.params[s.buckets[b].front()].options().requires_grad(false)));
    int64_t offset = 0;
    for (size_t k : s.buckets[b]) {
      s.bucket_of[k] = b;
      const int64_t m = s.params[k].numel();
      // Shares the bucket's storage without being an autograd view: optimizers'
      // zero_grad() detaches gradients in place, which views refuse.
      torch::NoGradGuard no_grad;
      s.views[k] = torch::empty({0}, s.flat[b].options())
                       .set_(s.flat[b].storage(), offset, s.params[k].sizes(), s.params[k].contiguous().strides());
      offset += m;
      // An existing gradient moves into the bucket; from now on it lives there.
      if (s.params[k].grad().defined()) s.views[k].copy_(s.params[k].grad());
      s.params[k].mutable_grad() = s.views[k];
    }
  }
  State* state = &s;
  for (size_t k = 0; k < s.params.size(); ++k) {
    auto acc = torch::autograd::impl::grad_accumulator(s.params[k]);
    s.hook_keys.push_back(acc->add_post_hook(std::make_unique<ReadyHook>([state, k] { state->ready(k); })));
    s.accumulators.push_back(std::move(acc));
  }
}

GradientSync::~GradientSync() {
  for (size_t k = 0; k < state_->accumulators.size(); ++k) state_->accumulators[k]->del_post_hook(state_->hook_keys[k]);
}

void GradientSync::prepare_for_backward() {
  State& s = *state_;
  s.armed = true;
  s.queued = false;
  s.pending.resize(s.buckets.size());
  for (size_t b = 0; b < s.buckets.size(); ++b) s.pending[b] = s.buckets[b].size();
  s.works.assign(s.buckets.size(), {});
}

size_t GradientSync::buckets() const { return state_->buckets.size(); }
double GradientSync::last_wait_seconds() const { return state_->wait_seconds; }

}  // namespace cairn
