#include "cairn/async_writer.h"

#include <torch/cuda.h>
#include <torch/torch.h>

namespace cairn {

Value StateSnapshot::copy(const Value& v, bool* any_cuda) {
  switch (v.kind()) {
    case Value::Kind::Tensor: {
      const at::Tensor& src = v.to_tensor();
      if (!src.defined()) return v;
      at::Tensor& buf = next_ < buffers_.size() ? buffers_[next_] : buffers_.emplace_back();
      ++next_;
      const bool cuda = src.is_cuda();
      if (!buf.defined() || buf.scalar_type() != src.scalar_type() || buf.sizes() != src.sizes() ||
          buf.is_pinned() != cuda) {
        buf = at::empty(src.sizes(), at::TensorOptions().dtype(src.scalar_type()).pinned_memory(cuda));
      }
      buf.copy_(src, /*non_blocking=*/cuda);
      *any_cuda = *any_cuda || cuda;
      return Value(buf);
    }
    case Value::Kind::List: {
      Value out = Value::list();
      for (const auto& item : v.items()) out.push_back(copy(item, any_cuda));
      return out;
    }
    case Value::Kind::Dict: {
      Value out = Value::dict();
      for (size_t i = 0; i < v.keys().size(); ++i) out.set(v.keys()[i], copy(v.values()[i], any_cuda));
      return out;
    }
    default:
      return v;
  }
}

Value StateSnapshot::take(const Value& v) {
  next_ = 0;
  bool any_cuda = false;
  Value out = copy(v, &any_cuda);
  buffers_.resize(next_);
  if (any_cuda) torch::cuda::synchronize();
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
