// Checkpoint file I/O: pickle writer/reader for the Value tree, the zip
// container (cairn's own zip writer and reader), checksums, atomic writes.
#include "cairn/checkpoint_file.h"

#include "cairn/run_lock.h"
#include "checksums.h"
#include "file_io.h"
#include "zip_reader.h"
#include "zip_writer.h"

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
#include <unordered_set>

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
// Pickle reader: the subset that torch.save and cairn emit, hardened against
// hostile files (Python weight files carry no cairn checksum, so these bytes
// are untrusted).
//
// The stack machine builds a graph of nodes in an arena: a memo reference
// shares its node (Python's semantics, O(1)), never deep-copies it. The graph
// becomes a Value tree at STOP under limits: nesting depth, a budget of
// values and string bytes proportional to the pickle's size (so shared
// references cannot expand a small file exponentially), and a check that no
// container contains itself. Every opcode creates at most one node, so the
// arena is bounded by the pickle's size too. Tensor views are checked
// against their storage with overflow-checked arithmetic before they exist.
namespace {
using StorageLoader = std::function<at::Tensor(const std::string& key, c10::ScalarType, int64_t numel)>;

class Unpickler {
 public:
  static constexpr size_t kMaxDepth = 256;           //!< nesting of lists/dicts in the result
  static constexpr size_t kMaxDims = 64;             //!< tensor dimensions
  static constexpr size_t kMaxObjects = 64u << 20;   //!< nodes in the arena

  Unpickler(const char* data, size_t size, StorageLoader loader)
      : begin_(data), p_(data), end_(data + size), loader_(std::move(loader)) {
    // A value may be emitted again through a shared reference, but the whole
    // result stays within a small multiple of the pickle's own size.
    budget_values_ = 4096 + 4 * size;
    budget_bytes_ = 4096 + 4 * size;
  }

  Value load() {
    while (true) {
      const unsigned char opcode = byte();
      switch (opcode) {
        case 0x80: byte(); break;                      // PROTO
        case 0x95: skip(8); break;                     // FRAME
        case '.': {                                    // STOP
          const uint32_t root = pop();
          return convert(root, 0);
        }
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case 'N': push(make(K::None)); break;
        case 0x88: push(make_int(K::Bool, 1)); break;
        case 0x89: push(make_int(K::Bool, 0)); break;
        case 'K': push(make_int(K::Int, byte())); break;
        case 'M': { uint16_t u; read(&u, 2); push(make_int(K::Int, u)); break; }
        case 'J': { int32_t i; read(&i, 4); push(make_int(K::Int, i)); break; }
        case 0x8a: {  // LONG1
          const int n = byte();
          if (n > 8) fail("integer wider than 64 bits");
          unsigned char b[8] = {0};
          read(b, static_cast<size_t>(n));
          const bool negative = n > 0 && (b[n - 1] & 0x80);
          for (int i = 7; i >= n; --i) b[i] = negative ? 0xff : 0x00;
          int64_t v;
          std::memcpy(&v, b, 8);
          push(make_int(K::Int, v));
          break;
        }
        case 'G': {  // BINFLOAT
          unsigned char b[8];
          read(b, 8);
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | b[i];
          const uint32_t n = make(K::Double);
          std::memcpy(&nodes_[n].d, &bits, 8);
          push(n);
          break;
        }
        case 'X': { uint32_t n; read(&n, 4); push(make_string(K::String, str(n))); break; }
        case 0x8c: { const size_t n = byte(); push(make_string(K::String, str(n))); break; }   // SHORT_BINUNICODE
        case 0x8d: { uint64_t n; read(&n, 8); push(make_string(K::String, str(n))); break; }   // BINUNICODE8
        case 'U': { const size_t n = byte(); push(make_string(K::String, str(n))); break; }    // SHORT_BINSTRING
        case 'T': { uint32_t n; read(&n, 4); push(make_string(K::String, str(n))); break; }    // BINSTRING
        case '}': push(make(K::Dict)); break;
        case ']': push(make(K::List)); break;
        case ')': push(make(K::Tuple)); break;
        case 't': { auto items = pop_mark(); push(make_tuple(std::move(items))); break; }
        case 0x85: { const uint32_t a = pop(); push(make_tuple({a})); break; }
        case 0x86: { const uint32_t b = pop(); const uint32_t a = pop(); push(make_tuple({a, b})); break; }
        case 0x87: {
          const uint32_t c = pop(); const uint32_t b = pop(); const uint32_t a = pop();
          push(make_tuple({a, b, c}));
          break;
        }
        case 'a': {  // APPEND
          const uint32_t v = pop();
          list_node(top(), "APPEND").items.push_back(v);
          break;
        }
        case 'e': {  // APPENDS
          auto items = pop_mark();
          Node& list = list_node(top(), "APPENDS");
          list.items.insert(list.items.end(), items.begin(), items.end());
          break;
        }
        case 's': {  // SETITEM
          const uint32_t v = pop();
          const uint32_t k = pop();
          set_item(top(), k, v);
          break;
        }
        case 'u': {  // SETITEMS
          auto items = pop_mark();
          if (items.size() % 2) fail("odd SETITEMS");
          const uint32_t d = top();
          for (size_t i = 0; i < items.size(); i += 2) set_item(d, items[i], items[i + 1]);
          break;
        }
        case 'c': {  // GLOBAL
          std::string module = line();
          std::string name = line();
          push(make_string(K::Global, module + "." + name));
          break;
        }
        case 'Q': {  // BINPERSID
          const uint32_t pid = pop();
          push(load_storage(pid));
          break;
        }
        case 'R': {  // REDUCE
          const uint32_t args = pop();
          const uint32_t func = pop();
          if (nodes_[func].kind != K::Global) fail("REDUCE on a non-class");
          if (nodes_[args].kind != K::Tuple) fail("REDUCE without an argument tuple");
          push(reduce(strings_[static_cast<size_t>(nodes_[func].i)], args));
          break;
        }
        case 'b': pop(); top(); break;  // BUILD: state of an OrderedDict (_metadata) is dropped
        case 'q': { const uint32_t i = byte(); memo_put(i); break; }           // BINPUT
        case 'r': { uint32_t i; read(&i, 4); memo_put(i); break; }             // LONG_BINPUT
        case 0x94: memo_put(static_cast<uint32_t>(memo_.size())); break;       // MEMOIZE
        case 'h': { const uint32_t i = byte(); memo_get(i); break; }           // BINGET
        case 'j': { uint32_t i; read(&i, 4); memo_get(i); break; }             // LONG_BINGET
        default: {
          std::ostringstream os;
          os << "unsupported pickle opcode 0x" << std::hex << static_cast<int>(opcode) << std::dec << " at byte "
             << (p_ - begin_ - 1);
          fail(os.str());
        }
      }
    }
  }

