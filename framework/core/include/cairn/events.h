// Events: what happens in a training loop, in the order it happens.
//
// Each event is one Boost.Signals2 signal. Slots are ordered by group so that
// metric producers run first, ordinary callbacks next, monitors (early
// stopping) after them and checkpoint savers last: a checkpoint always holds
// the state that every other callback left after the step.
//
//   auto c = loop.on(cairn::Event::batch_end, [](cairn::Loop& l) { ... });
//   c.disconnect();
#pragma once

#include <boost/signals2/connection.hpp>
#include <boost/signals2/dummy_mutex.hpp>
#include <boost/signals2/signal_type.hpp>

#include <array>
#include <functional>

namespace cairn {

class Loop;

enum class Event {
  fit_begin,
  epoch_begin,
  batch_begin,
  after_backward,
  before_optimizer_step,
  batch_end,
  validation_begin,
  validation_batch_end,
  validation_end,
  epoch_end,
  test_begin,
  test_batch_end,
  test_end,
  fit_end,
  exception,
  save_checkpoint,
  load_checkpoint,
};
constexpr size_t kEventCount = static_cast<size_t>(Event::load_checkpoint) + 1;

//! The event's name in snake_case, e.g. "batch_end".
const char* event_name(Event e);

//! Slot groups, run in this order for every event.
enum class Order : int {
  weights = -1,  //!< replaces the model's weights (SWA), before anything measures them
  producer = 0,  //!< computes metrics others read (e.g. a custom metric)
  normal = 1,    //!< loggers, progress, most callbacks
  monitor = 2,   //!< reads final metrics and may request a stop (early stopping)
  saver = 3,     //!< writes checkpoints after everything else ran
};

//! Handle of one connected slot; disconnect() removes it. Copyable; the slot
//! stays connected when the handle is dropped (use ScopedConnection for RAII).
class Connection {
 public:
  Connection() = default;
  explicit Connection(boost::signals2::connection c) : c_(std::move(c)) {}
  void disconnect() { c_.disconnect(); }
  bool connected() const { return c_.connected(); }

 private:
  boost::signals2::connection c_;
};

//! Disconnects on destruction.
class ScopedConnection {
 public:
  ScopedConnection() = default;
  ScopedConnection(Connection c) : c_(std::move(c)) {}
  ScopedConnection(ScopedConnection&& o) noexcept : c_(std::move(o.c_)) { o.c_ = Connection(); }
  ScopedConnection& operator=(ScopedConnection&& o) noexcept {
    if (this != &o) { c_.disconnect(); c_ = std::move(o.c_); o.c_ = Connection(); }
    return *this;
  }
  ~ScopedConnection() { c_.disconnect(); }
  void disconnect() { c_.disconnect(); }
  bool connected() const { return c_.connected(); }

 private:
  Connection c_;
};

class EventBus {
 public:
  using Slot = std::function<void(Loop&)>;

  Connection connect(Event e, Slot slot, Order order = Order::normal);
  void emit(Event e, Loop& loop);
  size_t slot_count(Event e) const;

 private:
  // Single-threaded emission: no mutex per emit.
  using Signal = boost::signals2::signal_type<
      void(Loop&), boost::signals2::keywords::group_type<int>,
      boost::signals2::keywords::mutex_type<boost::signals2::dummy_mutex>>::type;
  std::array<Signal, kEventCount> signals_;
};

}  // namespace cairn
