#include "prefetch.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace cairn::detail {

Prefetcher::Prefetcher(Make make, int64_t threads) : make_(std::move(make)) {
  threads_.reserve(static_cast<size_t>(std::max<int64_t>(1, threads)));
  for (int64_t i = 0; i < std::max<int64_t>(1, threads); ++i) threads_.emplace_back([this] { run(); });
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Prefetcher::start(int64_t k, at::Tensor indices) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (jobs_.count(k)) return;
    jobs_[k].indices = std::move(indices);
    queue_.push_back(k);
  }
  cv_.notify_all();
}

bool Prefetcher::started(int64_t k) {
  std::lock_guard<std::mutex> lock(mu_);
  return jobs_.count(k) > 0;
}

Batch Prefetcher::take(int64_t k, const at::Tensor& indices) {
  std::unique_lock<std::mutex> lock(mu_);
  // Batches before k will not be asked for: drop them (one being made is
  // dropped when it is done).
  for (auto it = jobs_.begin(); it != jobs_.end() && it->first < k;) it = jobs_.erase(it);
  queue_.erase(std::remove_if(queue_.begin(), queue_.end(), [&](int64_t j) { return j < k; }), queue_.end());
  auto it = jobs_.find(k);
  if (it == jobs_.end()) {
    lock.unlock();
    return make_(indices);
  }
  cv_.wait(lock, [&] {
    auto j = jobs_.find(k);
    return j == jobs_.end() || j->second.done;
  });
  it = jobs_.find(k);
  if (it == jobs_.end()) {  // cannot happen (only take() erases), but never wait for nothing
    lock.unlock();
    return make_(indices);
  }
  Job job = std::move(it->second);
  jobs_.erase(it);
  lock.unlock();
  if (job.error) std::rethrow_exception(job.error);
  return std::move(job.batch);
}

void Prefetcher::run() {
  // A new thread starts with OpenMP's default team size: take the one
  // set_threads() chose (as LibTorch's own worker threads do).
  at::init_num_threads();
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    const int64_t k = queue_.front();
    queue_.pop_front();
    auto it = jobs_.find(k);
    if (it == jobs_.end()) continue;
    const at::Tensor indices = it->second.indices;
    lock.unlock();
    Batch b;
    std::exception_ptr err;
    try {
      b = make_(indices);
    } catch (...) {
      err = std::current_exception();
    }
    lock.lock();
    it = jobs_.find(k);
    if (it != jobs_.end()) {
      it->second.batch = std::move(b);
      it->second.error = err;
      it->second.done = true;
    }
    cv_.notify_all();
  }
}

}  // namespace cairn::detail