 private:
  enum class K : uint8_t { None, Bool, Int, Double, String, Tensor, List, Tuple, Dict, Global };
  struct Node {
    K kind = K::None;
    int64_t i = 0;   //!< Int/Bool value; index into strings_ (String, Global) or tensors_ (Tensor)
    double d = 0.0;  //!< Double value
    std::vector<uint32_t> items;  //!< List/Tuple items; Dict: key, value, key, value, ...
  };

  [[noreturn]] void fail(const std::string& why) const { throw CheckpointError("malformed pickle: " + why); }
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
  std::string str(uint64_t n) {
    if (static_cast<uint64_t>(end_ - p_) < n) fail("unexpected end of data.pkl");
    std::string s(p_, static_cast<size_t>(n));
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

  uint32_t make(K kind) {
    if (nodes_.size() >= kMaxObjects) fail("more than " + std::to_string(kMaxObjects) + " objects");
    nodes_.emplace_back();
    nodes_.back().kind = kind;
    return static_cast<uint32_t>(nodes_.size() - 1);
  }
  uint32_t make_int(K kind, int64_t v) {
    const uint32_t n = make(kind);
    nodes_[n].i = v;
    return n;
  }
  uint32_t make_string(K kind, std::string s) {
    const uint32_t n = make(kind);
    nodes_[n].i = static_cast<int64_t>(strings_.size());
    strings_.push_back(std::move(s));
    return n;
  }
  uint32_t make_tuple(std::vector<uint32_t> items) {
    const uint32_t n = make(K::Tuple);
    nodes_[n].items = std::move(items);
    return n;
  }
  uint32_t make_tensor(at::Tensor t) {
    const uint32_t n = make(K::Tensor);
    nodes_[n].i = static_cast<int64_t>(tensors_.size());
    tensors_.push_back(std::move(t));
    return n;
  }

  void push(uint32_t n) { stack_.push_back(n); }
  uint32_t top() const {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
    return stack_.back();
  }
  uint32_t pop() {
    const uint32_t n = top();
    stack_.pop_back();
    return n;
  }
  std::vector<uint32_t> pop_mark() {
    if (marks_.empty()) fail("missing MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    if (m > stack_.size()) fail("bad MARK");
    std::vector<uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  Node& list_node(uint32_t n, const char* op) {
    if (nodes_[n].kind != K::List) fail(std::string(op) + " on a non-list");
    return nodes_[n];
  }
  void memo_put(uint32_t index) { memo_[index] = top(); }
  void memo_get(uint32_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail("reference to memo entry " + std::to_string(index) + ", which was never stored");
    push(it->second);
  }

  //! Dict keys as one string ("i" + 8 bytes, or "s" + text) for the index.
  std::string key_of(uint32_t k) const {
    const Node& n = nodes_[k];
    if (n.kind == K::Int) return "i" + std::string(reinterpret_cast<const char*>(&n.i), 8);
    if (n.kind == K::String) return "s" + strings_[static_cast<size_t>(n.i)];
    fail(std::string("dict key of type ") + kind_name(n.kind));
  }
  //! Python's d[k] = v: replaces an existing key in place. Linear overall: a
  //! dict past a few entries gets a hash index of its keys.
  void set_item(uint32_t d, uint32_t k, uint32_t v) {
    if (nodes_[d].kind != K::Dict) fail("SETITEM on a non-dict");
    std::string key = key_of(k);
    auto& items = nodes_[d].items;
    auto idx = dict_index_.find(d);
    if (idx == dict_index_.end()) {
      for (size_t i = 0; i < items.size(); i += 2) {
        if (key_of(items[i]) == key) {
          items[i + 1] = v;
          return;
        }
      }
      items.push_back(k);
      items.push_back(v);
      if (items.size() >= 32) {
        auto& map = dict_index_[d];
        for (size_t i = 0; i < items.size(); i += 2) map.emplace(key_of(items[i]), i);
      }
      return;
    }
    auto found = idx->second.find(key);
    if (found != idx->second.end()) {
      items[found->second + 1] = v;
      return;
    }
    idx->second.emplace(std::move(key), items.size());
    items.push_back(k);
    items.push_back(v);
  }

  static const char* kind_name(K k) {
    switch (k) {
      case K::None: return "None";
      case K::Bool: return "bool";
      case K::Int: return "int";
      case K::Double: return "float";
      case K::String: return "str";
      case K::Tensor: return "tensor";
      case K::List: return "list";
      case K::Tuple: return "tuple";
      case K::Dict: return "dict";
      case K::Global: return "class";
    }
    return "?";
  }

  int64_t int_of(uint32_t n, const char* what) const {
    if (nodes_[n].kind != K::Int) fail(std::string(what) + " is not an int");
    return nodes_[n].i;
  }
  std::vector<int64_t> int_tuple(uint32_t n, const char* what) const {
    const Node& node = nodes_[n];
    if (node.kind != K::Tuple && node.kind != K::List) fail(std::string(what) + " is not a tuple");
    if (node.items.size() > kMaxDims) fail(std::string(what) + " has more than " + std::to_string(kMaxDims) + " dimensions");
    std::vector<int64_t> out;
    for (uint32_t i : node.items) out.push_back(int_of(i, what));
    return out;
  }
  const std::string& string_of(uint32_t n, const char* what) const {
    if (nodes_[n].kind != K::String) fail(std::string(what) + " is not a string");
    return strings_[static_cast<size_t>(nodes_[n].i)];
  }

  uint32_t load_storage(uint32_t pid) {
    const Node& p = nodes_[pid];
    if (p.kind != K::Tuple || p.items.size() != 5 || nodes_[p.items[0]].kind != K::String ||
        strings_[static_cast<size_t>(nodes_[p.items[0]].i)] != "storage") {
      fail("unsupported persistent id");
    }
    const std::string& key = string_of(p.items[2], "storage key");
    if (key.empty() || key.size() > 64) fail("storage key of length " + std::to_string(key.size()));
    const int64_t numel = int_of(p.items[4], "storage size");
    if (numel < 0) fail("negative storage size");
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return cached->second;
    const Node& type = nodes_[p.items[1]];
    if (type.kind != K::Global) fail("storage without a type");
    std::string tname = strings_[static_cast<size_t>(type.i)];
    const auto dot = tname.rfind('.');
    if (dot == std::string::npos) fail("storage without a type");
    tname = tname.substr(dot + 1);
    c10::ScalarType t;
    if (!storage_type(tname, &t)) fail("unsupported storage type " + tname.substr(0, 100));
    const uint32_t n = make_tensor(loader_(key, t, numel));
    storages_[key] = n;
    return n;
  }

  uint32_t reduce(const std::string& func, uint32_t args_node) {
    const std::vector<uint32_t> a = nodes_[args_node].items;  // copy: make() may move nodes_
    if (func == "collections.OrderedDict") return make(K::Dict);
    if (func == "torch._utils._rebuild_tensor_v2" || func == "torch._utils._rebuild_tensor") {
      if (a.size() < 4) fail("short _rebuild_tensor args");
      if (nodes_[a[0]].kind != K::Tensor) fail("tensor without a storage");
      const at::Tensor storage = tensors_[static_cast<size_t>(nodes_[a[0]].i)];
      const int64_t offset = int_of(a[1], "storage offset");
      const auto sizes = int_tuple(a[2], "tensor size");
      const auto strides = int_tuple(a[3], "tensor stride");
      if (sizes.size() != strides.size()) fail("tensor with " + std::to_string(sizes.size()) + " sizes but " +
                                                std::to_string(strides.size()) + " strides");
      const int64_t available = storage.numel();
      if (offset < 0 || offset > available) fail("storage offset outside the storage");
      // Elements of the view, and the last element it touches, overflow-checked.
      int64_t numel = 1;
      int64_t last = offset;
      bool empty = false;
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (sizes[i] < 0) fail("negative tensor size");
        if (strides[i] < 0) fail("negative tensor stride");
        if (sizes[i] == 0) empty = true;
        if (__builtin_mul_overflow(numel, sizes[i], &numel)) fail("tensor size overflows");
      }
      if (!empty) {
        for (size_t i = 0; i < sizes.size(); ++i) {
          int64_t reach;
          if (__builtin_mul_overflow(sizes[i] - 1, strides[i], &reach) || __builtin_add_overflow(last, reach, &last)) {
            fail("tensor extent overflows");
          }
        }
        if (last >= available) fail("tensor view reaches past the end of its storage");
        // A view with more elements than its storage (stride-0 broadcasts) would
        // make later copies far larger than the file.
        if (numel > available) fail("tensor view has more elements than its storage (expanded tensors are not loaded)");
      }
      return make_tensor(storage.as_strided(sizes, strides, offset));
    }
    if (func == "torch._utils._rebuild_parameter") {
      if (a.empty()) fail("short _rebuild_parameter args");
      return a[0];
    }
    fail("unsupported class " + func.substr(0, 200));
  }

  //! The graph below `n` as a Value tree, within the depth and size limits.
  Value convert(uint32_t n, size_t depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    if (budget_values_ == 0) {
      fail("the pickle expands to more values than its size allows (shared references repeated too often)");
    }
    --budget_values_;
    const Node& node = nodes_[n];
    switch (node.kind) {
      case K::None: return Value();
      case K::Bool: return Value(node.i != 0);
      case K::Int: return Value(node.i);
      case K::Double: return Value(node.d);
      case K::String:
      case K::Global: {
        const std::string& s = strings_[static_cast<size_t>(node.i)];
        if (s.size() > budget_bytes_) {
          fail("the pickle expands to more text than its size allows (shared references repeated too often)");
        }
        budget_bytes_ -= s.size();
        return node.kind == K::String ? Value(s) : Value("global:" + s);
      }
      case K::Tensor: return Value(tensors_[static_cast<size_t>(node.i)]);
      case K::List:
      case K::Tuple:
      case K::Dict: {
        if (!active_.insert(n).second) fail("a container that contains itself");
        Value out;
        if (node.kind == K::Dict) {
          std::vector<Value> keys, values;
          keys.reserve(node.items.size() / 2);
          values.reserve(node.items.size() / 2);
          for (size_t i = 0; i + 1 < node.items.size(); i += 2) {
            keys.push_back(convert(nodes_[n].items[i], depth + 1));
            values.push_back(convert(nodes_[n].items[i + 1], depth + 1));
          }
          out = Value::dict_from(std::move(keys), std::move(values));
        } else {
          std::vector<Value> items;
          items.reserve(node.items.size());
          for (uint32_t child : node.items) items.push_back(convert(child, depth + 1));
          out = Value(std::move(items));
        }
        active_.erase(n);
        return out;
      }
    }
    fail("unknown node");
  }

  const char* begin_;
  const char* p_;
  const char* end_;
  StorageLoader loader_;
  std::vector<Node> nodes_;
  std::vector<std::string> strings_;
  std::vector<at::Tensor> tensors_;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, uint32_t> memo_;
  std::unordered_map<uint32_t, std::unordered_map<std::string, size_t>> dict_index_;
  std::unordered_map<std::string, uint32_t> storages_;
  std::unordered_set<uint32_t> active_;  //!< containers being converted (cycle check)
  size_t budget_values_;
  size_t budget_bytes_;
};
}  // namespace


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
  // ahead of the writes on one helper thread, in record order, 1 MiB at a
  // time: the second hash reads the piece from the cache, not from memory
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
  const uint64_t file_size = reader->file_size();

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
  StorageLoader loader = [&](const std::string& key, c10::ScalarType t, int64_t numel) {
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
  (void)file_size;
  Value root;
  try {
    Unpickler u(pkl.data(), pkl.size(), loader);
    root = u.load();
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
}  // namespace cairn
