// Stateful: the one interface for everything a checkpoint saves.
#pragma once

#include "cairn/value.h"

namespace cairn {

class Stateful {
 public:
  virtual ~Stateful() = default;
  //! The object's state as a Value tree (None when it has no state).
  virtual Value state_dict() const = 0;
  //! Restores what state_dict() returned; throws std::runtime_error on a mismatch.
  virtual void load_state_dict(const Value& state) = 0;
};

}  // namespace cairn
