#include "cairn/host_sync.h"

#include <atomic>

namespace cairn {

namespace {
std::atomic<int64_t> g_reads{0};
}  // namespace

// A CPU tensor's value is read too (counted): the rule is the same on every
// device, so a test on the CPU sees what a GPU run would wait for.
double read_double(const at::Tensor& t) {
  g_reads.fetch_add(1, std::memory_order_relaxed);
  return t.item<double>();
}

bool read_bool(const at::Tensor& t) {
  g_reads.fetch_add(1, std::memory_order_relaxed);
  return t.item<bool>();
}

at::Tensor read_to_cpu(const at::Tensor& t) {
  g_reads.fetch_add(1, std::memory_order_relaxed);
  return t.cpu();
}

int64_t host_reads() { return g_reads.load(std::memory_order_relaxed); }

}  // namespace cairn
