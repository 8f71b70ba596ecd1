#include "cairn/callbacks/csv_logger.h"

#include "cairn/loop.h"

#include <charconv>
#include <filesystem>
#include <stdexcept>

namespace cairn {

namespace fs = std::filesystem;

std::string csv_row(int64_t epoch, int64_t step, const std::string& name, double value) {
  const auto parts = MetricLog::split_name(name);
  char num[64];
  auto r = std::to_chars(num, num + sizeof num, value);
  std::string row = std::to_string(epoch) + "," + std::to_string(step) + "," + parts.first + "," + parts.second + ",";
  row.append(num, r.ptr);
  row += "\n";
  return row;
}

CsvLogger::CsvLogger(CsvLoggerOptions options) : options_(std::move(options)) {}

CsvLogger::~CsvLogger() {
  if (file_) std::fclose(file_);
}

void CsvLogger::rewrite(Loop& loop) {
  if (path_.empty()) {
    path_ = !options_.path.empty() ? options_.path
                                   : (fs::path(loop.run_dir().empty() ? "." : loop.run_dir()) / "metrics.csv").string();
  }
  if (file_) std::fclose(file_);
  file_ = nullptr;
  const fs::path p(path_);
  std::error_code ec;
  if (p.has_parent_path()) fs::create_directories(p.parent_path(), ec);
  // Write the whole log to a temp file and rename, so a crash never leaves a half file.
  const std::string tmp = path_ + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + tmp);
  std::fputs("epoch,step,split,name,value\n", f);
  const auto& names = loop.metrics().names();
  for (const auto& r : loop.metrics().rows()) {
    std::fputs(csv_row(r.point.epoch, r.point.step, names[r.series], r.point.value).c_str(), f);
  }
  std::fclose(f);
  fs::rename(tmp, path_);
  written_ = loop.metrics().rows().size();
  file_ = std::fopen(path_.c_str(), "a");
  if (!file_) throw std::runtime_error("cannot append to " + path_);
}

void CsvLogger::on_fit_begin(Loop& loop) { rewrite(loop); }
void CsvLogger::on_load_checkpoint(Loop& loop) { rewrite(loop); }

void CsvLogger::append(Loop& loop) {
  if (!file_) return;
  const auto& rows = loop.metrics().rows();
  if (written_ >= rows.size()) return;
  const auto& names = loop.metrics().names();
  for (; written_ < rows.size(); ++written_) {
    const auto& r = rows[written_];
    std::fputs(csv_row(r.point.epoch, r.point.step, names[r.series], r.point.value).c_str(), file_);
  }
  std::fflush(file_);
}

}  // namespace cairn
