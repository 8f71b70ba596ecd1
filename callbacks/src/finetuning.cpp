#include "cairn/callbacks/finetuning.h"

#include "cairn/loop.h"

#include <torch/torch.h>

#include <iostream>
#include <regex>
#include <stdexcept>

namespace cairn {

Finetuning::Finetuning(FinetuningOptions options) : options_(std::move(options)) {
  if (options_.patterns.empty()) throw std::invalid_argument("finetuning needs the patterns of the frozen parameters");
  if (options_.unfreeze_at_epoch < 0) throw std::invalid_argument("unfreeze_at_epoch must be >= 0");
  for (const auto& p : options_.patterns) {
    try {
      std::regex re(p, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw std::invalid_argument("pattern '" + p + "' is not a valid regex: " + e.what());
    }
  }
}

void Finetuning::set_trainable(Loop& loop, bool on) {
  if (!loop.model()) throw std::logic_error("finetuning needs a tracked model (loop.track(model))");
  std::vector<std::regex> res;
  for (const auto& p : options_.patterns) res.emplace_back(p, std::regex::ECMAScript);
  int64_t n = 0;
  for (auto& p : loop.model()->named_parameters(true)) {
    bool match = false;
    for (const auto& re : res) match = match || std::regex_search(p.key(), re);
    if (!match) continue;
    p.value().requires_grad_(on);
    ++n;
  }
  if (n == 0) throw std::invalid_argument("finetuning: no parameter matches its patterns");
}

void Finetuning::on_fit_begin(Loop& loop) {
  // The gradient buckets of a data-parallel run are made for the parameters
  // that train at its start: parameters unfrozen later would train unsynchronised.
  if (loop.process_group()) {
    throw std::invalid_argument("finetuning: unfreezing in a run of several processes is not supported yet (the "
                                "gradient buckets hold the parameters that train when the run starts, so unfrozen "
                                "ones would train unsynchronised); run it with one process, or keep trainer.freeze "
                                "without the finetuning callback");
  }
  // A resume after the unfreeze: trainable from the first batch (the
  // optimizer's state for them came with the checkpoint).
  set_trainable(loop, unfrozen_ || loop.state().epoch >= options_.unfreeze_at_epoch);
  if (loop.state().epoch >= options_.unfreeze_at_epoch) unfrozen_ = true;
}

void Finetuning::on_epoch_begin(Loop& loop) {
  if (unfrozen_ || loop.state().epoch < options_.unfreeze_at_epoch) return;
  set_trainable(loop, true);
  unfrozen_ = true;
  if (loop.is_rank_zero()) {
    std::cout << "cairn: finetuning: epoch " << loop.state().epoch << " unfreezes the parameters matching";
    for (const auto& p : options_.patterns) std::cout << " '" << p << "'";
    std::cout << "\n";
  }
}

Value Finetuning::state_dict() const {
  Value d = Value::dict();
  d.set("unfrozen", unfrozen_);
  d.set("unfreeze_at_epoch", options_.unfreeze_at_epoch);
  return d;
}

void Finetuning::load_state_dict(const Value& state) { unfrozen_ = state.at("unfrozen").to_bool(); }

}  // namespace cairn
