#include "cairn/callbacks/tensorboard.h"

#include <chrono>
#include <cstring>
#include <filesystem>

namespace cairn {

namespace fs = std::filesystem;

namespace tensorboard {
namespace {
struct Crc32cTable {
  uint32_t t[256];
  Crc32cTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
  }
};

void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

void bytes_field(std::string& out, uint32_t field, const std::string& bytes) {
  varint(out, (field << 3) | 2);
  varint(out, bytes.size());
  out += bytes;
}

template <class T>
void fixed(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian host
  out.append(b, sizeof(T));
}

double now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  static const Crc32cTable table;
  uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) c = table.t[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string record(const std::string& data) {
  std::string out;
  const uint64_t len = data.size();
  fixed(out, len);
  fixed(out, masked_crc32c(&len, sizeof len));
  out += data;
  fixed(out, masked_crc32c(data.data(), data.size()));
  return out;
}

std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string value_msg;
  bytes_field(value_msg, 1, tag);   // Summary.Value.tag
  varint(value_msg, (2 << 3) | 5);  // Summary.Value.simple_value (float)
  fixed(value_msg, value);
  std::string summary;
  bytes_field(summary, 1, value_msg);  // Summary.value
  std::string event;
  varint(event, (1 << 3) | 1);  // Event.wall_time (double)
  fixed(event, wall_time);
  varint(event, 2 << 3);  // Event.step (int64)
  varint(event, static_cast<uint64_t>(step));
  bytes_field(event, 5, summary);  // Event.summary
  return event;
}

std::string version_event(double wall_time) {
  std::string event;
  varint(event, (1 << 3) | 1);
  fixed(event, wall_time);
  bytes_field(event, 3, "brain.Event:2");  // Event.file_version
  return event;
}
}  // namespace tensorboard

TensorBoardLogger::TensorBoardLogger(TensorBoardLoggerOptions options)
    : MetricFileLogger(options.dir.empty() ? "" : (fs::path(options.dir) / "events").string(),
                       "tensorboard/events") {}

std::string TensorBoardLogger::header() const {
  return tensorboard::record(tensorboard::version_event(tensorboard::now()));
}

std::string TensorBoardLogger::row(int64_t, int64_t step, const std::string& name, double value) const {
  return tensorboard::record(tensorboard::scalar_event(tensorboard::now(), step, name, static_cast<float>(value)));
}

std::string TensorBoardLogger::next_path(const std::string& resolved_default) {
  const fs::path dir = fs::path(resolved_default).parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  // Earlier files may hold steps that were re-run after a resume: replace them.
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().filename().string().find("tfevents") != std::string::npos) fs::remove(e.path(), ec);
  }
  const auto secs = static_cast<long long>(tensorboard::now());
  return (dir / ("events.out.tfevents." + std::to_string(secs) + ".cairn." + std::to_string(++files_))).string();
}

}  // namespace cairn
