// Checkpoint file I/O: pickle writer/reader for the Value tree, the zip
// container (PyTorch's own stream writer/reader), checksums, atomic writes.
#include "cairn/checkpoint_file.h"

#include "cairn/run_lock.h"
#include "zip_writer.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>
#define XXH_INLINE_ALL  // header-only: no library to link or carry
#include <xxhash.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <atomic>
#include <future>
#include <thread>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_map>

namespace cairn {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// Storage type names, as Python's torch.save writes them.
namespace {
struct StorageName {
  c10::ScalarType type;
  const char* name;
};
const StorageName kStorageNames[] = {
    {c10::kFloat, "FloatStorage"},   {c10::kDouble, "DoubleStorage"},
    {c10::kHalf, "HalfStorage"},     {c10::kBFloat16, "BFloat16Storage"},
    {c10::kLong, "LongStorage"},     {c10::kInt, "IntStorage"},
    {c10::kShort, "ShortStorage"},   {c10::kChar, "CharStorage"},
    {c10::kByte, "ByteStorage"},     {c10::kBool, "BoolStorage"},
    {c10::kComplexFloat, "ComplexFloatStorage"},
    {c10::kComplexDouble, "ComplexDoubleStorage"},
};

const char* storage_name(c10::ScalarType t) {
  for (const auto& s : kStorageNames) {
    if (s.type == t) return s.name;
  }
  throw CheckpointWriteError(std::string("cannot save tensors of dtype ") + c10::toString(t));
}

bool storage_type(const std::string& name, c10::ScalarType* out) {
  for (const auto& s : kStorageNames) {
    if (name == s.name) { *out = s.type; return true; }
  }
  if (name == "UntypedStorage") { *out = c10::kByte; return true; }
  return false;
}
}  // namespace

// ---------------------------------------------------------------------------
// Pickle writer (protocol 2; opcodes accepted by torch's weights-only loader).
namespace pickle {
namespace {
class Writer {
 public:
  explicit Writer(std::vector<at::Tensor>* tensors) : tensors_(tensors) {}

  std::string finish(const Value& v) {
    out_ += "\x80\x02";  // PROTO 2
    write(v);
    out_ += '.';  // STOP
    return std::move(out_);
  }

 private:
  void op(char c) { out_ += c; }
  void raw(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }

  void write_int(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      out_ += static_cast<char>(v);
    } else if (v >= 0 && v < 65536) {
      op('M');
      uint16_t u = static_cast<uint16_t>(v);
      raw(&u, 2);  // little endian host
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      int32_t i = static_cast<int32_t>(v);
      raw(&i, 4);
    } else {
      op('\x8a');  // LONG1: little-endian two's complement
      char bytes[8];
      std::memcpy(bytes, &v, 8);
      int n = 8;
      // Trim redundant sign bytes.
      while (n > 1) {
        const unsigned char top = static_cast<unsigned char>(bytes[n - 1]);
        const unsigned char next = static_cast<unsigned char>(bytes[n - 2]);
        if ((top == 0x00 && !(next & 0x80)) || (top == 0xff && (next & 0x80))) {
          --n;
        } else {
          break;
        }
      }
      out_ += static_cast<char>(n);
      raw(bytes, static_cast<size_t>(n));
    }
  }

  void write_float(double d) {
    op('G');  // BINFLOAT: big-endian IEEE 754
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    for (int i = 7; i >= 0; --i) out_ += static_cast<char>((bits >> (i * 8)) & 0xff);
  }

  void write_str(const std::string& s) {
    op('X');  // BINUNICODE
    uint32_t n = static_cast<uint32_t>(s.size());
    raw(&n, 4);
    out_ += s;
  }

  void write_global(const char* module, const char* name) {
    op('c');
    out_ += module;
    out_ += '\n';
    out_ += name;
    out_ += '\n';
  }

