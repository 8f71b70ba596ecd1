// CUDA graphs on a LibTorch 2.4+ built with CUDA (see cuda_graph.h).
#include "cuda_graph.h"

#include <ATen/Context.h>
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <mutex>
#include <optional>
#include <stdexcept>

namespace cairn::detail {

struct CudaGraph::Impl {
  c10::Device device;
  std::optional<c10::cuda::CUDAStream> side;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
};

bool CudaGraph::built() { return true; }

std::string CudaGraph::why_not_built() { return ""; }

CudaGraph::CudaGraph(c10::Device device) : impl_(std::make_unique<Impl>(Impl{device, std::nullopt, nullptr})) {
  if (!device.is_cuda()) throw std::logic_error("CudaGraph on " + device.str() + ": CUDA graphs need a CUDA device");
  c10::cuda::CUDAGuard guard(device.index());
  impl_->side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
}

CudaGraph::~CudaGraph() {
  // A replay may still be running: its executable graph and memory pool must outlive it.
  if (impl_ && impl_->graph) {
    c10::cuda::CUDAGuard guard(impl_->device.index());
    (void)cudaDeviceSynchronize();
  }
}

namespace {
//! CUDA's sync debug mode for one scope: a host wait then throws.
class ForbidSync {
 public:
  explicit ForbidSync(bool on) : old_(c10::cuda::warning_state().get_sync_debug_mode()), on_(on) {
    if (on_) c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  }
  ~ForbidSync() {
    if (on_) c10::cuda::warning_state().set_sync_debug_mode(old_);
  }
  ForbidSync(const ForbidSync&) = delete;
  ForbidSync& operator=(const ForbidSync&) = delete;

 private:
  c10::cuda::SyncDebugMode old_;
  bool on_;
};

//! The side stream waits for what the current stream has queued; `fn` runs
//! there; then the current stream waits for the side stream (also when `fn` throws).
void ordered_on(c10::cuda::CUDAStream side, c10::DeviceIndex index, const std::function<void()>& fn) {
  c10::cuda::CUDAGuard device_guard(index);
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream(index);
  at::cuda::CUDAEvent before;
  before.record(main);
  before.block(side);
  auto rejoin = [&] {
    at::cuda::CUDAEvent after;
    after.record(side);
    after.block(main);
  };
  try {
    c10::cuda::CUDAStreamGuard stream_guard(side);
    fn();
  } catch (...) {
    rejoin();
    throw;
  }
  rejoin();
}
}  // namespace

void CudaGraph::on_side_stream(const std::function<void()>& fn, bool forbid_sync) {
  ordered_on(*impl_->side, impl_->device.index(), [&] {
    ForbidSync forbid(forbid_sync);
    fn();
  });
}

namespace {
//! Ends a capture `fn` broke, so the stream leaves capture mode before anything else touches it.
void end_broken_capture(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
    cudaGraph_t broken = nullptr;
    (void)cudaStreamEndCapture(stream, &broken);
    if (broken) (void)cudaGraphDestroy(broken);
  }
  (void)cudaGetLastError();  // capture errors are not sticky: clear this thread's
}

template <class F>
void quietly(F&& f) {
  try {
    f();
  } catch (...) {
    // a clean-up step that the capture's own code already did, or never needed
  }
}
}  // namespace

void CudaGraph::capture(const std::function<void()>& fn) {
  const c10::DeviceIndex index = impl_->device.index();
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  {
    c10::cuda::CUDAGuard guard(index);  // the graph takes the current device's stream when made
    graph = std::make_unique<at::cuda::CUDAGraph>();
  }
  at::Generator gen = at::cuda::detail::getDefaultCUDAGenerator(index);
  // A pool of our own naming, so a failed capture can be unwound (CUDAGraph::pool() answers only after a success).
  const c10::MempoolId_t pool = at::cuda::graph_pool_handle();
  bool began = false;
  try {
    ordered_on(*impl_->side, index, [&] {
      began = true;  // capture_begin may fail after the generator's capture_prologue ran
      try {
        // Thread-local: the prefetch and checkpoint-writer threads may use CUDA meanwhile.
        graph->capture_begin(pool, cudaStreamCaptureModeThreadLocal);
        fn();
      } catch (...) {
        end_broken_capture(impl_->side->stream());  // before ordered_on joins the streams again
        throw;
      }
      graph->capture_end();  // when it throws, cudaStreamEndCapture has ended the capture
    });
  } catch (const std::exception& e) {
    const std::string why = e.what();
    if (began) {
      end_broken_capture(impl_->side->stream());
      // Stop routing allocations (device and pinned host) to the capture's pool.
      quietly([&] { c10::cuda::CUDACachingAllocator::endAllocateToPool(index, pool); });
      quietly([&] { at::getHostAllocator(at::kCUDA)->end_allocate_to_pool(pool); });
      // Let the pool go, unless capture_end got far enough for the graph to
      // own it (it failed instantiating): then the graph's reset releases it,
      // and releasing it here as well would count it down twice.
      bool owned = false;
      quietly([&] {
        (void)graph->pool();  // answers only once capture_end has ended the capture
        owned = true;
      });
      if (!owned) {
        quietly([&] { c10::cuda::CUDACachingAllocator::releasePool(index, pool); });
        quietly([&] { at::getHostAllocator(at::kCUDA)->release_pool(pool); });
      }
      // The generator's state still thinks a capture is under way (its
      // offsets would refuse to advance): give it a fresh state with the same
      // seed and offset.
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.graphsafe_set_state(gen.clone());
    }
    {
      c10::cuda::CUDAGuard guard(index);
      graph.reset();
    }
    throw std::runtime_error(why);
  }
  impl_->graph = std::move(graph);
}

void CudaGraph::replay() {
  if (!impl_->graph) throw std::logic_error("CudaGraph::replay before a capture");
  c10::cuda::CUDAGuard guard(impl_->device.index());
  impl_->graph->replay();
}

}  // namespace cairn::detail
