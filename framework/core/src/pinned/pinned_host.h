// Page-locked host memory for checkpoint snapshots of CUDA tensors, pinned a
// piece at a time.
//
// Why: page-locking runs under a lock inside the NVIDIA driver that other CUDA
// calls of the process (kernel launches on the training thread included) also
// need. LibTorch's pinned allocator makes one cudaHostAlloc per tensor, which
// faults in and pins every page of it under that lock, back to back. For a
// 537M-parameter model with AdamW (6.44 GB, 256 MB per tensor) the background
// reserve that Checkpoint starts after the first step paused training: 0.86x
// the steps/s of a run without checkpoints (bench_gpu, H200, PyTorch 2.11).
// Here the memory comes from the OS first (huge pages, populated or touched
// page by page without any driver call), and is then registered with the
// driver in kPinPiece pieces with a pause between them, so the lock is held
// briefly and the training thread's calls get in between. (PyTorch's
// `pinned_use_cuda_host_register` also populates first, then registers in one
// call.)
//
// A device-to-host copy is asynchronous only when its host range lies inside
// one registration: copy_to_pinned() cuts copies at the pieces' boundaries.
//
// Private to the checkpoint code (not installed). CMake compiles
// pinned_host_cuda.cpp for a LibTorch built with CUDA, pinned_host_none.cpp
// elsewhere (where no tensor is on a CUDA device, so nothing asks for it).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <string>
#include <vector>

namespace cairn::detail {

//! Bytes page-locked per driver call: a multiple of every element size, so
//! that pieces end between elements.
constexpr size_t kPinPiece = size_t{64} << 20;

//! A contiguous CPU tensor of `sizes` and `dtype` in host memory page-locked
//! in kPinPiece pieces for copies from CUDA device `device` (registered and
//! unregistered under that device's guard, so that no other device gets a
//! context; unregistered and unmapped with the tensor's storage). Undefined,
//! with `*why` set, when the driver refuses (or this LibTorch has no CUDA);
//! throws std::bad_alloc when the host memory cannot be mapped.
at::Tensor pinned_host_tensor(const std::vector<int64_t>& sizes, c10::ScalarType dtype, int device, std::string* why);

//! dst.copy_(src, non_blocking=true) for a CUDA `src` and a contiguous host
//! `dst` of the same shape and dtype, issued as one copy per kPinPiece bytes
//! of `dst` counted from its start (so each lies in one registration above).
void copy_to_pinned(at::Tensor& dst, const at::Tensor& src);

}  // namespace cairn::detail
