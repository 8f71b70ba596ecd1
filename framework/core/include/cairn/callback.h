// Callback: an object that reacts to loop events.
//
// Override only the hooks you need. A callback with state returns it from
// state_dict(); the checkpoint saves it under `callbacks[key()]`, so key()
// must identify the instance: two checkpoint callbacks with different monitors
// have different keys and never overwrite each other's state.
//
//   struct CountBatches : cairn::Callback {
//     int64_t n = 0;
//     std::string key() const override { return "CountBatches"; }
//     void on_batch_end(cairn::Loop&) override { ++n; }
//     cairn::Value state_dict() const override { auto d = cairn::Value::dict(); d.set("n", n); return d; }
//     void load_state_dict(const cairn::Value& s) override { n = s.at("n").to_int(); }
//   };
#pragma once

#include "cairn/events.h"
#include "cairn/stateful.h"

#include <string>
#include <vector>

namespace cairn {

class Loop;

class Callback : public Stateful {
 public:
  ~Callback() override = default;

  //! Stable identity in checkpoints: class name plus identifying options, and
  //! only those: an option a user may change between runs (a cadence, a
  //! patience) must not be part of it, or its saved state is not found.
  virtual std::string key() const = 0;
  //! Whether the state saved under `saved_key` is this callback's: key()
  //! itself, or a key an older cairn used for it. Saved state nothing claims
  //! stops a resume (Loop: UnclaimedState).
  virtual bool claims(const std::string& saved_key) const { return saved_key == key(); }
  //! The slot group every hook of this callback runs in.
  virtual Order order() const { return Order::normal; }
  //! In a run of several processes, a callback that only writes files or the
  //! terminal (loggers, progress) runs on rank 0 alone. The default (false)
  //! runs it on every rank: callbacks whose state is saved, or that stop the
  //! run, must see the same events everywhere (they see the same reduced metrics).
  virtual bool rank_zero_only() const { return false; }

  //! Whether this callback needs state().batch_loss current at this
  //! batch_end (the loss is otherwise read from the device only every
  //! log_every_n_steps steps). The checkpoint callback asks on the steps it
  //! saves, so TerminateOnNaN sees a NaN before it could be saved.
  virtual bool needs_batch_loss(const Loop& loop) const { (void)loop; return false; }
  virtual void on_fit_begin(Loop&) {}
  virtual void on_epoch_begin(Loop&) {}
  virtual void on_batch_begin(Loop&) {}
  virtual void on_after_backward(Loop&) {}
  virtual void on_before_optimizer_step(Loop&) {}
  virtual void on_batch_end(Loop&) {}
  virtual void on_validation_begin(Loop&) {}
  virtual void on_validation_batch_end(Loop&) {}
  virtual void on_validation_end(Loop&) {}
  virtual void on_epoch_end(Loop&) {}
  virtual void on_test_begin(Loop&) {}
  virtual void on_test_batch_end(Loop&) {}
  virtual void on_test_end(Loop&) {}
  virtual void on_fit_end(Loop&) {}
  //! A step threw; Loop::current_exception() holds it. The exception is rethrown after.
  virtual void on_exception(Loop&) {}
  //! A checkpoint is being assembled (Loop::pending_checkpoint() may be amended).
  virtual void on_save_checkpoint(Loop&) {}
  //! State was restored from a checkpoint (rewrite derived files here).
  virtual void on_load_checkpoint(Loop&) {}

  //! The durable checkpoint file with this callback's best monitored value
  //! ("" when it keeps none; a save in flight is finished first). fit()'s
  //! test pass (TrainerOptions::test_ckpt) calls it on every callback first;
  //! for one with a checkpoint_dir() it then takes choose(..., "best") of
  //! that folder (the same file, as `cairn test --ckpt best` reads it), for
  //! one without, this file.
  virtual std::string best_checkpoint(Loop& loop) { (void)loop; return ""; }
  //! The folder this callback writes checkpoints to ("" for callbacks that do not);
  //! `cairn fit --resume auto` looks there.
  virtual std::string checkpoint_dir(const Loop& loop) const { (void)loop; return ""; }
  //! The metrics this callback decides by ("valid/acc"): the Trainer refuses
  //! a monitor its run cannot log before training, and stops the run when
  //! one has not appeared by the end of the first epoch that validated.
  virtual std::vector<std::string> monitors() const { return {}; }

  Value state_dict() const override { return Value(); }
  void load_state_dict(const Value&) override {}
};

}  // namespace cairn
