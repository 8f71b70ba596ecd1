// Page-locked pieces on a LibTorch built with CUDA (see pinned_host.h).
#include "pinned_host.h"

#include "../file_io.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <thread>

namespace cairn::detail {

namespace {
//! The OS memory and the pieces registered in it; unregistered before unmapping.
struct PinnedPieces {
  fileio::HostMemory memory;
  std::vector<char*> registered;
  c10::DeviceIndex device = 0;
  PinnedPieces() = default;
  PinnedPieces(const PinnedPieces&) = delete;
  PinnedPieces& operator=(const PinnedPieces&) = delete;
  ~PinnedPieces() {
    if (!registered.empty()) {
      // On whichever thread drops the last reference: under the device's
      // guard, so that a thread whose current device is 0 makes no context there.
      try {
        c10::cuda::CUDAGuard guard(device);
        for (char* p : registered) (void)cudaHostUnregister(p);
      } catch (...) {  // at process exit the runtime may be gone; the memory is unmapped all the same
      }
    }
    (void)cudaGetLastError();
  }
};

constexpr size_t kPage = 4096;
}  // namespace

at::Tensor pinned_host_tensor(const std::vector<int64_t>& sizes, c10::ScalarType dtype, int device, std::string* why) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  auto pieces = std::make_shared<PinnedPieces>();
  pieces->memory = fileio::HostMemory(std::max<size_t>(bytes, 1));  // 2 MiB aligned
  pieces->device = static_cast<c10::DeviceIndex>(std::max(device, 0));
  const size_t mapped = pieces->memory.mapped_size();
  if (!pieces->memory.populated()) {
    // A kernel before 5.14: fault every page in now, not inside the driver's lock.
    for (size_t off = 0; off < mapped; off += kPage) pieces->memory.data()[off] = 0;
  }
  // Not shared with a child process (std::system, the launcher): a fork's
  // copy-on-write would move the parent's pages away from what the device
  // writes to (memory from cudaHostAlloc is kept out of children the same way).
  (void)::madvise(pieces->memory.data(), mapped, MADV_DONTFORK);
  std::optional<c10::cuda::CUDAGuard> guard;
  try {
    guard.emplace(pieces->device);
  } catch (const c10::Error& e) {
    *why = "CUDA device " + std::to_string(pieces->device) + ": " + e.what_without_backtrace();
    return {};
  }
  for (size_t off = 0; off < mapped; off += kPinPiece) {
    if (off > 0) std::this_thread::sleep_for(std::chrono::microseconds(200));  // let waiting CUDA calls in
    char* p = pieces->memory.data() + off;
    const cudaError_t err = cudaHostRegister(p, std::min(kPinPiece, mapped - off), cudaHostRegisterPortable);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      *why = std::string("cudaHostRegister refused ") + std::to_string(std::min(kPinPiece, mapped - off)) +
             " bytes: " + cudaGetErrorString(err);
      return {};  // ~PinnedPieces unregisters what was registered
    }
    pieces->registered.push_back(p);
  }
  void* data = pieces->memory.data();
  return at::from_blob(
      data, sizes, [pieces](void*) mutable { pieces.reset(); }, at::TensorOptions().dtype(dtype));
}

void copy_to_pinned(at::Tensor& dst, const at::Tensor& src) {
  const int64_t per = static_cast<int64_t>(kPinPiece / dst.element_size());
  const int64_t n = src.numel();
  if (n <= per) {
    dst.copy_(src, /*non_blocking=*/true);
    return;
  }
  at::Tensor to = dst.view({-1});
  const at::Tensor from = src.reshape({-1});  // a view where it can be; copy_ handles its strides
  for (int64_t off = 0; off < n; off += per) {
    const int64_t len = std::min(per, n - off);
    to.narrow(0, off, len).copy_(from.narrow(0, off, len), /*non_blocking=*/true);
  }
}

}  // namespace cairn::detail