  void write_tensor(const at::Tensor& t) {
    const size_t key = tensors_->size();
    tensors_->push_back(t);
    write_global("torch._utils", "_rebuild_tensor_v2");
    op('(');  // MARK: args of _rebuild_tensor_v2
    // persistent id: ('storage', torch.XStorage, key, 'cpu', numel)
    op('(');
    write_str("storage");
    write_global("torch", storage_name(t.scalar_type()));
    write_str(std::to_string(key));
    write_str("cpu");
    write_int(t.numel());
    op('t');   // TUPLE
    op('Q');   // BINPERSID
    write_int(0);  // storage offset
    op('(');
    for (auto s : t.sizes()) write_int(s);
    op('t');
    op('(');
    // Contiguous strides: the storage is written contiguously.
    std::vector<int64_t> strides(t.dim());
    int64_t acc = 1;
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      strides[d] = acc;
      acc *= std::max<int64_t>(t.size(d), 1);
    }
    for (auto s : strides) write_int(s);
    op('t');
    op('\x89');  // requires_grad = False
    write_global("collections", "OrderedDict");
    op(')');  // EMPTY_TUPLE
    op('R');  // REDUCE -> OrderedDict()
    op('t');  // TUPLE of args
    op('R');  // REDUCE -> tensor
  }

  void write(const Value& v) {
    switch (v.kind()) {
      case Value::Kind::None: op('N'); break;
      case Value::Kind::Bool: op(v.to_bool() ? '\x88' : '\x89'); break;
      case Value::Kind::Int: write_int(v.to_int()); break;
      case Value::Kind::Double: write_float(v.to_double()); break;
      case Value::Kind::String: write_str(v.to_string()); break;
      case Value::Kind::Tensor:
        if (v.to_tensor().defined()) {
          write_tensor(v.to_tensor());
        } else {
          op('N');
        }
        break;
      case Value::Kind::List: {
        op(']');
        const auto& items = v.items();
        for (size_t start = 0; start < items.size(); start += 1000) {
          op('(');
          for (size_t i = start; i < std::min(items.size(), start + 1000); ++i) write(items[i]);
          op('e');  // APPENDS
        }
        break;
      }
      case Value::Kind::Dict: {
        op('}');
        const auto& keys = v.keys();
        const auto& vals = v.values();
        for (size_t start = 0; start < keys.size(); start += 1000) {
          op('(');
          for (size_t i = start; i < std::min(keys.size(), start + 1000); ++i) {
            write(keys[i]);
            write(vals[i]);
          }
          op('u');  // SETITEMS
        }
        break;
      }
    }
  }

  std::string out_;
  std::vector<at::Tensor>* tensors_;
};
}  // namespace

std::string dumps(const Value& v, std::vector<at::Tensor>* tensors_out) {
  Writer w(tensors_out);
  return w.finish(v);
}
}  // namespace pickle

// ---------------------------------------------------------------------------
// Pickle reader: the subset that torch.save and cairn emit.
namespace {
using StorageLoader = std::function<at::Tensor(const std::string& key, c10::ScalarType, int64_t numel)>;

class Unpickler {
 public:
  Unpickler(const char* data, size_t size, StorageLoader loader)
      : p_(data), end_(data + size), loader_(std::move(loader)) {}

