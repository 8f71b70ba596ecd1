// The pickle codec of checkpoint files: a Value tree to and from the
// protocol-2 pickle stream that Python's torch.save writes (tensors as
// torch._utils._rebuild_tensor_v2 over persistent-id storages), so that
// `torch.load(path, weights_only=True)` reads cairn's files and cairn reads
// Python's. The reader is hardened against hostile bytes (see pickle_codec.cpp).
//
// Private to the checkpoint file I/O (not installed); pickle::dumps is
// declared in cairn/checkpoint_file.h for the fuzz harness.
#pragma once

#include "cairn/checkpoint_file.h"
#include "cairn/value.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <string>

namespace cairn {
namespace pickle {

//! Gives the tensor of storage record `key`: `numel` elements of type `t`.
using StorageLoader = std::function<at::Tensor(const std::string& key, c10::ScalarType t, int64_t numel)>;

//! Parses a pickle stream into a Value; storages come from `loader`. Throws
//! CheckpointError ("malformed pickle: ...") on anything outside the subset
//! torch.save writes, and past its limits (nesting, values and bytes
//! proportional to `size`, tensor views outside their storage).
Value loads(const char* data, size_t size, const StorageLoader& loader);

}  // namespace pickle
}  // namespace cairn
