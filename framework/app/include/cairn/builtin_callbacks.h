// Registers cairn's callbacks in the Registry under their YAML names:
// checkpoint, early_stopping, csv_logger, jsonl_logger, tensorboard,
// lr_monitor, terminate_on_nan, timer, progress_bar.
#pragma once

namespace cairn {
class Registry;
//! Idempotent. Call once before parsing experiments that name callbacks.
void register_builtin_callbacks(Registry& registry);
void register_builtin_callbacks();
}  // namespace cairn