  Value load() {
    while (true) {
      const unsigned char opcode = byte();
      switch (opcode) {
        case 0x80: byte(); break;                      // PROTO
        case 0x95: skip(8); break;                     // FRAME
        case '.': return pop_value();                  // STOP
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case 'N': push(Value()); break;
        case 0x88: push(Value(true)); break;
        case 0x89: push(Value(false)); break;
        case 'K': push(Value(static_cast<int64_t>(byte()))); break;
        case 'M': { uint16_t u; read(&u, 2); push(Value(static_cast<int64_t>(u))); break; }
        case 'J': { int32_t i; read(&i, 4); push(Value(static_cast<int64_t>(i))); break; }
        case 0x8a: {  // LONG1
          const int n = byte();
          if (n > 8) fail("integer wider than 64 bits");
          int64_t v = 0;
          unsigned char b[8] = {0};
          read(b, static_cast<size_t>(n));
          const bool negative = n > 0 && (b[n - 1] & 0x80);
          for (int i = 7; i >= n; --i) b[i] = negative ? 0xff : 0x00;
          std::memcpy(&v, b, 8);
          push(Value(v));
          break;
        }
        case 'G': {  // BINFLOAT
          unsigned char b[8];
          read(b, 8);
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | b[i];
          double d;
          std::memcpy(&d, &bits, 8);
          push(Value(d));
          break;
        }
        case 'X': { uint32_t n; read(&n, 4); push(Value(str(n))); break; }
        case 0x8c: { const size_t n = byte(); push(Value(str(n))); break; }   // SHORT_BINUNICODE
        case 0x8d: { uint64_t n; read(&n, 8); push(Value(str(n))); break; }   // BINUNICODE8
        case 'U': { const size_t n = byte(); push(Value(str(n))); break; }    // SHORT_BINSTRING
        case 'T': { uint32_t n; read(&n, 4); push(Value(str(n))); break; }    // BINSTRING
        case '}': push(Value::dict()); break;
        case ']': push(Value::list()); break;
        case ')': push_tuple({}); break;
        case 't': { auto items = pop_mark(); push_tuple(std::move(items)); break; }
        case 0x85: { auto a = pop_value(); push_tuple({std::move(a)}); break; }
        case 0x86: { auto b = pop_value(); auto a = pop_value(); push_tuple({std::move(a), std::move(b)}); break; }
        case 0x87: {
          auto c = pop_value(); auto b = pop_value(); auto a = pop_value();
          push_tuple({std::move(a), std::move(b), std::move(c)});
          break;
        }
        case 'a': { auto v = pop_value(); top().v.push_back(std::move(v)); break; }  // APPEND
        case 'e': {  // APPENDS
          auto items = pop_mark();
          Value& list = top().v;
          if (!list.is_list()) fail("APPENDS on a non-list");
          for (auto& it : items) list.push_back(std::move(it));
          break;
        }
        case 's': {  // SETITEM
          auto v = pop_value();
          auto k = pop_value();
          set_item(top().v, std::move(k), std::move(v));
          break;
        }
        case 'u': {  // SETITEMS
          auto items = pop_mark();
          if (items.size() % 2) fail("odd SETITEMS");
          Value& d = top().v;
          for (size_t i = 0; i < items.size(); i += 2) set_item(d, std::move(items[i]), std::move(items[i + 1]));
          break;
        }
        case 'c': {  // GLOBAL
          std::string module = line();
          std::string name = line();
          Item it;
          it.global = module + "." + name;
          stack_.push_back(std::move(it));
          break;
        }
        case 'Q': {  // BINPERSID
          Value pid = pop_value();
          push(load_storage(pid));
          break;
        }
        case 'R': {  // REDUCE
          Value args = pop_value();
          Item func = pop();
          if (func.global.empty()) fail("REDUCE on a non-class");
          push(reduce(func.global, args));
          break;
        }
        case 'b': pop_value(); break;  // BUILD: state of an OrderedDict (_metadata) is dropped
        case 'q': { const size_t i = byte(); memo(i); break; }
        case 'r': { uint32_t i; read(&i, 4); memo(i); break; }
        case 0x94: memo(memo_.size()); break;  // MEMOIZE
        case 'h': { const size_t i = byte(); push_memo(i); break; }
        case 'j': { uint32_t i; read(&i, 4); push_memo(i); break; }
        default: {
          std::ostringstream os;
          os << "unsupported pickle opcode 0x" << std::hex << static_cast<int>(opcode);
          fail(os.str());
        }
      }
    }
  }

 private:
  struct Item {
    Value v;
    std::string global;  //!< non-empty for GLOBAL entries
    bool is_tuple = false;
  };

