#include "file_io.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <new>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels answer EINVAL and pages fault in as used
#endif

namespace cairn {
namespace fileio {

namespace {
constexpr size_t kHugePage = 2u << 20;
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
}  // namespace

// ---------------------------------------------------------------------------
HostMemory::HostMemory(size_t size) {
  if (size == 0) return;
  // Over-map by one huge page and trim, so that the data starts on a 2 MiB
  // boundary and the kernel can back it with huge pages from the first byte.
  const size_t want = round_up(size, 4096);
  const size_t mapped = want + kHugePage;
  void* base = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t b = reinterpret_cast<uintptr_t>(base);
  const uintptr_t aligned = (b + kHugePage - 1) / kHugePage * kHugePage;
  const size_t head = aligned - b;
  const size_t tail = mapped - head - want;
  if (head > 0) ::munmap(base, head);
  if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + want), tail);
  base_ = reinterpret_cast<void*>(aligned);
  mapped_ = want;
  data_ = static_cast<char*>(base_);
  size_ = size;
  ::madvise(base_, mapped_, MADV_HUGEPAGE);  // advice only: ignored where THP is off
  populated_ = ::madvise(base_, mapped_, MADV_POPULATE_WRITE) == 0;
}

HostMemory::~HostMemory() { reset(); }

HostMemory::HostMemory(HostMemory&& other) noexcept { *this = std::move(other); }

HostMemory& HostMemory::operator=(HostMemory&& other) noexcept {
  if (this != &other) {
    reset();
    std::swap(base_, other.base_);
    std::swap(mapped_, other.mapped_);
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(populated_, other.populated_);
  }
  return *this;
}

void HostMemory::reset() {
  if (base_) ::munmap(base_, mapped_);
  base_ = nullptr;
  mapped_ = 0;
  data_ = nullptr;
  size_ = 0;
  populated_ = false;
}

// ---------------------------------------------------------------------------
bool direct_io_enabled() {
  const char* v = std::getenv("CAIRN_DIRECT_IO");
  return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0 || std::strcmp(v, "false") == 0));
}

int open_for_write(const std::string& path, bool direct, bool* is_direct) {
  constexpr int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
  *is_direct = false;
  if (direct) {
    const int fd = ::open(path.c_str(), flags | O_DIRECT, 0644);
    if (fd >= 0) {
      *is_direct = true;
      return fd;
    }
    if (errno != EINVAL) return -1;  // EINVAL: this filesystem has no direct I/O
  }
  return ::open(path.c_str(), flags, 0644);
}

// ---------------------------------------------------------------------------
FileSink::FileSink(int fd, bool direct, size_t block) : fd_(fd), direct_(direct), block_(block) {
  if (direct_) {
    try {
      stage_ = HostMemory(kStage);
    } catch (const std::bad_alloc&) {
      to_buffered();
    }
  }
  if (!direct_) buf_.reserve(kBuffered);
}

bool FileSink::to_buffered() {
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags < 0 || ::fcntl(fd_, F_SETFL, flags & ~O_DIRECT) != 0) {
    error_ = errno;
    return false;
  }
  direct_ = false;
  return true;
}

void FileSink::write(const void* data, size_t n) {
  if (error_) return;
  const char* p = static_cast<const char*>(data);
  total_ += n;
  if (direct_) {
    while (n > 0 && !error_) {
      const size_t take = std::min(n, kStage - used_);
      std::memcpy(stage_.data() + used_, p, take);
      used_ += take;
      p += take;
      n -= take;
      if (used_ == kStage) flush_stage(kStage);
    }
    return;
  }
  if (n >= kBuffered) {
    if (!buf_.empty()) raw(buf_.data(), buf_.size());
    buf_.clear();
    raw(p, n);
  } else {
    if (buf_.size() + n > kBuffered) {
      raw(buf_.data(), buf_.size());
      buf_.clear();
    }
    buf_.insert(buf_.end(), p, p + n);
  }
}

