// TensorBoardLogger: the metric log as TensorBoard event files.
//
// Writes `<run dir>/tensorboard/events.out.tfevents.<time>.cairn.<n>`: TFRecord
// framing (length, masked CRC32C of the length, data, masked CRC32C of the
// data) around Event protobuf messages with scalar summaries (tag = metric
// name, step = global step). `tensorboard --logdir runs` shows the curves. On
// resume a new file is written from the checkpoint's metric log and the old
// ones are removed, so no step appears twice.
#pragma once

#include "cairn/callbacks/csv_logger.h"

#include <cstdint>
#include <string>

namespace cairn {

struct TensorBoardLoggerOptions {
  //! Folder for the event files; "" means `<run dir>/tensorboard`.
  std::string dir;
};

class TensorBoardLogger : public MetricFileLogger {
 public:
  explicit TensorBoardLogger(TensorBoardLoggerOptions options = {});
  std::string key() const override { return "TensorBoardLogger"; }

 protected:
  std::string header() const override;
  std::string row(int64_t epoch, int64_t step, const std::string& name, double value) const override;
  std::string next_path(const std::string& resolved_default) override;

 private:
  int64_t files_ = 0;  //!< event files started by this logger
};

namespace tensorboard {
//! CRC-32C (Castagnoli), as TFRecord uses.
uint32_t crc32c(const void* data, size_t n);
//! TFRecord's masked CRC.
uint32_t masked_crc32c(const void* data, size_t n);
//! One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
std::string record(const std::string& data);
//! An Event message with a scalar summary.
std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
//! The first Event of a file: file_version "brain.Event:2".
std::string version_event(double wall_time);
}  // namespace tensorboard

}  // namespace cairn
