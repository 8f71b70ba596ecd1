// Checkpoint file I/O: the zip container (cairn's own zip writer and
// reader), checksums, atomic writes. The pickle codec of the Value tree is in
// pickle_codec.{h,cpp}.
#include "cairn/checkpoint_file.h"

#include "checksums.h"
#include "file_io.h"
#include "pickle_codec.h"
#include "zip_reader.h"
#include "zip_writer.h"

#include <torch/torch.h>
#define XXH_INLINE_ALL  // header-only: no library to link or carry
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <future>
#include <thread>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_map>
#include <unordered_set>

namespace cairn {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// Writing.
namespace checksums {
uint64_t xxh3(const void* data, size_t size) { return XXH3_64bits(data, size); }
std::string hex(uint64_t hash) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(hash));
  return buf;
}
}  // namespace checksums

namespace {
using checksums::hex;
constexpr const char* kChecksumRecord = checksums::kRecord;
constexpr const char* kChecksumHeader = checksums::kHeader;

std::string errno_text(int e) { return std::strerror(e); }
}  // namespace

void fsync_directory(const std::string& dir) {
  const std::string name = dir.empty() ? "." : dir;
  const int fd = ::open(name.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) {
    const int e = errno;
    throw CheckpointWriteError("cannot open the folder " + name + " to make its renames durable: " + errno_text(e), e);
  }
  int e = ::fsync(fd) != 0 ? errno : 0;
  // A filesystem that cannot fsync a folder (some network ones say EINVAL)
  // offers nothing more to wait for; any other error is the disk's.
  if (e == EINVAL || e == ENOTSUP || e == EOPNOTSUPP) e = 0;
  if (::close(fd) != 0 && e == 0) e = errno;
  if (e != 0) {
    throw CheckpointWriteError("fsync of the folder " + name +
                                   " failed: " + errno_text(e) + " (its new names may not survive a power loss)",
                               e);
  }
}

namespace {
//! One tensor record's bytes, and its hashes once known.
struct TensorRecord {
  at::Tensor data;         //!< contiguous CPU tensor (undefined for a device tensor not yet copied)
  at::Tensor source;       //!< the tensor as given
  const void* ptr = nullptr;
  size_t size = 0;
};

double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

WriteStats write_checkpoint(const std::string& path, const Value& root, const WriteOptions& options) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  WriteStats stats;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw CheckpointWriteError("cannot create directory " + dir.string() + ": " + ec.message());

  std::vector<at::Tensor> tensors;
  const std::string pkl = pickle::dumps(root, &tensors);
  std::vector<TensorRecord> records(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    TensorRecord& r = records[i];
    r.source = tensors[i];
    if (tensors[i].device().is_cpu()) {
      r.data = tensors[i].contiguous();
      r.ptr = r.data.data_ptr();
      r.size = static_cast<size_t>(r.data.numel()) * r.data.element_size();
    }
  }
  // What the hash threads read: fixed before they start, never written after
  // (the writing thread fills in device tensors' records as it copies them).
  struct HostRange {
    const void* ptr;
    size_t size;
    bool on_host;
  };
  std::vector<HostRange> host_ranges;
  host_ranges.reserve(records.size());
  for (const auto& r : records) host_ranges.push_back({r.ptr, r.size, r.source.device().is_cpu()});
  stats.pickle_seconds = since(t0);

  const std::string tmp = unique_temp_name(path);
  bool direct = false;
  const int fd = fileio::open_for_write(tmp, options.direct_io && fileio::direct_io_enabled(), &direct);
  if (fd < 0) {
    const int e = errno;
    throw CheckpointWriteError("cannot create " + tmp + ": " + errno_text(e), e);
  }

