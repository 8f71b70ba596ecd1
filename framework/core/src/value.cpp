#include "cairn/value.h"

#include <unordered_set>

#include <cstring>
#include <sstream>
#include <stdexcept>

namespace cairn {

namespace {
const char* kind_label(Value::Kind k) {
  switch (k) {
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Double: return "float";
    case Value::Kind::String: return "str";
    case Value::Kind::Tensor: return "tensor";
    case Value::Kind::List: return "list";
    case Value::Kind::Dict: return "dict";
  }
  return "?";
}

bool same_key(const Value& a, const Value& b) {
  if (a.kind() != b.kind()) return false;
  if (a.is_string()) return a.to_string() == b.to_string();
  if (a.is_int()) return a.to_int() == b.to_int();
  return false;
}

std::string key_text(const Value& k) {
  return k.is_string() ? k.to_string() : std::to_string(k.to_int());
}

bool tensors_identical(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;  // (memcmp of two null data pointers is undefined)
  auto ca = a.to(at::kCPU).contiguous();
  auto cb = b.to(at::kCPU).contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}
}  // namespace

Value::Value(const std::vector<double>& v) : kind_(Kind::List) {
  items_.reserve(v.size());
  for (double x : v) items_.emplace_back(x);
}
Value::Value(const std::vector<int64_t>& v) : kind_(Kind::List) {
  items_.reserve(v.size());
  for (int64_t x : v) items_.emplace_back(x);
}
Value::Value(const std::vector<std::string>& v) : kind_(Kind::List) {
  items_.reserve(v.size());
  for (const auto& x : v) items_.emplace_back(x);
}

const char* Value::kind_name() const { return kind_label(kind_); }

void Value::require(Kind k, const char* what) const {
  if (kind_ != k) {
    throw std::runtime_error(std::string("expected a ") + kind_label(k) + " for " + what +
                             ", got a " + kind_label(kind_));
  }
}

bool Value::to_bool() const {
  if (kind_ == Kind::Int) return int_ != 0;
  require(Kind::Bool, "to_bool()");
  return int_ != 0;
}
int64_t Value::to_int() const {
  if (kind_ == Kind::Bool) return int_;
  require(Kind::Int, "to_int()");
  return int_;
}
double Value::to_double() const {
  if (kind_ == Kind::Int) return static_cast<double>(int_);
  if (kind_ == Kind::Tensor && tensor_.defined() && tensor_.numel() == 1) {
    return tensor_.item<double>();
  }
  require(Kind::Double, "to_double()");
  return double_;
}
const std::string& Value::to_string() const {
  require(Kind::String, "to_string()");
  return string_;
}
const at::Tensor& Value::to_tensor() const {
  require(Kind::Tensor, "to_tensor()");
  return tensor_;
}
std::vector<double> Value::to_double_list() const {
  if (kind_ == Kind::Tensor && tensor_.defined() && tensor_.dim() == 1) {
    const at::Tensor t = tensor_.to(at::kDouble).contiguous();
    return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  }
  std::vector<double> out;
  for (const auto& v : items()) out.push_back(v.to_double());
  return out;
}
std::vector<int64_t> Value::to_int_list() const {
  if (kind_ == Kind::Tensor && tensor_.defined() && tensor_.dim() == 1 && !at::isFloatingType(tensor_.scalar_type())) {
    const at::Tensor t = tensor_.to(at::kLong).contiguous();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  }
  std::vector<int64_t> out;
  for (const auto& v : items()) out.push_back(v.to_int());
  return out;
}

const std::vector<Value>& Value::items() const {
  if (kind_ != Kind::Dict) require(Kind::List, "items()");
  return items_;
}
std::vector<Value>& Value::items() {
  if (kind_ != Kind::Dict) require(Kind::List, "items()");
  return items_;
}
void Value::push_back(Value v) {
  require(Kind::List, "push_back()");
  items_.push_back(std::move(v));
}
size_t Value::size() const {
  if (kind_ != Kind::Dict) require(Kind::List, "size()");
  return items_.size();
}

const std::vector<Value>& Value::keys() const {
  require(Kind::Dict, "keys()");
  return keys_;
}
const std::vector<Value>& Value::values() const {
  require(Kind::Dict, "values()");
  return items_;
}
Value& Value::set(Value key, Value v) {
  require(Kind::Dict, "set()");
  if (!key.is_string() && !key.is_int()) {
    throw std::runtime_error(std::string("dict keys must be str or int, got ") + key.kind_name());
  }
  if (Value* existing = find(key)) {
    *existing = std::move(v);
    return *existing;
  }
  keys_.push_back(std::move(key));
  items_.push_back(std::move(v));
  return items_.back();
}
Value Value::dict_from(std::vector<Value> keys, std::vector<Value> values) {
  if (keys.size() != values.size()) throw std::runtime_error("dict_from: different numbers of keys and values");
  std::unordered_set<std::string> seen;
  seen.reserve(keys.size());
  for (const auto& k : keys) {
    std::string id;
    if (k.is_string()) {
      id = "s" + k.to_string();
    } else if (k.is_int()) {
      const int64_t i = k.to_int();
      id = "i" + std::string(reinterpret_cast<const char*>(&i), sizeof i);
    } else {
      throw std::runtime_error(std::string("dict keys must be str or int, got ") + k.kind_name());
    }
    if (!seen.insert(std::move(id)).second) throw std::runtime_error("repeated dict key '" + key_text(k) + "'");
  }
  Value d = dict();
  d.keys_ = std::move(keys);
  d.items_ = std::move(values);
  return d;
}

const Value* Value::find(const Value& key) const {
  require(Kind::Dict, "find()");
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (same_key(keys_[i], key)) return &items_[i];
  }
  return nullptr;
}
Value* Value::find(const Value& key) {
  return const_cast<Value*>(static_cast<const Value*>(this)->find(key));
}
const Value& Value::at(const Value& key) const {
  const Value* v = find(key);
  if (!v) throw std::runtime_error("missing key '" + key_text(key) + "'");
  return *v;
}
Value& Value::at(const Value& key) {
  return const_cast<Value&>(static_cast<const Value*>(this)->at(key));
}
bool Value::erase(const Value& key) {
  require(Kind::Dict, "erase()");
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (same_key(keys_[i], key)) {
      keys_.erase(keys_.begin() + static_cast<std::ptrdiff_t>(i));
      items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
      return true;
    }
  }
  return false;
}

