// One captured piece of CUDA work, for trainer.cuda_graphs: LibTorch's
// at::cuda::CUDAGraph behind an interface the rest of the core compiles
// without CUDA headers. CMake compiles cuda_graph_cuda.cpp for a LibTorch 2.4+
// built with CUDA, else cuda_graph_none.cpp (built() is false there and the
// Trainer says why it trains uncaptured). (Trainer internals.)
#pragma once

#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <string>

namespace cairn::detail {

class CudaGraph {
 public:
  //! Whether this build can capture CUDA graphs at all; else why not.
  static bool built();
  static std::string why_not_built();

  explicit CudaGraph(c10::Device device);
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  //! Runs `fn` on a side stream of the device (capture needs one; a warm-up
  //! there sets up per-stream state such as cuBLAS's workspace before the
  //! capture), ordered after the work already queued and before what follows.
  //! With `forbid_sync`, anything in `fn` that waits for the device (a host
  //! read, a pageable copy) throws instead: CUDA's sync debug mode.
  void on_side_stream(const std::function<void()>& fn, bool forbid_sync);
  //! Records `fn`'s device work (nothing runs). Throws std::runtime_error
  //! naming the cause when it cannot be captured; the stream, the memory pool
  //! and the device's random generator are then left as they were.
  void capture(const std::function<void()>& fn);
  //! Runs the captured work on the current stream; the generator's offset
  //! advances as the uncaptured kernels would have advanced it.
  void replay();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::detail