  // Both hashes of every host record (the zip CRC-32 and cairn's XXH3-64) run
  // ahead of the writes on two helper threads (alternate records), each
  // record 1 MiB at a time: the second hash reads the piece from the cache, not from memory
  // (reading the tensors' memory, not hashing it, is the cost on some VMs).
  // The disk never waits for a hash except the first record's CRC. Device
  // tensors are hashed inline, once copied.
  std::vector<std::promise<uint32_t>> crc_promise(records.size());
  std::vector<std::promise<uint64_t>> xxh_promise(records.size());
  std::vector<std::future<uint32_t>> crc_future;
  std::vector<std::future<uint64_t>> xxh_future;
  for (size_t i = 0; i < records.size(); ++i) {
    crc_future.push_back(crc_promise[i].get_future());
    xxh_future.push_back(xxh_promise[i].get_future());
  }
  std::atomic<bool> cancel{false};
  auto hash_records = [&](size_t first, size_t stride) {
    XXH3_state_t state;
    for (size_t i = first; i < host_ranges.size(); i += stride) {
      const HostRange& h = host_ranges[i];
      uint32_t crc = 0;
      uint64_t xxh = 0;
      if (h.on_host && !cancel) {
        XXH3_64bits_reset(&state);
        const char* p = static_cast<const char*>(h.ptr);
        for (size_t done = 0; done < h.size;) {
          const size_t n = std::min<size_t>(h.size - done, 1u << 20);
          crc = zip::crc32(p + done, n, crc);
          XXH3_64bits_update(&state, p + done, n);
          done += n;
        }
        xxh = XXH3_64bits_digest(&state);
      }
      crc_promise[i].set_value(crc);
      xxh_promise[i].set_value(xxh);
    }
  };
  std::thread hash_even(hash_records, 0, 2);
  std::thread hash_odd(hash_records, 1, 2);
  struct Join {  // the helpers read the tensors: they finish before anything is freed
    std::thread& a;
    std::thread& b;
    std::atomic<bool>& cancel;
    ~Join() {
      cancel = true;
      a.join();
      b.join();
    }
  } join{hash_even, hash_odd, cancel};

  fileio::FileSink sink(fd, direct, options.direct_io_block);
  double hash_wait = 0;
  zip::ZipWriter writer([&sink](const void* data, size_t n) {
    sink.write(data, n);
    return sink.error() == 0;
  });
  checksums::Builder sums;
  const auto tw = Clock::now();
  writer.add("data.pkl", pkl);
  sums.add("data.pkl", pkl.data(), pkl.size());
  static const std::string kByteorder = "little";
  writer.add("byteorder", kByteorder);
  // Each record waits for its CRC-32 only (the local header carries it); the
  // XXH3 hashes are needed by the checksum record at the end.
  std::vector<uint64_t> hashes(records.size(), 0);
  for (size_t i = 0; i < records.size() && sink.error() == 0; ++i) {
    TensorRecord& r = records[i];
    const std::string name = "data/" + std::to_string(i);
    uint32_t crc;
    if (host_ranges[i].on_host) {
      const auto w0 = Clock::now();
      crc = crc_future[i].get();
      hash_wait += since(w0);
    } else {  // a device tensor: copy it now (one at a time), hash it here
      r.data = r.source.to(at::kCPU).contiguous();
      r.ptr = r.data.data_ptr();
      r.size = static_cast<size_t>(r.data.numel()) * r.data.element_size();
      const void* p = r.ptr;
      const size_t n = r.size;
      auto h = std::async(std::launch::async, [p, n] { return XXH3_64bits(p, n); });
      crc = zip::crc32(p, n);
      hashes[i] = h.get();
    }
    writer.add(name, r.ptr, r.size, crc);
    if (!r.source.device().is_cpu()) r.data = at::Tensor();  // free the host copy
  }
  if (sink.error() == 0) {
    const auto w0 = Clock::now();
    for (size_t i = 0; i < records.size(); ++i) {
      if (host_ranges[i].on_host) hashes[i] = xxh_future[i].get();
      sums.add("data/" + std::to_string(i), records[i].size, hashes[i]);
    }
    hash_wait += since(w0);
  }
  writer.add(kChecksumRecord, sums.text());
  writer.add("version", std::string("3\n"));
  writer.finish();
  sink.finish();
  stats.direct_io = sink.direct();
  stats.write_seconds = since(tw) - hash_wait;
  stats.hash_wait_seconds = hash_wait;
  int err = sink.error();
  const auto tf = Clock::now();
  if (!err && ::fsync(fd) != 0) err = errno;
  stats.fsync_seconds = since(tf);
  const auto tr = Clock::now();
  if (::close(fd) != 0 && !err) err = errno;
  if (err) {
    ::unlink(tmp.c_str());
    throw CheckpointWriteError("writing " + path + " failed: " + errno_text(err) + " (previous file, if any, is intact)",
                               err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw CheckpointWriteError("renaming " + tmp + " to " + path + " failed: " + errno_text(e), e);
  }
  fsync_directory(dir.string());
  stats.rename_seconds = since(tr);
  stats.bytes = sink.total();
  stats.seconds = since(t0);
  return stats;
}

void atomic_link(const std::string& source, const std::string& target) {
  const std::string tmp = unique_temp_name(target);
  if (::link(source.c_str(), tmp.c_str()) != 0) {
    // A copy serves where the filesystem has no hard links; any other error
    // (EIO, ENOSPC, ...) is the disk's, and said.
    const int e = errno;
    if (e != EPERM && e != EXDEV && e != EMLINK && e != EOPNOTSUPP && e != ENOTSUP && e != ENOSYS) {
      ::unlink(tmp.c_str());
      throw CheckpointWriteError("cannot link " + source + " to " + tmp + ": " + errno_text(e), e);
    }
    std::error_code ec;
    fs::copy_file(source, tmp, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      ::unlink(tmp.c_str());
      throw CheckpointWriteError("cannot link or copy " + source + " to " + tmp + ": " + ec.message(), ec.value());
    }
    const int fd = ::open(tmp.c_str(), O_RDONLY);
    int synced = fd < 0 ? errno : ::fsync(fd) != 0 ? errno : 0;
    if (fd >= 0 && ::close(fd) != 0 && synced == 0) synced = errno;
    if (synced != 0) {
      ::unlink(tmp.c_str());
      throw CheckpointWriteError("fsync of the copy " + tmp + " failed: " + errno_text(synced), synced);
    }
  }
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw CheckpointWriteError("renaming " + tmp + " to " + target + " failed: " + errno_text(e), e);
  }
  // rename(2) does nothing when both names already link the same file (a
  // repeated rotation): the temp name would stay behind. Drop it (ENOENT when
  // the rename did move it).
  ::unlink(tmp.c_str());
  const fs::path t(target);
  fsync_directory(t.has_parent_path() ? t.parent_path().string() : ".");
}

