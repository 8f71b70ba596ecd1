#include "cairn/events.h"

#include "cairn/state.h"

#include <boost/signals2/signal.hpp>

namespace cairn {

const char* event_name(Event e) {
  switch (e) {
    case Event::fit_begin: return "fit_begin";
    case Event::epoch_begin: return "epoch_begin";
    case Event::batch_begin: return "batch_begin";
    case Event::after_backward: return "after_backward";
    case Event::before_optimizer_step: return "before_optimizer_step";
    case Event::batch_end: return "batch_end";
    case Event::validation_begin: return "validation_begin";
    case Event::validation_batch_end: return "validation_batch_end";
    case Event::validation_end: return "validation_end";
    case Event::epoch_end: return "epoch_end";
    case Event::test_begin: return "test_begin";
    case Event::test_batch_end: return "test_batch_end";
    case Event::test_end: return "test_end";
    case Event::fit_end: return "fit_end";
    case Event::exception: return "exception";
    case Event::save_checkpoint: return "save_checkpoint";
    case Event::load_checkpoint: return "load_checkpoint";
  }
  return "?";
}

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::idle: return "idle";
    case Stage::train: return "train";
    case Stage::validate: return "validate";
    case Stage::test: return "test";
  }
  return "?";
}

Connection EventBus::connect(Event e, Slot slot, Order order) {
  return Connection(signals_[static_cast<size_t>(e)].connect(static_cast<int>(order), std::move(slot)));
}

void EventBus::emit(Event e, Loop& loop) { signals_[static_cast<size_t>(e)](loop); }

size_t EventBus::slot_count(Event e) const { return signals_[static_cast<size_t>(e)].num_slots(); }

}  // namespace cairn
