// Config drift: what changed between the config a checkpoint was trained with
// (its `hyper_parameters`) and the config of the run that resumes it.
//
// A change to a key that alters the model, the data, the sample order or the
// meaning of the saved position is unsafe: `seed`, `data.*`, `model.*`,
// `optimizer.*` (the checkpoint's optimizer options would silently win),
// `scheduler.*`, `trainer.accumulate_grad_batches` and gradient clipping.
// `trainer.max_epochs` is unsafe when a schedule's length was derived from it
// (cosine or one_cycle without `total_steps`). Everything else (logging,
// callbacks, progress, threads, device, run folder) is safe. A key missing on
// one side equals null.
#pragma once

#include "cairn/value.h"

#include <string>
#include <vector>

namespace cairn {

struct ConfigChange {
  std::string key;        //!< dotted path, e.g. data.batch_size or callbacks[1].patience
  std::string old_value;  //!< as YAML-ish text; "null" when absent
  std::string new_value;
  bool safe = true;
  std::string why;        //!< for unsafe changes: what it would break
  //! "key: old -> new"
  std::string line() const;
};

//! Every difference between `saved` and `current` (resolved configs as Values), sorted by key.
std::vector<ConfigChange> diff_configs(const Value& saved, const Value& current);

}  // namespace cairn
