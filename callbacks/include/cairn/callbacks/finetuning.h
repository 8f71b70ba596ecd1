// Finetuning: unfreezes parameters frozen by cairn::freeze at an epoch (as
// Lightning's BackboneFinetuning unfreezes a backbone), at the learning rate
// their parameter group was given. Its state (whether it unfroze) is in
// every checkpoint, so a run resumed on either side of the unfreeze ends
// bit-identical to an uninterrupted one.
//
//   cairn::freeze(*model, *optimizer, {"^0\\.", "^1\\."}, /*lr=*/1e-4);
//   trainer.add_callback(std::make_shared<cairn::Finetuning>(cairn::FinetuningOptions{{"^0\\.", "^1\\."}, 2}));
//
// YAML: trainer.freeze: [patterns] and callbacks: [{name: finetuning,
// unfreeze_at_epoch: 2, lr: 1e-4}] (the frozen group's rate; default a tenth
// of optimizer.lr).
#pragma once

#include "cairn/callback.h"

#include <string>
#include <vector>

namespace cairn {

struct FinetuningOptions {
  std::vector<std::string> patterns;  //!< regexes on parameter names (those frozen)
  int64_t unfreeze_at_epoch = 1;      //!< 0-based epoch whose first batch trains them
  double lr = 0;                      //!< the frozen group's rate (YAML: set it up via freeze(); informative here)
};

class Finetuning : public Callback {
 public:
  explicit Finetuning(FinetuningOptions options);
  std::string key() const override { return "Finetuning"; }
  Order order() const override { return Order::producer; }
  void on_fit_begin(Loop& loop) override;
  void on_epoch_begin(Loop& loop) override;
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

  const FinetuningOptions& options() const { return options_; }
  bool unfrozen() const { return unfrozen_; }

 private:
  void set_trainable(Loop& loop, bool on);
  FinetuningOptions options_;
  bool unfrozen_ = false;
};

}  // namespace cairn
