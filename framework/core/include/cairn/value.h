// Value: the one data model for everything cairn saves.
//
// A checkpoint is a tree of Values: None, bool, int, float, string, tensor,
// list, and dict (keys are strings or ints, insertion-ordered). This is exactly
// what Python's `torch.load` returns for a cairn checkpoint, so the same tree
// is written to and read from disk without any conversion layer.
//
//   cairn::Value d = cairn::Value::dict();
//   d.set("lr", 0.1);
//   d.set("weights", torch::ones({3}));
//   double lr = d.at("lr").to_double();
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cairn {

class Value {
 public:
  enum class Kind { None, Bool, Int, Double, String, Tensor, List, Dict };

  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool v) : kind_(Kind::Bool), int_(v ? 1 : 0) {}
  Value(int v) : kind_(Kind::Int), int_(v) {}
  Value(int64_t v) : kind_(Kind::Int), int_(v) {}
  Value(uint64_t v) : kind_(Kind::Int), int_(static_cast<int64_t>(v)) {}
  Value(double v) : kind_(Kind::Double), double_(v) {}
  Value(float v) : kind_(Kind::Double), double_(v) {}
  Value(const char* v) : kind_(Kind::String), string_(v) {}
  Value(std::string v) : kind_(Kind::String), string_(std::move(v)) {}
  Value(at::Tensor v) : kind_(Kind::Tensor), tensor_(std::move(v)) {}
  Value(std::vector<Value> items) : kind_(Kind::List), items_(std::move(items)) {}
  Value(const std::vector<double>& v);
  Value(const std::vector<int64_t>& v);
  Value(const std::vector<std::string>& v);

  static Value dict() { Value v; v.kind_ = Kind::Dict; return v; }
  static Value list() { Value v; v.kind_ = Kind::List; return v; }
  //! A dict from parallel key and value lists in linear time; throws on a key
  //! that is not str/int or that repeats.
  static Value dict_from(std::vector<Value> keys, std::vector<Value> values);

  Kind kind() const { return kind_; }
  const char* kind_name() const;
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_double() const { return kind_ == Kind::Double; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Double; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_tensor() const { return kind_ == Kind::Tensor; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_dict() const { return kind_ == Kind::Dict; }

  // Checked accessors: throw std::runtime_error naming the expected and actual kind.
  bool to_bool() const;
  int64_t to_int() const;
  double to_double() const;  // accepts Int too
  const std::string& to_string() const;
  const at::Tensor& to_tensor() const;
  std::vector<double> to_double_list() const;
  std::vector<int64_t> to_int_list() const;

  // Lists.
  const std::vector<Value>& items() const;
  std::vector<Value>& items();
  void push_back(Value v);
  size_t size() const;  // list or dict length

  // Dicts (insertion-ordered; keys are Int or String values).
  const std::vector<Value>& keys() const;
  const std::vector<Value>& values() const;
  Value& set(Value key, Value v);  // replaces an existing key in place
  const Value* find(const Value& key) const;
  Value* find(const Value& key);
  bool contains(const Value& key) const { return find(key) != nullptr; }
  const Value& at(const Value& key) const;  // throws naming the key
  Value& at(const Value& key);
  bool erase(const Value& key);

  // Structural equality; tensors compare by dtype, shape and exact bytes.
  bool equals(const Value& other) const;
  // Like equals() but explains the first difference ("" when equal), with its path.
  std::string first_difference(const Value& other, const std::string& path = "") const;
  // Short human-readable rendering (tensors as dtype[shape]).
  std::string repr(int depth = 0) const;

 private:
  void require(Kind k, const char* what) const;

  Kind kind_ = Kind::None;
  int64_t int_ = 0;
  double double_ = 0.0;
  std::string string_;
  at::Tensor tensor_;
  std::vector<Value> items_;  //!< list items, or dict values
  std::vector<Value> keys_;   //!< dict keys, parallel to items_
};

}  // namespace cairn
