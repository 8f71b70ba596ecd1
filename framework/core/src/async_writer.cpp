#include "cairn/async_writer.h"

#include "file_io.h"
#include "pinned/pinned_host.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <iostream>

namespace cairn {

namespace {
void collect(const Value& v, std::vector<StateSnapshot::Slot>& out) {
  if (v.is_tensor()) {
    const at::Tensor& t = v.to_tensor();
    if (t.defined()) out.push_back({t.sizes().vec(), t.scalar_type(), t.is_cuda(), t.is_cuda() ? int(t.get_device()) : -1});
  } else if (v.is_list() || v.is_dict()) {
    for (const auto& item : v.items()) collect(item, out);
  }
}
}  // namespace

const std::vector<std::string>& StateSnapshot::shared_keys() {
  static const std::vector<std::string> keys{"metrics"};
  return keys;
}

namespace {
bool shared_key(const Value& k) {
  if (!k.is_string()) return false;
  for (const auto& s : StateSnapshot::shared_keys()) {
    if (k.to_string() == s) return true;
  }
  return false;
}
}  // namespace

std::vector<StateSnapshot::Slot> StateSnapshot::layout(const Value& v) {
  std::vector<Slot> out;
  if (!v.is_dict()) {
    collect(v, out);
    return out;
  }
  for (size_t i = 0; i < v.keys().size(); ++i) {
    if (!shared_key(v.keys()[i])) collect(v.values()[i], out);
  }
  return out;
}

namespace {
//! Buffers from this size up get huge-page memory of their own, populated
//! (for CUDA tensors also page-locked in pieces).
constexpr size_t kHugeBuffer = 1u << 20;

//! A host buffer for one tensor. Large CPU ones get huge-page memory of their
//! own (file_io.h): the writer thread reads every byte of them again (hashes,
//! staging), and 4 KiB pages made that read cost up to 0.15 s per 64 MB on a
//! paravirtualised VM, against 6 ms from huge pages. Large CUDA ones get that
//! memory too, page-locked a piece at a time (pinned/pinned_host.h says why);
//! small ones come from LibTorch's pinned allocator.
at::Tensor host_buffer(const StateSnapshot::Slot& slot) {
  const auto options = at::TensorOptions().dtype(slot.dtype);
  int64_t numel = 1;
  for (int64_t s : slot.sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(slot.dtype);
  if (slot.cuda) {
    // After one refusal the driver is not asked again (each try maps and
    // populates the whole buffer first).
    static std::atomic<bool> refused{false};
    if (bytes >= kHugeBuffer && !refused.load()) {
      std::string why;
      at::Tensor t = detail::pinned_host_tensor(slot.sizes, slot.dtype, slot.device, &why);
      if (t.defined()) return t;
      if (!refused.exchange(true)) {
        std::cerr << "cairn: warning: checkpoint buffers could not be page-locked piece by piece (" << why
                  << "); each is pinned whole, which can pause training while it runs\n";
      }
    }
    return at::empty(slot.sizes, options.pinned_memory(true));
  }
  if (bytes < kHugeBuffer) return at::empty(slot.sizes, options);
  auto memory = std::make_shared<fileio::HostMemory>(bytes);
  void* data = memory->data();
  return torch::from_blob(data, slot.sizes, [memory](void*) mutable { memory.reset(); }, options);
}
}  // namespace

at::Tensor& StateSnapshot::buffer_for(size_t index, const Slot& slot) {
  if (buffers_.size() <= index) buffers_.resize(index + 1);
  if (for_cuda_.size() <= index) for_cuda_.resize(index + 1, false);
  at::Tensor& buf = buffers_[index];
  if (!buf.defined() || buf.scalar_type() != slot.dtype || buf.sizes() != at::IntArrayRef(slot.sizes) ||
      for_cuda_[index] != slot.cuda) {
    buf = host_buffer(slot);
    for_cuda_[index] = slot.cuda;
  }
  return buf;
}

void StateSnapshot::reserve(const std::vector<Slot>& slots) {
  for (size_t i = 0; i < slots.size(); ++i) {
    at::Tensor& buf = buffer_for(i, slots[i]);
    // Fault the pages in now (pinned and huge-page memory already is).
    if (!slots[i].cuda && static_cast<size_t>(buf.numel()) * buf.element_size() < kHugeBuffer) buf.zero_();
  }
}

Value StateSnapshot::copy(const Value& v, std::vector<int>* cuda_devices) {
  switch (v.kind()) {
    case Value::Kind::Tensor: {
      const at::Tensor& src = v.to_tensor();
      if (!src.defined()) return v;
      const bool cuda = src.is_cuda();
      const int device = cuda ? static_cast<int>(src.get_device()) : -1;
      at::Tensor& buf = buffer_for(next_++, Slot{src.sizes().vec(), src.scalar_type(), cuda, device});
      if (cuda) {
        detail::copy_to_pinned(buf, src);  // queued on that device's current stream
        if (std::find(cuda_devices->begin(), cuda_devices->end(), device) == cuda_devices->end()) {
          cuda_devices->push_back(device);
        }
      } else {
        buf.copy_(src);
      }
      return Value(buf);
    }
    case Value::Kind::List: {
      Value out = Value::list();
      for (const auto& item : v.items()) out.push_back(copy(item, cuda_devices));
      return out;
    }
    case Value::Kind::Dict: {
      Value out = Value::dict();
      for (size_t i = 0; i < v.keys().size(); ++i) out.set(v.keys()[i], copy(v.values()[i], cuda_devices));
      return out;
    }
    default:
      return v;
  }
}

Value StateSnapshot::take(const Value& v) {
  next_ = 0;
  std::vector<int> cuda_devices;
  Value out;
  if (v.is_dict()) {
    out = Value::dict();
    for (size_t i = 0; i < v.keys().size(); ++i) {
      out.set(v.keys()[i], shared_key(v.keys()[i]) ? v.values()[i] : copy(v.values()[i], &cuda_devices));
    }
  } else {
    out = copy(v, &cuda_devices);
  }
  buffers_.resize(next_);
  for_cuda_.resize(next_);
  // Every device the copies ran on (synchronize() alone waits for the
  // current device only, and a model on cuda:1 leaves it at 0).
  for (int d : cuda_devices) torch::cuda::synchronize(d);
  return out;
}

uint64_t StateSnapshot::bytes() const {
  uint64_t n = 0;
  for (const auto& b : buffers_) n += static_cast<uint64_t>(b.numel()) * b.element_size();
  return n;
}

BackgroundWriter::BackgroundWriter() : thread_([this] { run(); }) {}

BackgroundWriter::~BackgroundWriter() {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return !has_job_; });
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void BackgroundWriter::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    cv_.wait(lock, [this] { return stop_ || (has_job_ && job_); });
    if (stop_) return;
    auto job = std::move(job_);
    job_ = nullptr;
    lock.unlock();
    std::exception_ptr error;
    try {
      job();
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    error_ = error;
    has_job_ = false;
    cv_.notify_all();
  }
}

void BackgroundWriter::submit(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (has_job_ || !collected_) throw std::logic_error("BackgroundWriter: a job is already in flight");
    job_ = std::move(job);
    has_job_ = true;
    collected_ = false;
    error_ = nullptr;
  }
  cv_.notify_all();
}

bool BackgroundWriter::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return !collected_;
}

bool BackgroundWriter::busy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return has_job_;
}

std::exception_ptr BackgroundWriter::wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [this] { return !has_job_; });
  collected_ = true;
  return error_;
}

}  // namespace cairn
