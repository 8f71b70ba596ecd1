#include "cairn/callbacks/csv_logger.h"

#include "cairn/json.h"
#include "cairn/loop.h"

#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unistd.h>
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
  if (!f) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
  int error = 0;
  auto put = [&](const std::string& bytes) {
    if (!error && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) error = errno ? errno : EIO;
  };
  put(header());
  const auto& names = loop.metrics().names();
  for (const auto& r : loop.metrics().rows()) put(row(r.point.epoch, r.point.step, names[r.series], r.point.value));
  if (std::fflush(f) != 0 && !error) error = errno;
  if (std::fclose(f) != 0 && !error) error = errno;
  if (error) {
    // The file is derived from the checkpoint's metric log: the old one stays,
    // and the next resume writes it again. Said, not fatal to the run.
    fs::remove(tmp, ec);
    warn(std::string("cannot write ") + tmp + ": " + std::strerror(error) + " (" + path_ +
         " is left as it was and no longer appended to; a resume writes it again from the checkpoint)");
    return;
  }
  fs::rename(tmp, path_, ec);
  if (ec) {
    fs::remove(tmp, ec);
    warn("cannot rename " + tmp + " to " + path_ + ": " + ec.message());
    return;
  }
  written_ = loop.metrics().rows().size();
  file_ = std::fopen(path_.c_str(), "a");
  if (!file_) throw std::runtime_error("cannot append to " + path_ + ": " + std::strerror(errno));
  whole_bytes_ = fs::file_size(path_, ec);
}

void MetricFileLogger::warn(const std::string& what) {
  if (warned_) return;  // once per logger: a full disk must not flood the console
  warned_ = true;
  std::fprintf(stderr, "cairn: warning: %s\n", what.c_str());
}

void MetricFileLogger::append(Loop& loop) {
  if (!file_) return;
  const auto& rows = loop.metrics().rows();
  if (written_ >= rows.size()) return;
  const auto& names = loop.metrics().names();
  for (; written_ < rows.size(); ++written_) {
    const auto& r = rows[written_];
    const std::string bytes = row(r.point.epoch, r.point.step, names[r.series], r.point.value);
    if (std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) break;
  }
  if (std::fflush(file_) != 0 || std::ferror(file_)) {
    // No half rows after a failure: the file is cut back to the whole rows
    // written before it, and not appended to again.
    const int e = errno ? errno : EIO;
    std::fclose(file_);  // (it may write a little more of its buffer: cut below)
    file_ = nullptr;
    if (::truncate(path_.c_str(), static_cast<off_t>(whole_bytes_)) != 0) {
      warn("writing " + path_ + " failed: " + std::strerror(e) + ", and cutting it back to whole rows failed too: " +
           std::strerror(errno));
      return;
    }
    warn("writing " + path_ + " failed: " + std::strerror(e) +
         " (it is no longer appended to; every value stays in the checkpoints' metric log, and a resume writes "
         "the file again from it)");
    return;
  }
  const long at = std::ftell(file_);
  if (at >= 0) whole_bytes_ = static_cast<uintmax_t>(at);
}

}  // namespace cairn
