#include "zip_reader.h"

#include "zip_format.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace cairn {
namespace zip {

namespace {
using namespace format;
constexpr size_t kEndSize = 22;
constexpr size_t kCentralSize = 46;
constexpr size_t kLocalSize = 30;

uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t le64(const unsigned char* p) { return le32(p) | (static_cast<uint64_t>(le32(p + 4)) << 32); }

[[noreturn]] void bad(const std::string& why) { throw ZipError(why); }

//! a + b <= limit, without overflow.
bool fits(uint64_t a, uint64_t b, uint64_t limit) { return a <= limit && b <= limit - a; }
}  // namespace

ZipReader::ZipReader(const std::string& path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) bad(std::string("cannot open (") + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    bad("not a regular file");
  }
  file_size_ = static_cast<uint64_t>(st.st_size);
  try {
    if (file_size_ < kEndSize) bad("too short to be a zip archive");

    // End of central directory: the last 22 bytes plus a comment of up to 64 KiB.
    const uint64_t tail_size = std::min<uint64_t>(file_size_, kEndSize + kMax16);
    std::vector<unsigned char> tail(tail_size);
    pread_all(tail.data(), tail.size(), file_size_ - tail_size);
    size_t end = SIZE_MAX;
    for (size_t i = tail.size() - kEndSize + 1; i-- > 0;) {
      if (le32(&tail[i]) == kEnd && i + kEndSize + le16(&tail[i + 20]) == tail.size()) {
        end = i;
        break;
      }
    }
    if (end == SIZE_MAX) bad("no end-of-directory record (truncated, or not a zip archive)");
    const unsigned char* e = &tail[end];
    const uint64_t end_offset = file_size_ - tail_size + end;
    if (le16(e + 4) != 0 || le16(e + 6) != 0) bad("multi-disk archives are not supported");
    uint64_t count = le16(e + 10);
    uint64_t dir_size = le32(e + 12);
    uint64_t dir_offset = le32(e + 16);
    uint64_t dir_end = end_offset;  // where the central directory must stop
    if (count == kMax16 || dir_size == kMax32 || dir_offset == kMax32) {
      if (end_offset < 20) bad("zip64 locator missing");
      unsigned char loc[20];
      pread_all(loc, sizeof loc, end_offset - 20);
      if (le32(loc) != kEnd64Locator) bad("zip64 locator missing");
      const uint64_t end64 = le64(loc + 8);
      if (!fits(end64, 56, end_offset - 20)) bad("zip64 end record outside the file");
      unsigned char z[56];
      pread_all(z, sizeof z, end64);
      if (le32(z) != kEnd64) bad("bad zip64 end record");
      count = le64(z + 32);
      dir_size = le64(z + 40);
      dir_offset = le64(z + 48);
      dir_end = end64;
    }
    if (!fits(dir_offset, dir_size, dir_end)) bad("central directory outside the file");
    if (count > kMaxEntries) bad("too many records (" + std::to_string(count) + ")");
    if (count > dir_size / kCentralSize) bad("record count larger than the central directory can hold");

    std::vector<unsigned char> dir(static_cast<size_t>(dir_size));
    pread_all(dir.data(), dir.size(), dir_offset);
    entries_.reserve(static_cast<size_t>(count));
    std::string folder;
    size_t p = 0;
    for (uint64_t k = 0; k < count; ++k) {
      if (dir.size() - p < kCentralSize) bad("central directory truncated");
      const unsigned char* h = &dir[p];
      if (le32(h) != kCentralHeader) bad("bad central directory entry");
      const uint16_t flags = le16(h + 8);
      const uint16_t method = le16(h + 10);
      const uint32_t crc = le32(h + 16);
      uint64_t csize = le32(h + 20);
      uint64_t usize = le32(h + 24);
      const size_t name_len = le16(h + 28);
      const size_t extra_len = le16(h + 30);
      const size_t comment_len = le16(h + 32);
      uint64_t local = le32(h + 42);
      if (dir.size() - p - kCentralSize < name_len + extra_len + comment_len) bad("central directory truncated");
      std::string full(reinterpret_cast<const char*>(h + kCentralSize), name_len);
      // zip64 extra field: the 64-bit values of the fields set to 0xffffffff, in order.
      const unsigned char* x = h + kCentralSize + name_len;
      const unsigned char* x_end = x + extra_len;
      while (x_end - x >= 4) {
        const uint16_t id = le16(x);
        const uint16_t len = le16(x + 2);
        if (x_end - x - 4 < len) bad("malformed extra field in " + full.substr(0, 100));
        if (id == kZip64Extra) {
          const unsigned char* v = x + 4;
          const unsigned char* v_end = v + len;
          auto take = [&](uint64_t& field) {
            if (field != kMax32) return;
            if (v_end - v < 8) bad("short zip64 field in " + full.substr(0, 100));
            field = le64(v);
            v += 8;
          };
          take(usize);
          take(csize);
          take(local);
        }
        x += 4 + len;
      }
      p += kCentralSize + name_len + extra_len + comment_len;

      if (name_len == 0 || name_len > kMaxNameLength) bad("record name of length " + std::to_string(name_len));
      if (full.find('\0') != std::string::npos) bad("record name with a NUL byte");
      if (flags & 0x0001) bad("encrypted record " + full.substr(0, 100));
      if (method != 0) bad("compressed record " + full.substr(0, 100) + " (torch.save stores records uncompressed)");
      if (csize != usize) bad("record " + full.substr(0, 100) + " has different stored and real sizes");
      const size_t slash = full.find('/');
      if (slash == std::string::npos || slash == 0 || slash + 1 == full.size()) {
        bad("record " + full.substr(0, 100) + " is not inside the archive folder");
      }
      if (folder.empty()) folder = full.substr(0, slash + 1);
      if (full.compare(0, folder.size(), folder) != 0) {
        bad("record " + full.substr(0, 100) + " is outside the archive folder " + folder);
      }
      // The local header repeats the name and has its own extra field.
      if (!fits(local, kLocalSize, dir_offset)) bad("record " + full.substr(0, 100) + " starts outside the file");
      unsigned char lh[kLocalSize];
      pread_all(lh, sizeof lh, local);
      if (le32(lh) != kLocalHeader) bad("bad local header for " + full.substr(0, 100));
      // The local header must describe the same record: its name, and its
      // sizes where it states them (0 with a data descriptor, 0xffffffff for
      // zip64). Without this, many directory names could alias one record.
      const size_t local_name_len = le16(lh + 26);
      if (local_name_len != name_len) bad("record " + full.substr(0, 100) + ": the local header names another record");
      if (!fits(local + kLocalSize, local_name_len, dir_offset)) bad("record " + full.substr(0, 100) + " starts outside the file");
      std::string local_name(local_name_len, '\0');
      pread_all(local_name.data(), local_name.size(), local + kLocalSize);
      if (local_name != full) bad("record " + full.substr(0, 100) + ": the local header names another record");
      const uint64_t data = local + kLocalSize + local_name_len + le16(lh + 28);
      if (!fits(data, usize, dir_offset)) bad("record " + full.substr(0, 100) + " runs past the end of the data");
      for (const uint32_t stated : {le32(lh + 18), le32(lh + 22)}) {
        if (stated != 0 && stated != kMax32 && stated != usize) {
          bad("record " + full.substr(0, 100) + ": the local header and the directory disagree on its size");
        }
      }

      Entry entry;
      entry.name = full.substr(folder.size());
      entry.data = data;
      entry.size = usize;
      entry.crc = crc;
      entry.local = local;
      if (!index_.emplace(entry.name, entries_.size()).second) bad("duplicate record " + full.substr(0, 100));
      entries_.push_back(std::move(entry));
    }
    // Records may not overlap (local header through data): together they then
    // hold at most the file's own bytes, so a load's memory is bounded by the
    // file's size, however many names the directory lists.
    std::vector<const Entry*> order;
    order.reserve(entries_.size());
    for (const auto& en : entries_) order.push_back(&en);
    std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) { return a->local < b->local; });
    for (size_t i = 1; i < order.size(); ++i) {
      if (order[i]->local < order[i - 1]->data + order[i - 1]->size) {
        bad("records " + order[i - 1]->name.substr(0, 100) + " and " + order[i]->name.substr(0, 100) + " overlap");
      }
    }
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

ZipReader::~ZipReader() {
  if (fd_ >= 0) ::close(fd_);
}

const Entry* ZipReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

void ZipReader::pread_all(void* out, size_t n, uint64_t offset) const {
  char* p = static_cast<char*>(out);
  while (n > 0) {
    // Moderate reads. (A cold 1.2 GB load is dominated by first-touch page
    // faults of the fresh destination buffers on some VMs, not by the read
    // size: `dd bs=1G` was slow there for the same reason.)
    const size_t chunk = std::min<size_t>(n, size_t(4) << 20);
    const ssize_t r = ::pread(fd_, p, chunk, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      bad(std::string("read error (") + std::strerror(errno) + ")");
    }
    if (r == 0) bad("the file ended early (truncated while being read?)");
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

void ZipReader::read(const Entry& entry, void* out) const { pread_all(out, entry.size, entry.data); }

std::string ZipReader::read_string(const Entry& entry) const {
  std::string s(entry.size, '\0');
  read(entry, s.data());
  return s;
}

}  // namespace zip
}  // namespace cairn
