// Two-phase checkpoint saving: a short blocking snapshot of the state into
// host memory, then serialisation and writing on a background thread.
//
// StateSnapshot copies every tensor of a checkpoint Value into host buffers
// that are reused from one save to the next (page-locked memory for CUDA
// tensors, pinned a piece at a time so that pinning does not pause training;
// copied asynchronously and synchronised once). BackgroundWriter runs one job
// at a time on its own thread; the training thread waits for it before the
// next snapshot, so the buffers are never overwritten while being written.
#pragma once

#include "cairn/value.h"

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace cairn {

class StateSnapshot {
 public:
  //! Shape, dtype and device of one tensor, in traversal order.
  struct Slot {
    std::vector<int64_t> sizes;
    c10::ScalarType dtype;
    bool cuda;
    int device = -1;  //!< the CUDA device's index (cuda only)
  };
  //! Top-level keys whose tensors are immutable once handed out and are shared
  //! by the snapshot instead of copied: `metrics` (MetricLog's append-only
  //! columns; see MetricLog::state_dict), so a save's cost does not grow with
  //! the length of the run.
  static const std::vector<std::string>& shared_keys();
  //! The tensors `v` holds, as slots (cheap; read on the training thread).
  static std::vector<Slot> layout(const Value& v);
  //! Allocates (and touches) buffers for `slots` ahead of the first take(), so
  //! that save does not pay for page faults or pinning. Safe on another thread
  //! as long as no take() runs at the same time.
  void reserve(const std::vector<Slot>& slots);
  //! A copy of `v` whose tensors live in this snapshot's host buffers.
  Value take(const Value& v);
  //! Bytes held in host buffers.
  uint64_t bytes() const;

 private:
  at::Tensor& buffer_for(size_t index, const Slot& slot);
  Value copy(const Value& v, std::vector<int>* cuda_devices);
  std::vector<at::Tensor> buffers_;  //!< reused between takes, matched by position
  std::vector<bool> for_cuda_;       //!< buffers_[i] was made for a CUDA tensor (page-locked)
  size_t next_ = 0;
};

class BackgroundWriter {
 public:
  BackgroundWriter();
  ~BackgroundWriter();  //!< waits for the job in flight
  BackgroundWriter(const BackgroundWriter&) = delete;
  BackgroundWriter& operator=(const BackgroundWriter&) = delete;

  //! Starts `job` on the writer thread. Requires !busy().
  void submit(std::function<void()> job);
  //! A job was submitted and its result not yet collected by wait().
  bool pending() const;
  //! The job in flight is still running.
  bool busy() const;
  //! Waits for the job in flight and returns its exception (nullptr on success).
  std::exception_ptr wait();

 private:
  void run();

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool has_job_ = false;    //!< a job is queued or running
  bool collected_ = true;   //!< its result was taken by wait()
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace cairn
