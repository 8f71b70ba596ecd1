// One helper thread that prepares the next training batch (gather, pinned
// copy, non-blocking transfer) while the current step runs. The batches are
// the ones the step would have made itself, in the same order: nothing about
// the results depends on whether it is used. (Trainer internals.)
#pragma once

#include "cairn/data.h"

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

namespace cairn::detail {

class Prefetcher {
 public:
  using Make = std::function<Batch(const at::Tensor& indices)>;
  explicit Prefetcher(Make make);
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  //! Starts making batch `k` from `indices` (after any batch in progress).
  void start(int64_t k, at::Tensor indices);
  //! Batch `k`: the prefetched one when it was started, else made now.
  //! Rethrows what making it threw.
  Batch take(int64_t k, const at::Tensor& indices);

 private:
  void run();
  Make make_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, pending_ = false, ready_ = false;
  int64_t k_ = -1;
  at::Tensor indices_;
  Batch batch_;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace cairn::detail
