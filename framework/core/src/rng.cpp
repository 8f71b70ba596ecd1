#include "cairn/rng.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/cuda.h>

#include <cstring>
#include <mutex>
#include <stdexcept>

namespace cairn {

namespace {
at::Tensor get_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
void set_state(at::Generator gen, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state.to(at::kCPU).contiguous().clone());
}
}  // namespace

Value capture_rng_states(const std::map<std::string, at::Generator>& extra) {
  Value d = Value::dict();
  d.set("cpu", get_state(at::detail::getDefaultCPUGenerator()));
  if (torch::cuda::is_available()) {
    Value cuda = Value::list();
    const auto n = static_cast<int>(torch::cuda::device_count());
    for (int i = 0; i < n; ++i) {
      cuda.push_back(get_state(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, i))));
    }
    d.set("cuda", std::move(cuda));
  }
  for (const auto& kv : extra) d.set(kv.first, get_state(kv.second));
  return d;
}

void restore_rng_states(const Value& states, const std::map<std::string, at::Generator>& extra) {
  set_state(at::detail::getDefaultCPUGenerator(), states.at("cpu").to_tensor());
  if (const Value* cuda = states.find("cuda")) {
    if (torch::cuda::is_available()) {
      const auto n = static_cast<size_t>(torch::cuda::device_count());
      for (size_t i = 0; i < std::min(n, cuda->size()); ++i) {
        set_state(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<int>(i))),
                  cuda->items()[i].to_tensor());
      }
    }
  }
  for (const auto& kv : extra) {
    if (const Value* s = states.find(kv.first)) set_state(kv.second, s->to_tensor());
  }
}

namespace {
void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }
uint64_t get_u64(const std::string& in, size_t& at) {
  if (at + 8 > in.size()) throw std::runtime_error("truncated RNG state");
  uint64_t v;
  std::memcpy(&v, in.data() + at, 8);
  at += 8;
  return v;
}
void put_bytes(std::string& out, const std::string& b) {
  put_u64(out, b.size());
  out += b;
}
std::string get_bytes(const std::string& in, size_t& at) {
  const uint64_t n = get_u64(in, at);
  if (at + n > in.size()) throw std::runtime_error("truncated RNG state");
  std::string b = in.substr(at, n);
  at += n;
  return b;
}
void put_tensor(std::string& out, const at::Tensor& t) {
  if (t.scalar_type() != at::kByte) throw std::runtime_error("RNG states are byte tensors");
  at::Tensor c = t.to(at::kCPU).contiguous();
  put_bytes(out, std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel())));
}
at::Tensor get_tensor(const std::string& in, size_t& at) {
  const std::string b = get_bytes(in, at);
  at::Tensor t = at::empty({static_cast<int64_t>(b.size())}, at::kByte);
  std::memcpy(t.data_ptr(), b.data(), b.size());
  return t;
}
}  // namespace

// Layout: per key: name, kind ('t' one tensor, 'l' a list), then the bytes.
std::string encode_rng_states(const Value& states) {
  std::string out;
  for (size_t i = 0; i < states.keys().size(); ++i) {
    put_bytes(out, states.keys()[i].to_string());
    const Value& v = states.values()[i];
    if (v.is_tensor()) {
      out += 't';
      put_tensor(out, v.to_tensor());
    } else {
      out += 'l';
      put_u64(out, v.size());
      for (const auto& item : v.items()) put_tensor(out, item.to_tensor());
    }
  }
  return out;
}

Value decode_rng_states(const std::string& bytes) {
  Value d = Value::dict();
  size_t at = 0;
  while (at < bytes.size()) {
    const std::string key = get_bytes(bytes, at);
    if (at >= bytes.size()) throw std::runtime_error("truncated RNG state");
    const char kind = bytes[at++];
    if (kind == 't') {
      d.set(key, get_tensor(bytes, at));
    } else {
      Value list = Value::list();
      const uint64_t n = get_u64(bytes, at);
      for (uint64_t k = 0; k < n; ++k) list.push_back(get_tensor(bytes, at));
      d.set(key, std::move(list));
    }
  }
  return d;
}

}  // namespace cairn
