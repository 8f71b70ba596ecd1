// The pickle codec of checkpoint files (see pickle_codec.h).
#include "pickle_codec.h"

#include <torch/torch.h>

#include <cstring>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace cairn {

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
using pickle::StorageLoader;

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


namespace pickle {
Value loads(const char* data, size_t size, const StorageLoader& loader) {
  Unpickler u(data, size, loader);
  return u.load();
}
}  // namespace pickle

}  // namespace cairn
