// ZipReader: reads the zip container of Python's `torch.save` and of cairn's
// own writer, treating every byte of the file as untrusted.
//
// Only what those writers produce is accepted: stored (uncompressed),
// unencrypted entries, all inside one top-level folder (`archive/`, or the
// file's stem for older torch versions), zip64 fields where needed. Every
// name, size and offset is checked against the file before anything is
// allocated or read, so a hostile file can neither ask for more memory than
// its own size nor make a read leave the file: each local header must repeat
// its directory entry's name (and size, where it states one), and records may
// not overlap, so many directory names cannot alias one record.
//
// Replaces PyTorch's PyTorchStreamReader, which allocates whatever size the
// central directory claims and checks each record with miniz's byte-wise
// CRC-32 (most of the time of a load).
//
// Private to the checkpoint reader (not installed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace cairn {
namespace zip {

//! The file is not a zip this reader accepts; what() says why.
class ZipError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Entry {
  std::string name;   //!< without the top-level folder, e.g. "data.pkl", "data/0"
  uint64_t data = 0;  //!< offset of the first data byte in the file
  uint64_t size = 0;
  uint32_t crc = 0;   //!< CRC-32 the directory claims
  uint64_t local = 0; //!< offset of its local header (records never overlap)
};

class ZipReader {
 public:
  //! Opens and indexes `path`. Throws ZipError.
  explicit ZipReader(const std::string& path);
  ~ZipReader();
  ZipReader(const ZipReader&) = delete;
  ZipReader& operator=(const ZipReader&) = delete;

  uint64_t file_size() const { return file_size_; }
  //! The open descriptor (for large reads done elsewhere; see file_io.h).
  int fd() const { return fd_; }
  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(const std::string& name) const;

  //! Reads the entry's bytes into `out` (entry.size bytes). Throws ZipError.
  void read(const Entry& entry, void* out) const;
  std::string read_string(const Entry& entry) const;

  //! Limits (exposed for the tests).
  static constexpr size_t kMaxEntries = 1u << 20;
  static constexpr size_t kMaxNameLength = 4096;

 private:
  void pread_all(void* out, size_t n, uint64_t offset) const;

  int fd_ = -1;
  uint64_t file_size_ = 0;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace zip
}  // namespace cairn
