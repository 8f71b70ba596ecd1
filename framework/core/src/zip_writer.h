// ZipWriter: the zip container of Python's `torch.save`, written by cairn.
//
// PyTorch's own PyTorchStreamWriter computes each record's CRC-32 with
// miniz's byte-wise routine on the writing thread before a byte reaches the
// disk; that serial pass was half the cost of saving a large checkpoint. This
// writer emits the same layout — stored (uncompressed) entries named
// `archive/<record>`, each record's data aligned to 64 bytes through an "FB"
// padding extra field, zip64 fields where sizes or offsets pass 4 GiB — and
// lets the caller supply CRCs computed elsewhere (ISA-L's CRC-32, on a
// helper thread, ahead of the writes). Readers (PyTorch's PyTorchStreamReader,
// Python's zipfile, torch.load) see an ordinary zip.
//
// Private to the checkpoint writer (not installed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace cairn {
namespace zip {

//! Byte sink; returns false after the first failure (the writer then stops).
using Sink = std::function<bool(const void* data, size_t size)>;

//! Data of every record starts at a multiple of this (as PyTorch's writer).
constexpr uint64_t kAlignment = 64;

class ZipWriter {
 public:
  //! `archive` is the folder every record lives in ("archive", as torch.save).
  //! `force_zip64` writes zip64 fields for every record (tests use it to cover
  //! the >4 GiB layout with small files).
  ZipWriter(Sink sink, std::string archive = "archive", bool force_zip64 = false);

  //! Appends one stored record whose CRC-32 (zlib's) is already known.
  bool add(const std::string& name, const void* data, size_t size, uint32_t crc);
  //! Appends one small record, computing its CRC here.
  bool add(const std::string& name, const std::string& bytes);
  //! Writes the central directory and the end records.
  bool finish();
  uint64_t bytes_written() const { return offset_; }

 private:
  struct Entry {
    std::string name;  //!< full name, archive/ prefix included
    uint64_t offset;   //!< of the local header
    uint64_t size;
    uint32_t crc;
  };
  bool put(const std::string& bytes);
  bool needs_zip64(uint64_t size, uint64_t offset) const;

  Sink sink_;
  std::string archive_;
  bool force_zip64_;
  uint64_t offset_ = 0;
  bool ok_ = true;
  std::vector<Entry> entries_;
};

//! The zip CRC-32 (zlib's crc32) of `size` bytes, computed with ISA-L;
//! `crc` continues a previous piece's value (as zlib's first argument).
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

}  // namespace zip
}  // namespace cairn