  [[noreturn]] void fail(const std::string& why) { throw CheckpointError("malformed pickle: " + why); }
  unsigned char byte() {
    if (p_ >= end_) fail("unexpected end of data.pkl");
    return static_cast<unsigned char>(*p_++);
  }
  void read(void* out, size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) fail("unexpected end of data.pkl");
    std::memcpy(out, p_, n);
    p_ += n;
  }
  void skip(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) fail("unexpected end of data.pkl");
    p_ += n;
  }
  std::string str(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) fail("unexpected end of data.pkl");
    std::string s(p_, n);
    p_ += n;
    return s;
  }
  std::string line() {
    const char* nl = static_cast<const char*>(std::memchr(p_, '\n', static_cast<size_t>(end_ - p_)));
    if (!nl) fail("unterminated GLOBAL");
    std::string s(p_, static_cast<size_t>(nl - p_));
    p_ = nl + 1;
    return s;
  }
  void push(Value v) { Item it; it.v = std::move(v); stack_.push_back(std::move(it)); }
  void push_tuple(std::vector<Value> items) {
    Item it;
    it.v = Value(std::move(items));
    it.is_tuple = true;
    stack_.push_back(std::move(it));
  }
  Item& top() {
    if (stack_.empty()) fail("stack underflow");
    return stack_.back();
  }
  Item pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
    Item it = std::move(stack_.back());
    stack_.pop_back();
    return it;
  }
  // Class references (GLOBAL) become "global:module.name" strings when they
  // end up inside a container (the storage type inside a persistent id).
  static Value as_value(Item&& it) {
    if (!it.global.empty()) return Value("global:" + it.global);
    return std::move(it.v);
  }
  Value pop_value() { return as_value(pop()); }
  std::vector<Value> pop_mark() {
    if (marks_.empty()) fail("missing MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value> items;
    if (m > stack_.size()) fail("bad MARK");
    for (size_t i = m; i < stack_.size(); ++i) items.push_back(as_value(std::move(stack_[i])));
    stack_.resize(m);
    return items;
  }
  void memo(size_t i) {
    if (memo_.size() <= i) memo_.resize(i + 1);
    memo_[i] = top();
  }
  void push_memo(size_t i) {
    if (i >= memo_.size()) fail("bad memo reference");
    stack_.push_back(memo_[i]);
  }
  void set_item(Value& d, Value k, Value v) {
    if (!d.is_dict()) fail("SETITEM on a non-dict");
    if (!k.is_string() && !k.is_int()) fail(std::string("dict key of type ") + k.kind_name());
    d.set(std::move(k), std::move(v));
  }

  Value load_storage(const Value& pid) {
    if (!pid.is_list() || pid.size() != 5 || !pid.items()[0].is_string() ||
        pid.items()[0].to_string() != "storage") {
      fail("unsupported persistent id");
    }
    const std::string key = pid.items()[2].to_string();
    const int64_t numel = pid.items()[4].to_int();
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return Value(cached->second);
    std::string tname = pid.items()[1].is_string() ? pid.items()[1].to_string() : "";
    const auto dot = tname.rfind('.');
    if (tname.rfind("global:", 0) != 0 || dot == std::string::npos) fail("storage without a type");
    tname = tname.substr(dot + 1);
    c10::ScalarType t;
    if (!storage_type(tname, &t)) fail("unsupported storage type " + tname);
    at::Tensor s = loader_(key, t, numel);
    storages_[key] = s;
    return Value(s);
  }

  Value reduce(const std::string& func, const Value& args) {
    if (func == "collections.OrderedDict") return Value::dict();
    if (func == "torch._utils._rebuild_tensor_v2" || func == "torch._utils._rebuild_tensor") {
      const auto& a = args.items();
      if (a.size() < 4) fail("short _rebuild_tensor args");
      const at::Tensor& storage = a[0].to_tensor();
      const int64_t offset = a[1].to_int();
      const auto sizes = a[2].to_int_list();
      const auto strides = a[3].to_int_list();
      int64_t needed = offset + 1;
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (sizes[i] == 0) { needed = 0; break; }
        needed += (sizes[i] - 1) * strides[i];
      }
      if (needed > storage.numel()) fail("tensor larger than its storage");
      return Value(storage.as_strided(sizes, strides, offset));
    }
    if (func == "torch._utils._rebuild_parameter") return args.items().at(0);
    fail("unsupported class " + func);
  }

  const char* p_;
  const char* end_;
  StorageLoader loader_;
  std::vector<Item> stack_;
  std::vector<size_t> marks_;
  std::vector<Item> memo_;
  std::unordered_map<std::string, at::Tensor> storages_;
};
}  // namespace


