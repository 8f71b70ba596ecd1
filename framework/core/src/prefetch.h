// Worker threads that prepare training batches ahead of the step (gather,
// decode and transform, pinned copy) while the current step runs. The batches
// are the ones the step would have made itself, from the same indices: nothing
// about the results depends on whether they are used or on their number
// (data.workers; data.prefetch is one thread). (Trainer internals.)
#pragma once

#include "cairn/data.h"

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace cairn::detail {

class Prefetcher {
 public:
  using Make = std::function<Batch(const at::Tensor& indices)>;
  //! `threads` workers (at least one) make started batches, several at once.
  explicit Prefetcher(Make make, int64_t threads = 1);
  //! Stops the workers: queued batches are dropped, the ones being made finish.
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  //! Queues batch `k` from `indices` (the caller bounds how many are ahead).
  void start(int64_t k, at::Tensor indices);
  //! Whether batch `k` was started and not taken yet.
  bool started(int64_t k);
  //! Batch `k`: the prefetched one when it was started (waiting for it), else
  //! made now on this thread. Batches started before `k` are dropped.
  //! Rethrows what making it threw.
  Batch take(int64_t k, const at::Tensor& indices);

 private:
  struct Job {
    at::Tensor indices;
    bool done = false;
    Batch batch;
    std::exception_ptr error;
  };
  void run();
  Make make_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::map<int64_t, Job> jobs_;  //!< started, not taken
  std::deque<int64_t> queue_;    //!< started, not yet picked by a worker
  std::vector<std::thread> threads_;
};

}  // namespace cairn::detail
