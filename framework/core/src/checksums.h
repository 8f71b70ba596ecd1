// The `cairn/checksums` record of a checkpoint: the size and XXH3-64 of every
// other record, one line each after a header line. Written and verified by
// checkpoint_file.cpp; the fuzz harness builds valid files with it too.
//
// Private to the checkpoint code (not installed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cairn {
namespace checksums {

constexpr const char* kRecord = "cairn/checksums";
constexpr const char* kHeader = "cairn-checksums v1 xxh3-64";

uint64_t xxh3(const void* data, size_t size);
//! 16 lowercase hex digits, as in the record.
std::string hex(uint64_t hash);

//! Builds the record's text.
class Builder {
 public:
  Builder() : text_(std::string(kHeader) + "\n") {}
  void add(const std::string& name, size_t size, uint64_t hash) {
    text_ += name + " " + std::to_string(size) + " " + hex(hash) + "\n";
  }
  void add(const std::string& name, const void* data, size_t size) { add(name, size, xxh3(data, size)); }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

}  // namespace checksums
}  // namespace cairn
