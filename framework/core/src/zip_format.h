// Signatures and limits of the zip layout shared by cairn's zip writer and
// reader (see zip_writer.h, zip_reader.h). Private (not installed).
#pragma once

#include <cstdint>

namespace cairn {
namespace zip {
namespace format {
constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEnd = 0x06054b50;
constexpr uint32_t kEnd64 = 0x06064b50;
constexpr uint32_t kEnd64Locator = 0x07064b50;
constexpr uint16_t kZip64Extra = 0x0001;  //!< id of the zip64 extra field
constexpr uint32_t kMax32 = 0xffffffffu;  //!< a 32-bit field that defers to the zip64 field
constexpr uint16_t kMax16 = 0xffffu;
}  // namespace format
}  // namespace zip
}  // namespace cairn