bool Value::equals(const Value& other) const { return first_difference(other).empty(); }

std::string Value::first_difference(const Value& other, const std::string& path) const {
  const std::string where = path.empty() ? "<root>" : path;
  if (kind_ != other.kind_) {
    return where + ": " + kind_label(kind_) + " vs " + kind_label(other.kind_);
  }
  switch (kind_) {
    case Kind::None: return "";
    case Kind::Bool:
    case Kind::Int:
      return int_ == other.int_ ? "" : where + ": " + std::to_string(int_) + " vs " + std::to_string(other.int_);
    case Kind::Double: {
      // Bitwise comparison: NaN equals NaN, -0.0 differs from 0.0.
      if (std::memcmp(&double_, &other.double_, sizeof(double)) == 0) return "";
      std::ostringstream os;
      os.precision(17);
      os << where << ": " << double_ << " vs " << other.double_;
      return os.str();
    }
    case Kind::String:
      return string_ == other.string_ ? "" : where + ": '" + string_ + "' vs '" + other.string_ + "'";
    case Kind::Tensor:
      return tensors_identical(tensor_, other.tensor_) ? "" : where + ": tensors differ";
    case Kind::List:
      if (items_.size() != other.items_.size()) {
        return where + ": list lengths " + std::to_string(items_.size()) + " vs " +
               std::to_string(other.items_.size());
      }
      for (size_t i = 0; i < items_.size(); ++i) {
        auto d = items_[i].first_difference(other.items_[i], path + "[" + std::to_string(i) + "]");
        if (!d.empty()) return d;
      }
      return "";
    case Kind::Dict:
      for (size_t i = 0; i < keys_.size(); ++i) {
        const std::string sub = path.empty() ? key_text(keys_[i]) : path + "." + key_text(keys_[i]);
        const Value* o = other.find(keys_[i]);
        if (!o) return sub + ": missing on the right";
        auto d = items_[i].first_difference(*o, sub);
        if (!d.empty()) return d;
      }
      for (const auto& k : other.keys_) {
        if (!find(k)) return (path.empty() ? key_text(k) : path + "." + key_text(k)) + ": missing on the left";
      }
      return "";
  }
  return "";
}

std::string Value::repr(int depth) const {
  std::ostringstream os;
  switch (kind_) {
    case Kind::None: os << "None"; break;
    case Kind::Bool: os << (int_ ? "True" : "False"); break;
    case Kind::Int: os << int_; break;
    case Kind::Double: os.precision(10); os << double_; break;
    case Kind::String: os << '\'' << string_ << '\''; break;
    case Kind::Tensor:
      if (!tensor_.defined()) { os << "tensor(undefined)"; break; }
      os << "tensor(" << c10::toString(tensor_.scalar_type()) << tensor_.sizes() << ")";
      break;
    case Kind::List:
      os << "[";
      for (size_t i = 0; i < items_.size(); ++i) {
        if (i) os << ", ";
        if (i >= 8) { os << "... (" << items_.size() << " items)"; break; }
        os << items_[i].repr(depth + 1);
      }
      os << "]";
      break;
    case Kind::Dict:
      os << "{";
      for (size_t i = 0; i < keys_.size(); ++i) {
        if (i) os << ", ";
        os << keys_[i].repr(depth + 1) << ": " << items_[i].repr(depth + 1);
      }
      os << "}";
      break;
  }
  return os.str();
}

}  // namespace cairn
