// Checkpoint files: one verified, crash-safe file per checkpoint.
//
// Format: the zip layout of Python's `torch.save` (records `data.pkl`,
// `data/<key>` per tensor storage, `byteorder`, `version`), with a pickle
// stream (protocol 2) that uses only what `torch.load(weights_only=True)`
// accepts: dict, list, str, int, float, bool, None and tensors rebuilt by
// `torch._utils._rebuild_tensor_v2`. cairn adds one record,
// `cairn/checksums`, holding an XXH3-64 hash and size of every other record;
// Python ignores it, cairn verifies it on every read.
//
// Writing is atomic: a temp file in the same directory, fsync, rename over
// the target, fsync of the directory. A crash at any instant leaves either the
// previous file or the new one. Tensor bytes stream from the tensors to the
// file through one 8 MiB staging buffer (no in-memory copy of the whole
// checkpoint), written with O_DIRECT where the filesystem allows; see
// framework/core/src/file_io.h for why and for the fallback.
#pragma once

#include "cairn/value.h"

#include <stdexcept>
#include <string>

namespace cairn {

//! A checkpoint that cannot be used: missing, truncated, corrupt, not a checkpoint.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! Writing a checkpoint failed (disk full, permission, file-size limit). The
//! target file, if it existed, is untouched.
class CheckpointWriteError : public std::runtime_error {
 public:
  explicit CheckpointWriteError(const std::string& what, int error_number = 0)
      : std::runtime_error(what), error_number_(error_number) {}
  //! The errno behind the failure (0 when none): ENOSPC, EDQUOT, EFBIG, EACCES, ...
  int error_number() const { return error_number_; }
  //! The disk (or quota, or file-size limit) is full: freeing space may help.
  bool no_space() const;

 private:
  int error_number_;
};

struct WriteStats {
  uint64_t bytes = 0;       //!< size of the file written
  double seconds = 0.0;     //!< wall time including fsync and rename
  // Where the time went (for benchmarks):
  double pickle_seconds = 0.0;     //!< serialising the non-tensor content
  double hash_wait_seconds = 0.0;  //!< the writer waiting for CRC-32/XXH3 running ahead on helper threads
  double write_seconds = 0.0;      //!< copying into the staging buffer and write(2) calls
  double fsync_seconds = 0.0;      //!< the final fsync
  double rename_seconds = 0.0;     //!< close, rename over the target, fsync of the directory
  bool direct_io = false;          //!< every byte went out with O_DIRECT (else through the page cache)
};

struct WriteOptions {
  //! Write with O_DIRECT through an aligned staging buffer, bypassing the page
  //! cache (about twice the throughput of buffered writes on the disks
  //! measured; see bench_checkpoint). Filesystems without direct I/O (and any
  //! device that refuses a direct write) fall back to buffered writes by
  //! themselves. CAIRN_DIRECT_IO=0 in the environment turns it off everywhere.
  bool direct_io = true;
  //! Alignment of direct writes' lengths and offsets. 4096 suits every common
  //! device; the tests lower it to make a device refuse and exercise the fallback.
  size_t direct_io_block = 4096;
};

/// Writes `root` (a dict) to `path` atomically. Tensors may live on any device
/// (non-CPU ones are copied to CPU one at a time). Throws CheckpointWriteError.
WriteStats write_checkpoint(const std::string& path, const Value& root, const WriteOptions& options = {});

struct ReadOptions {
  //! Require the cairn checksum record (true for checkpoints; false lets cairn
  //! read plain `torch.save` files, e.g. pretrained weights).
  bool require_checksum = true;
  //! Read and verify `data.pkl` only: every value but the tensor data, with
  //! tensors as meta tensors (shape and dtype, no memory). Cheap for any file
  //! size; used to order checkpoints by the position they hold.
  bool header_only = false;
  //! Read large records (1 MiB and up) with O_DIRECT into huge-page memory
  //! (buffered where the filesystem has no direct I/O, or CAIRN_DIRECT_IO=0).
  bool direct_io = true;
};

/// Reads and verifies a checkpoint. Throws CheckpointError with the path and
/// the reason (truncated, checksum mismatch of a record, not a zip, ...).
Value read_checkpoint(const std::string& path, const ReadOptions& options = {});

/// Replaces `target` with a hard link to `source` atomically (link to a temp
/// name, rename, fsync the directory). Falls back to a copy where links fail.
void atomic_link(const std::string& source, const std::string& target);

/// fsyncs a directory so that renames in it are durable.
void fsync_directory(const std::string& dir);

namespace pickle {
/// Serialises a Value to a protocol-2 pickle; tensors are emitted as
/// persistent storages whose keys are their index in `tensors_out`.
std::string dumps(const Value& v, std::vector<at::Tensor>* tensors_out);
}  // namespace pickle

//! Whether a temp file name written by cairn (`<name>.<pid>-<n>.tmp`) belongs
//! to a process that is gone (or to this process, when `include_self`). Names
//! without a pid are treated as stale.
bool temp_file_is_stale(const std::string& filename, bool include_self);

//! A unique temp name beside `target`: `<target>.<pid>-<counter>.tmp`.
std::string unique_temp_name(const std::string& target);

}  // namespace cairn
