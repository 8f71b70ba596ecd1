#include "prefetch.h"

#include <ATen/Parallel.h>

namespace cairn::detail {

Prefetcher::Prefetcher(Make make) : make_(std::move(make)), thread_([this] { run(); }) {}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Prefetcher::start(int64_t k, at::Tensor indices) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !pending_; });  // one batch in flight at a time
  k_ = k;
  indices_ = std::move(indices);
  pending_ = true;
  ready_ = false;
  batch_ = Batch{};
  error_ = nullptr;
  cv_.notify_all();
}

Batch Prefetcher::take(int64_t k, const at::Tensor& indices) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !pending_; });
  if (!ready_ || k_ != k) {
    lock.unlock();
    return make_(indices);
  }
  ready_ = false;
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  return std::move(batch_);
}

void Prefetcher::run() {
  // A new thread starts with OpenMP's default team size: take the one
  // set_threads() chose (as LibTorch's own worker threads do).
  at::init_num_threads();
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || pending_; });
    if (stop_) return;
    const at::Tensor indices = indices_;
    lock.unlock();
    Batch b;
    std::exception_ptr err;
    try {
      b = make_(indices);
    } catch (...) {
      err = std::current_exception();
    }
    lock.lock();
    batch_ = std::move(b);
    error_ = err;
    pending_ = false;
    ready_ = true;
    cv_.notify_all();
  }
}

}  // namespace cairn::detail