// ---------------------------------------------------------------------------
// Reading.
namespace {
//! Expected size and hash of each record, from `cairn/checksums`. Parsed
//! strictly: one line per record of the archive, no more.
std::unordered_map<std::string, std::pair<uint64_t, std::string>> parse_checksums(const std::string& text,
                                                                                   size_t max_lines) {
  std::unordered_map<std::string, std::pair<uint64_t, std::string>> out;
  std::istringstream is(text);
  std::string header;
  std::getline(is, header);
  if (header != kChecksumHeader) {
    throw std::runtime_error("unknown checksum format '" + header.substr(0, 60) + "'");
  }
  std::string line;
  while (std::getline(is, line)) {
    if (line.empty()) continue;
    if (out.size() >= max_lines) throw std::runtime_error("more checksums than records");
    std::istringstream ls(line);
    std::string name, hash;
    uint64_t size = 0;
    if (!(ls >> name >> size >> hash) || hash.size() != 16) {
      throw std::runtime_error("malformed checksum line '" + line.substr(0, 80) + "'");
    }
    if (!out.emplace(name, std::make_pair(size, hash)).second) {
      throw std::runtime_error("record " + name.substr(0, 80) + " listed twice");
    }
  }
  return out;
}
}  // namespace

namespace {
constexpr uint64_t kLargeRecord = 1u << 20;
}  // namespace

