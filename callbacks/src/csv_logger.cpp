#include "cairn/callbacks/csv_logger.h"

#include "cairn/json.h"
#include "cairn/loop.h"

#include <charconv>
#include <cmath>
#include <filesystem>
#include <stdexcept>

namespace cairn {

namespace fs = std::filesystem;

namespace {
using json::shortest;
}  // namespace

std::string csv_row(int64_t epoch, int64_t step, const std::string& name, double value) {
  const auto parts = MetricLog::split_name(name);
  return std::to_string(epoch) + "," + std::to_string(step) + "," + parts.first + "," + parts.second + "," +
         shortest(value) + "\n";
}

std::string CsvLogger::row(int64_t epoch, int64_t step, const std::string& name, double value) const {
  return csv_row(epoch, step, name, value);
}

std::string JsonlLogger::row(int64_t epoch, int64_t step, const std::string& name, double value) const {
  return "{\"epoch\": " + std::to_string(epoch) + ", \"step\": " + std::to_string(step) +
         ", \"name\": " + json::quote(name) + ", \"value\": " + json::number(value) + "}\n";
}

MetricFileLogger::MetricFileLogger(std::string path, std::string default_name)
    : requested_(std::move(path)), default_name_(std::move(default_name)) {}

MetricFileLogger::~MetricFileLogger() {
  if (file_) std::fclose(file_);
}

std::string MetricFileLogger::next_path(const std::string& resolved_default) { return resolved_default; }

void MetricFileLogger::rewrite(Loop& loop) {
  path_ = next_path(!requested_.empty()
                        ? requested_
                        : (fs::path(loop.run_dir().empty() ? "." : loop.run_dir()) / default_name_).string());
  if (file_) std::fclose(file_);
  file_ = nullptr;
  const fs::path p(path_);
  std::error_code ec;
  if (p.has_parent_path()) fs::create_directories(p.parent_path(), ec);
  // Write the whole log to a temp file and rename, so a crash never leaves a half file.
  const std::string tmp = path_ + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + tmp);
  auto put = [](std::FILE* out, const std::string& bytes) { std::fwrite(bytes.data(), 1, bytes.size(), out); };
  put(f, header());
  const auto& names = loop.metrics().names();
  for (const auto& r : loop.metrics().rows()) put(f, row(r.point.epoch, r.point.step, names[r.series], r.point.value));
  std::fclose(f);
  fs::rename(tmp, path_);
  written_ = loop.metrics().rows().size();
  file_ = std::fopen(path_.c_str(), "a");
  if (!file_) throw std::runtime_error("cannot append to " + path_);
}

void MetricFileLogger::append(Loop& loop) {
  if (!file_) return;
  const auto& rows = loop.metrics().rows();
  if (written_ >= rows.size()) return;
  const auto& names = loop.metrics().names();
  for (; written_ < rows.size(); ++written_) {
    const auto& r = rows[written_];
    const std::string bytes = row(r.point.epoch, r.point.step, names[r.series], r.point.value);
    std::fwrite(bytes.data(), 1, bytes.size(), file_);
  }
  std::fflush(file_);
}

}  // namespace cairn