// ---------------------------------------------------------------------------
// Writing.
namespace {
constexpr const char* kChecksumRecord = "cairn/checksums";
constexpr const char* kChecksumHeader = "cairn-checksums v1 xxh3-64";

std::string hex64(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

//! Buffers small writes; large tensor payloads go straight to the fd. Every
//! 64 MiB it asks the kernel to start writing back (sync_file_range), so the
//! disk works while the CPU serialises the rest instead of all at fsync.
class FdSink {
 public:
  explicit FdSink(int fd) : fd_(fd) { buf_.reserve(kBuf); }

  // Never fails towards the zip writer (whose destructor may not throw):
  // the first error is remembered and later writes are dropped.
  size_t write(const void* data, size_t n) {
    if (error_) return n;
    if (n >= kBuf) {
      flush();
      raw(static_cast<const char*>(data), n);
    } else {
      if (buf_.size() + n > kBuf) flush();
      buf_.insert(buf_.end(), static_cast<const char*>(data), static_cast<const char*>(data) + n);
    }
    total_ += n;
    return n;
  }
  void flush() {
    if (!buf_.empty() && !error_) raw(buf_.data(), buf_.size());
    buf_.clear();
  }
  int error() const { return error_; }
  uint64_t total() const { return total_; }

 private:
  static constexpr size_t kBuf = 1 << 20;
  void raw(const char* p, size_t n) {
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
  static constexpr uint64_t kWriteback = 64ull << 20;
  uint64_t written_ = 0;  //!< bytes handed to the kernel
  uint64_t flushed_ = 0;  //!< bytes whose writeback was started
  int fd_;
  int error_ = 0;
  uint64_t total_ = 0;
  std::vector<char> buf_;
};

std::string errno_text(int e) { return std::strerror(e); }
}  // namespace

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
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

WriteStats write_checkpoint(const std::string& path, const Value& root) {
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
  stats.pickle_seconds = since(t0);

  const std::string tmp = unique_temp_name(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int e = errno;
    throw CheckpointWriteError("cannot create " + tmp + ": " + errno_text(e), e);
  }

  // Hashes run ahead of the writes on two helper threads (zip CRC-32 and
  // cairn's XXH3-64), in record order, so that the disk never waits for a
  // hash except the first record's. Device tensors are hashed inline.
  std::vector<std::promise<uint32_t>> crc_promise(records.size());
  std::vector<std::promise<uint64_t>> xxh_promise(records.size());
  std::vector<std::future<uint32_t>> crc_future;
  std::vector<std::future<uint64_t>> xxh_future;
  for (size_t i = 0; i < records.size(); ++i) {
    crc_future.push_back(crc_promise[i].get_future());
    xxh_future.push_back(xxh_promise[i].get_future());
  }
  std::atomic<bool> cancel{false};
  std::thread crc_thread([&] {
    for (size_t i = 0; i < records.size(); ++i) {
      crc_promise[i].set_value(records[i].ptr && !cancel ? zip::crc32_parallel(records[i].ptr, records[i].size, 1) : 0);
    }
  });
  std::thread xxh_thread([&] {
    for (size_t i = 0; i < records.size(); ++i) {
      xxh_promise[i].set_value(records[i].ptr && !cancel ? XXH3_64bits(records[i].ptr, records[i].size) : 0);
    }
  });
  struct Join {  // the helpers read the tensors: they finish before anything is freed
    std::thread& a;
    std::thread& b;
    std::atomic<bool>& cancel;
    ~Join() {
      cancel = true;
      a.join();
      b.join();
    }
  } join{crc_thread, xxh_thread, cancel};

  FdSink sink(fd);
  double hash_wait = 0;
  zip::ZipWriter writer([&sink](const void* data, size_t n) {
    sink.write(data, n);
    return sink.error() == 0;
  });
  std::string checksums = std::string(kChecksumHeader) + "\n";
  auto note = [&](const std::string& name, size_t n, uint64_t hash) {
    checksums += name + " " + std::to_string(n) + " " + hex64(hash) + "\n";
  };
  const auto tw = Clock::now();
  writer.add("data.pkl", pkl);
  note("data.pkl", pkl.size(), XXH3_64bits(pkl.data(), pkl.size()));
  static const std::string kByteorder = "little";
  writer.add("byteorder", kByteorder);
  for (size_t i = 0; i < records.size() && sink.error() == 0; ++i) {
    TensorRecord& r = records[i];
    const std::string name = "data/" + std::to_string(i);
    uint32_t crc;
    uint64_t hash;
    if (r.ptr) {
      const auto w0 = Clock::now();
      crc = crc_future[i].get();
      hash = xxh_future[i].get();
      hash_wait += since(w0);
    } else {  // a device tensor: copy it now (one at a time), hash it here
      r.data = r.source.to(at::kCPU).contiguous();
      r.ptr = r.data.data_ptr();
      r.size = static_cast<size_t>(r.data.numel()) * r.data.element_size();
      const void* p = r.ptr;
      const size_t n = r.size;
      auto h = std::async(std::launch::async, [p, n] { return XXH3_64bits(p, n); });
      crc = zip::crc32_parallel(p, n, 2);
      hash = h.get();
    }
    writer.add(name, r.ptr, r.size, crc);
    note(name, r.size, hash);
    if (!r.source.device().is_cpu()) r.data = at::Tensor();  // free the host copy
  }
  writer.add(kChecksumRecord, checksums);
  writer.add("version", std::string("3\n"));
  writer.finish();
  sink.flush();
  stats.write_seconds = since(tw) - hash_wait;
  stats.hash_wait_seconds = hash_wait;
  int err = sink.error();
  const auto tf = Clock::now();
  if (!err && ::fsync(fd) != 0) err = errno;
  stats.fsync_seconds = since(tf);
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
  stats.bytes = sink.total();
  stats.seconds = since(t0);
  return stats;
}

void atomic_link(const std::string& source, const std::string& target) {
  const std::string tmp = unique_temp_name(target);
  if (::link(source.c_str(), tmp.c_str()) != 0) {
    std::error_code ec;
    fs::copy_file(source, tmp, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      ::unlink(tmp.c_str());
      throw CheckpointWriteError("cannot link or copy " + source + " to " + tmp + ": " + ec.message(), ec.value());
    }
    const int fd = ::open(tmp.c_str(), O_RDONLY);
    if (fd >= 0) { ::fsync(fd); ::close(fd); }
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
Value read_checkpoint(const std::string& path, const ReadOptions& options) {
  auto corrupt = [&](const std::string& why) {
    return CheckpointError("checkpoint " + path + " is not usable: " + why);
  };
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw corrupt("cannot open (" + errno_text(errno) + ")");
  if (st.st_size == 0) throw corrupt("the file is empty");

  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const std::exception& e) {
    throw corrupt("not a readable zip archive (truncated or not a checkpoint)");
  }

  // Expected sizes and hashes, if the file carries cairn's checksum record.
  std::unordered_map<std::string, std::pair<size_t, std::string>> expected;
  bool has_checksums = false;
  try {
    has_checksums = reader->hasRecord(kChecksumRecord);
    if (has_checksums) {
      auto rec = reader->getRecord(kChecksumRecord);
      std::string text(static_cast<const char*>(std::get<0>(rec).get()), std::get<1>(rec));
      std::istringstream is(text);
      std::string header;
      std::getline(is, header);
      if (header != kChecksumHeader) throw corrupt("unknown checksum format '" + header + "'");
      std::string name, hash;
      size_t size = 0;
      while (is >> name >> size >> hash) expected[name] = {size, hash};
    }
  } catch (const CheckpointError&) {
    throw;
  } catch (const std::exception& e) {
    throw corrupt(std::string("cannot read checksums: ") + e.what());
  }
  if (!has_checksums && options.require_checksum) {
    throw corrupt("no cairn checksum record (not a cairn checkpoint?)");
  }

  size_t verified = 0;
  struct PendingHash {
    std::string name, expected;
    std::future<uint64_t> hash;
  };
  std::vector<PendingHash> pending_hashes;
  // Futures must finish before the buffers they read are freed, on every path.
  struct Drain {
    std::vector<PendingHash>& v;
    ~Drain() {
      for (auto& p : v) {
        if (p.hash.valid()) p.hash.wait();
      }
    }
  } drain{pending_hashes};
  auto get = [&](const std::string& name) -> std::tuple<at::DataPtr, size_t> {
    std::tuple<at::DataPtr, size_t> rec;
    try {
      rec = reader->getRecord(name);
    } catch (const std::exception& e) {
      throw corrupt("record " + name + " cannot be read (" + std::string(e.what()).substr(0, 120) + ")");
    }
    if (has_checksums) {
      auto it = expected.find(name);
      if (it == expected.end()) throw corrupt("record " + name + " is not in the checksum list");
      const size_t n = std::get<1>(rec);
      if (n != it->second.first) throw corrupt("record " + name + " has the wrong size");
      const void* ptr = std::get<0>(rec).get();
      if (n >= (8u << 20)) {
        // Large records: hash on a helper thread while the next one is read;
        // everything is checked before the content is returned.
        pending_hashes.push_back({name, it->second.second,
                                  std::async(std::launch::async, [ptr, n] { return XXH3_64bits(ptr, n); })});
      } else if (hex64(XXH3_64bits(ptr, n)) != it->second.second) {
        throw corrupt("checksum mismatch in record " + name);
      }
      ++verified;
    }
    return rec;
  };
  auto check_pending = [&] {
    for (auto& p : pending_hashes) {
      if (hex64(p.hash.get()) != p.expected) throw corrupt("checksum mismatch in record " + p.name);
    }
    pending_hashes.clear();
  };

  auto pkl = get("data.pkl");
  const char* pdata = static_cast<const char*>(std::get<0>(pkl).get());
  StorageLoader loader = [&](const std::string& key, c10::ScalarType t, int64_t numel) {
    if (options.header_only) {
      // Shape and dtype only: a storage with no memory behind it.
      return at::empty({numel}, at::TensorOptions().dtype(t).device(at::kMeta));
    }
    auto rec = get("data/" + key);
    const size_t elem = c10::elementSize(t);
    if (std::get<1>(rec) < static_cast<size_t>(numel) * elem) throw corrupt("storage " + key + " is short");
    auto holder = std::make_shared<at::DataPtr>(std::move(std::get<0>(rec)));
    void* ptr = holder->get();
    return torch::from_blob(ptr, {numel}, [holder](void*) {}, torch::TensorOptions().dtype(t));
  };
  Value root;
  try {
    Unpickler u(pdata, std::get<1>(pkl), loader);
    root = u.load();
  } catch (const CheckpointError& e) {
    const std::string what = e.what();
    if (what.rfind("checkpoint ", 0) == 0) throw;
    throw corrupt(what);
  } catch (const std::exception& e) {
    throw corrupt(std::string("malformed content: ") + e.what());
  }
  check_pending();
  if (options.header_only) return root;
  if (has_checksums && verified + 0 < expected.size()) {
    // Records listed but never referenced (e.g. byteorder): verify them too.
    for (const auto& kv : expected) {
      if (kv.first == "data.pkl" || kv.first.rfind("data/", 0) == 0) continue;
      get(kv.first);
    }
  }
  return root;
}

}  // namespace cairn

namespace cairn {
bool CheckpointWriteError::no_space() const {
  return error_number_ == ENOSPC || error_number_ == EDQUOT || error_number_ == EFBIG;
}
}  // namespace cairn