Value read_checkpoint(const std::string& path, const ReadOptions& options) {
  auto corrupt = [&](const std::string& why) {
    return CheckpointError("checkpoint " + path + " is not usable: " + why);
  };
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw corrupt("cannot open (" + errno_text(errno) + ")");
  // (A FIFO or device would block or stream forever.)
  if (!S_ISREG(st.st_mode)) throw corrupt("not a regular file");
  if (st.st_size == 0) throw corrupt("the file is empty");

  std::unique_ptr<zip::ZipReader> reader;
  try {
    reader = std::make_unique<zip::ZipReader>(path);
  } catch (const zip::ZipError& e) {
    throw corrupt(std::string("not a readable zip archive (truncated or not a checkpoint): ") + e.what());
  }

  // Expected sizes and hashes, if the file carries cairn's checksum record.
  // Every size is checked against the archive before anything is allocated.
  std::unordered_map<std::string, std::pair<uint64_t, std::string>> expected;
  const zip::Entry* sums = reader->find(kChecksumRecord);
  const bool has_checksums = sums != nullptr;
  if (has_checksums) {
    if (sums->size > (16u << 20)) throw corrupt("checksum record of " + std::to_string(sums->size) + " bytes");
    try {
      expected = parse_checksums(reader->read_string(*sums), reader->entries().size());
    } catch (const std::exception& e) {
      throw corrupt(std::string("cannot read checksums: ") + e.what());
    }
    for (const auto& kv : expected) {
      const zip::Entry* e = reader->find(kv.first);
      if (!e) throw corrupt("record " + kv.first.substr(0, 80) + " is listed in the checksums but missing");
      if (e->size != kv.second.first) throw corrupt("record " + kv.first.substr(0, 80) + " has the wrong size");
    }
  } else if (options.require_checksum) {
    throw corrupt("no cairn checksum record (not a cairn checkpoint?)");
  }

  // Records are read into buffers from the allocator; large ones are hashed
  // (XXH3 against cairn's list, or the zip CRC-32 for plain torch.save files)
  // on helper threads while the next record is read. Everything is checked
  // before the content is returned.
  struct PendingCheck {
    std::string name;
    std::future<bool> ok;
    at::Tensor keep;  //!< the buffer being hashed, alive until the check is done (even if loading fails first)
  };
  std::vector<PendingCheck> pending;
  struct Drain {  // checks read buffers that must outlive them, on every path
    std::vector<PendingCheck>& v;
    ~Drain() {
      for (auto& p : v) {
        if (p.ok.valid()) p.ok.wait();
      }
    }
  } drain{pending};
  auto check = [&](const zip::Entry& e, const void* ptr, const at::Tensor& keep) {
    const size_t n = static_cast<size_t>(e.size);
    std::function<bool()> verify;
    if (has_checksums) {
      auto listed = expected.find(e.name);
      if (listed == expected.end()) throw corrupt("record " + e.name.substr(0, 80) + " is not in the checksum list");
      const std::string want = listed->second.second;
      verify = [ptr, n, want] { return hex(XXH3_64bits(ptr, n)) == want; };
    } else {
      const uint32_t want = e.crc;
      verify = [ptr, n, want] { return zip::crc32(ptr, n) == want; };
    }
    if (n >= (8u << 20)) {
      pending.push_back({e.name, std::async(std::launch::async, verify), keep});
    } else if (!verify()) {
      throw corrupt("checksum mismatch in record " + e.name);
    }
  };
  auto check_pending = [&] {
    for (auto& p : pending) {
      if (!p.ok.get()) throw corrupt("checksum mismatch in record " + p.name);
    }
    pending.clear();
  };
  auto entry = [&](const std::string& name) -> const zip::Entry& {
    const zip::Entry* e = reader->find(name);
    if (!e) throw corrupt("record " + name.substr(0, 80) + " is missing");
    return *e;
  };
  // Large records go to huge-page memory of their own, read directly from the
  // disk where possible (file_io.h); freshly allocated 4 KiB pages cost one
  // page fault each, which dominated large loads on some VMs.
  fileio::DirectReader direct(path, reader->fd(), options.direct_io && fileio::direct_io_enabled());
  auto read_bytes = [&](const zip::Entry& e) {
    at::Tensor buf;
    if (e.size >= kLargeRecord) {
      auto memory = std::make_shared<fileio::HostMemory>();
      size_t start = 0;
      const std::string error = direct.read(e.data, static_cast<size_t>(e.size), memory.get(), &start);
      if (!error.empty()) throw corrupt("record " + e.name + " cannot be read (" + error + ")");
      buf = torch::from_blob(memory->data() + start, {static_cast<int64_t>(e.size)},
                             [memory](void*) mutable { memory.reset(); }, at::TensorOptions().dtype(at::kByte));
    } else {
      buf = at::empty({static_cast<int64_t>(e.size)}, at::TensorOptions().dtype(at::kByte));
      try {
        reader->read(e, buf.data_ptr());
      } catch (const zip::ZipError& err) {
        throw corrupt("record " + e.name + " cannot be read (" + err.what() + ")");
      }
    }
    check(e, buf.data_ptr(), buf);
    return buf;
  };

  const zip::Entry& pkl_entry = entry("data.pkl");
  std::string pkl;
  try {
    pkl = reader->read_string(pkl_entry);
  } catch (const zip::ZipError& err) {
    throw corrupt(std::string("record data.pkl cannot be read (") + err.what() + ")");
  }
  check(pkl_entry, pkl.data(), at::Tensor());  // (pkl outlives every check)
  std::unordered_set<std::string> loaded;
  pickle::StorageLoader loader = [&](const std::string& key, c10::ScalarType t, int64_t numel) {
    const zip::Entry& e = entry("data/" + key);
    const uint64_t elem = c10::elementSize(t);
    if (static_cast<uint64_t>(numel) > e.size / elem) {
      throw corrupt("storage " + key + " holds " + std::to_string(e.size) + " bytes, fewer than its " +
                    std::to_string(numel) + " elements of " + std::to_string(elem) + " bytes");
    }
    if (options.header_only) {
      // Shape and dtype only: a storage with no memory behind it.
      return at::empty({numel}, at::TensorOptions().dtype(t).device(at::kMeta));
    }
    loaded.insert(e.name);
    at::Tensor bytes = read_bytes(e);
    void* ptr = bytes.data_ptr();
    return torch::from_blob(ptr, {numel}, [bytes](void*) mutable { bytes.reset(); }, torch::TensorOptions().dtype(t));
  };
  Value root;
  try {
    root = pickle::loads(pkl.data(), pkl.size(), loader);
  } catch (const CheckpointError& e) {
    const std::string what = e.what();
    if (what.rfind("checkpoint ", 0) == 0) throw;
    throw corrupt(what);
  } catch (const std::bad_alloc&) {
    throw corrupt("out of memory while reading (the file claims more than it holds)");
  } catch (const std::exception& e) {
    throw corrupt(std::string("malformed content: ") + std::string(e.what()).substr(0, 300));
  }
  check_pending();
  if (options.header_only) return root;
  // Records listed but never referenced: verify them too. (Unlisted small
  // records such as byteorder and version are never read.)
  if (has_checksums) {
    for (const auto& kv : expected) {
      if (kv.first == "data.pkl" || loaded.count(kv.first)) continue;
      read_bytes(entry(kv.first));
    }
    check_pending();
  }
  return root;
}

}  // namespace cairn

namespace cairn {
bool CheckpointWriteError::no_space() const {
  return error_number_ == ENOSPC || error_number_ == EDQUOT || error_number_ == EFBIG;
}
bool temp_file_is_stale(const std::string& filename, bool include_self) {
  // <name>.<pid>-<n>.tmp
  const std::string base = fs::path(filename).filename().string();
  if (base.size() < 5 || base.compare(base.size() - 4, 4, ".tmp") != 0) return false;
  const std::string stem = base.substr(0, base.size() - 4);
  const auto dot = stem.rfind('.');
  const auto dash = stem.rfind('-');
  if (dot == std::string::npos || dash == std::string::npos || dash < dot) return true;
  const std::string pid_text = stem.substr(dot + 1, dash - dot - 1);
  if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) return true;
  const long pid = std::strtol(pid_text.c_str(), nullptr, 10);
  if (pid <= 0) return true;
  if (pid == ::getpid()) return include_self;
  if (::kill(static_cast<pid_t>(pid), 0) == 0) return false;
  return errno == ESRCH;
}

std::string unique_temp_name(const std::string& target) {
  static std::atomic<uint64_t> counter{0};
  return target + "." + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".tmp";
}

}  // namespace cairn