void FileSink::flush_stage(size_t length) {
  // `length` is the staged bytes rounded up to whole blocks (zero padding).
  const char* p = stage_.data();
  size_t left = length;
  while (left > 0 && !error_) {
    if (!direct_) {  // fell back below: the rest, without the padding, through the page cache
      const size_t done = length - left;
      if (done < used_) raw(p, used_ - done);
      break;
    }
    const ssize_t w = ::write(fd_, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && to_buffered()) continue;  // the device wants another alignment
      error_ = errno;
      return;
    }
    p += w;
    left -= static_cast<size_t>(w);
    written_ += static_cast<uint64_t>(w);
  }
  used_ = 0;
}

void FileSink::finish() {
  if (error_) return;
  if (direct_) {
    if (used_ > 0) {
      const size_t padded = round_up(used_, block_);
      std::memset(stage_.data() + used_, 0, padded - used_);
      flush_stage(padded);
    }
  } else {
    if (!buf_.empty()) raw(buf_.data(), buf_.size());
    buf_.clear();
  }
  // The zero padding of the last direct block is not part of the file.
  if (!error_ && written_ > total_ && ::ftruncate(fd_, static_cast<off_t>(total_)) != 0) error_ = errno;
}

void FileSink::raw(const char* p, size_t n) {
  while (n > 0 && !error_) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      error_ = errno;
      return;
    }
    p += w;
    n -= static_cast<size_t>(w);
    written_ += static_cast<uint64_t>(w);
  }
#ifdef SYNC_FILE_RANGE_WRITE
  if (written_ - flushed_ >= kWriteback) {
    ::sync_file_range(fd_, static_cast<off64_t>(flushed_), static_cast<off64_t>(written_ - flushed_),
                      SYNC_FILE_RANGE_WRITE);  // best effort: an error here only loses the overlap
    flushed_ = written_;
  }
#endif
}

// ---------------------------------------------------------------------------
DirectReader::DirectReader(std::string path, int fd, bool direct, size_t block)
    : path_(std::move(path)), fd_(fd), want_direct_(direct), block_(block) {}

DirectReader::~DirectReader() {
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

std::string DirectReader::buffered(char* out, size_t n, uint64_t offset) const {
  while (n > 0) {
    const size_t chunk = std::min<size_t>(n, size_t(16) << 20);
    const ssize_t r = ::pread(fd_, out, chunk, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return std::string("read error (") + std::strerror(errno) + ")";
    }
    if (r == 0) return "the file ended early (truncated while being read?)";
    out += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return "";
}

std::string DirectReader::read(uint64_t offset, size_t length, HostMemory* out, size_t* start) {
  if (want_direct_ && !tried_) {
    tried_ = true;
    direct_fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  }
  if (direct_fd_ < 0) {
    *out = HostMemory(length);
    *start = 0;
    return buffered(out->data(), length, offset);
  }
  // Whole blocks around the range; the block after the file's end reads short.
  const uint64_t first = offset / block_ * block_;
  const uint64_t end = offset + length;
  const size_t span = round_up(static_cast<size_t>(end - first), block_);
  *out = HostMemory(span);
  *start = static_cast<size_t>(offset - first);
  size_t got = 0;
  const size_t need = static_cast<size_t>(end - first);
  while (got < need) {
    const size_t chunk = std::min<size_t>(span - got, size_t(16) << 20);
    const ssize_t r = ::pread(direct_fd_, out->data() + got, chunk, static_cast<off_t>(first + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0 || (static_cast<size_t>(r) % block_ != 0 && got + static_cast<size_t>(r) < need)) {
      // Refused (EINVAL: an alignment this device does not accept) or a short
      // read inside the range: the rest through the page cache, which also
      // tells a truncated file from a refusal.
      if (r > 0) got += static_cast<size_t>(r);
      if (got < *start) {  // nothing of the range yet: read it from its own start
        return buffered(out->data() + *start, length, offset);
      }
      return buffered(out->data() + got, need - got, first + got);
    }
    got += static_cast<size_t>(r);
  }
  return "";
}

}  // namespace fileio
}  // namespace cairn
