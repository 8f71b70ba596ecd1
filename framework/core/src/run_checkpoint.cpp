// A run's checkpoint dictionary, written and read by the Loop (layout:
// cairn/run_checkpoint.h; every other reader goes through checkpoint_view.cpp).
#include "cairn/run_checkpoint.h"

#include "cairn/checkpoint_file.h"
#include "cairn/distributed.h"
#include "cairn/loop.h"
#include "cairn/optim_state.h"
#include "cairn/rng.h"
#include "cairn/schedulers.h"

#include <torch/torch.h>

#include <iostream>
#include <new>

#ifndef CAIRN_VERSION
#define CAIRN_VERSION "0.0.0"
#endif

#include <filesystem>

namespace cairn {


Value Loop::make_checkpoint(bool emit_event) {
  pending_ = Value::dict();
  Value& c = pending_;
  c.set("format_version", run_checkpoint::kFormatVersion);
  {
    Value sv = Value::dict();
    sv.set("loop", run_checkpoint::kLoopSectionVersion);
    sv.set("metrics", run_checkpoint::kMetricsSectionVersion);
    sv.set("callbacks", run_checkpoint::kCallbacksSectionVersion);
    c.set("section_versions", std::move(sv));
  }
  c.set("cairn_version", CAIRN_VERSION);
  c.set("epoch", state_.resume_epoch());
  c.set("global_step", state_.global_step);
  c.set("batch_in_epoch", state_.resume_batch());
  c.set("state_dict", model_ ? model_state(*model_) : Value::dict());
  Value opts = Value::list();
  for (auto* o : optimizers_) opts.push_back(optimizer_state_dict(*o));
  c.set("optimizer_states", std::move(opts));
  Value scheds = Value::list();
  for (auto* s : schedulers_) scheds.push_back(s->state_dict());
  c.set("lr_schedulers", std::move(scheds));
  Value rng = capture_rng_states(generators_);
  if (group_) {
    // Every rank's generators, gathered to the file rank 0 writes; rank 0's
    // stay at the top level too, where a one-process resume reads them.
    Value ranks = Value::list();
    for (const auto& blob : group_->allgather_bytes(encode_rng_states(rng))) ranks.push_back(decode_rng_states(blob));
    rng.set("ranks", std::move(ranks));
  }
  c.set("rng_states", std::move(rng));
  c.set("metrics", metrics_.state_dict());
  c.set("values", values_.raw());
  Value cbs = Value::dict();
  for (const auto& cb : callbacks_) {
    Value s = cb->state_dict();
    if (!s.is_none()) cbs.set(cb->key(), std::move(s));
  }
  c.set("callbacks", std::move(cbs));
  c.set("hyper_parameters", hyper_parameters_.is_none() ? Value::dict() : hyper_parameters_);
  Value loop = Value::dict();
  loop.set("finished", state_.finished);
  loop.set("stop_reason", state_.stop.requested ? Value(state_.stop.reason) : Value());
  loop.set("threads", static_cast<int64_t>(at::get_num_threads()));
  loop.set("world_size", static_cast<int64_t>(world_size_));
  loop.set("global_batch_size", state_.global_batch_size);
  {
    int64_t samples = state_.resume_batch() * state_.global_batch_size;
    if (state_.train_samples > 0) samples = std::min(samples, state_.train_samples);
    loop.set("samples_in_epoch", samples);
  }
  loop.set("accumulators", metrics_.accumulator_state());
  loop.set("metric_states", metrics_.stats_state());
  Value resumes = Value::list();
  for (const auto& r : resume_points_) resumes.push_back(Value(std::vector<int64_t>{r.first, r.second}));
  loop.set("resumes", std::move(resumes));
  flush_resume_warnings();
  loop.set("resume_warnings", Value(resume_warnings_));
  Value objects = Value::dict();
  for (const auto& kv : objects_) objects.set(kv.first, kv.second->state_dict());
  loop.set("objects", std::move(objects));
  c.set("loop", std::move(loop));
  for (const auto& kv : sections_) c.set(kv.first, kv.second->state_dict());
  if (emit_event) emit(Event::save_checkpoint);
  Value out = std::move(pending_);
  pending_ = Value();
  return out;
}

void Loop::load_checkpoint(const Value& c, const std::string& source) {
  const std::string from = source.empty() ? std::string("the checkpoint") : source;
  // Every section is read through checks of its own; what still throws
  // something else (a missing key, a tensor of another kind or size) is a
  // checkpoint that does not fit this run, named by its section: exit 3,
  // never a crash or an "unexpected error".
  std::string section = "the top level";
  bool checked = true;  // false while the load_checkpoint callbacks run
  try {
    const int64_t version = c.at("format_version").to_int();
    if (version > run_checkpoint::kFormatVersion) {
      throw CheckpointMismatch(from + " has format_version " + std::to_string(version) +
                               "; this cairn reads up to " + std::to_string(run_checkpoint::kFormatVersion));
    }
    if (const Value* sv = c.find("section_versions")) {
      for (const auto& [name, mine] : {std::pair<const char*, int64_t>{"loop", run_checkpoint::kLoopSectionVersion},
                                       {"metrics", run_checkpoint::kMetricsSectionVersion},
                                       {"callbacks", run_checkpoint::kCallbacksSectionVersion}}) {
        const Value* v = sv->find(name);
        if (v && v->is_number() && v->to_int() > mine) {
          throw CheckpointMismatch(from + ": its " + name + " section has version " + std::to_string(v->to_int()) +
                                   "; this cairn reads up to " + std::to_string(mine) + " (a newer cairn wrote it)");
        }
      }
    }
    section = "position (epoch, batch_in_epoch, global_step)";
    {
      // Before anything is loaded: a position that cannot be one leaves the loop as it was.
      const run_checkpoint::View at(c, from);
      if (at.epoch() < 0 || at.batch_in_epoch() < 0 || at.global_step() < 0) {
        throw CheckpointMismatch(from + " holds a negative position: epoch " + std::to_string(at.epoch()) +
                                 ", batch_in_epoch " + std::to_string(at.batch_in_epoch()) + ", global_step " +
                                 std::to_string(at.global_step()));
      }
    }
    section = "state_dict";
    if (model_) load_model_state(*model_, c.at("state_dict"), true);
    section = "optimizer_states";
    const Value& opts = c.at("optimizer_states");
    if (opts.size() != optimizers_.size()) {
      throw CheckpointMismatch(from + " has " + std::to_string(opts.size()) + " optimizer(s); this run has " +
                               std::to_string(optimizers_.size()));
    }
    try {
      for (size_t i = 0; i < optimizers_.size(); ++i) load_optimizer_state_dict(*optimizers_[i], opts.items()[i]);
      const Value& scheds = c.at("lr_schedulers");
      if (scheds.size() != schedulers_.size()) {
        throw CheckpointMismatch(from + " has " + std::to_string(scheds.size()) + " scheduler(s); this run has " +
                                 std::to_string(schedulers_.size()));
      }
      for (size_t i = 0; i < schedulers_.size(); ++i) schedulers_[i]->load_state_dict(scheds.items()[i]);
    } catch (const CheckpointMismatch&) {
      throw;
    } catch (const std::exception& e) {
      throw CheckpointMismatch(from + ": " + e.what());
    }
    {
      section = "rng_states";
      const Value& rng = c.at("rng_states");
      const Value* ranks = rng.find("ranks");
      if (ranks && static_cast<size_t>(rank_) < ranks->size()) {
        restore_rng_states(ranks->items()[static_cast<size_t>(rank_)], generators_);
      } else {
        restore_rng_states(rng, generators_);
        if (rank_ > 0) {
          // More ranks than the checkpoint's run had: no saved state for this
          // one. Its generators start from a seed of its own (step and rank).
          const uint64_t seed = (static_cast<uint64_t>(c.at("global_step").to_int()) << 16) ^ static_cast<uint64_t>(rank_) ^
                                0x9e3779b97f4a7c15ULL;
          torch::manual_seed(seed);
          std::cerr << "cairn: note: rank " << rank_ << " has no RNG state in " << from
                    << " (written by fewer processes); its generators are seeded from the step and the rank\n";
        }
      }
    }
    try {
      section = "metrics";
      metrics_.load_state_dict(c.at("metrics"));
    } catch (const std::exception& e) {
      throw CheckpointMismatch(from + ": metrics: " + e.what());
    }
    section = "values";
    values_.load(c.at("values"));
    section = "callbacks";
    const Value& cbs = c.at("callbacks");
    std::vector<bool> claimed(cbs.keys().size(), false);
    for (const auto& cb : callbacks_) {
      for (size_t i = 0; i < cbs.keys().size(); ++i) {
        if (claimed[i] || !cb->claims(cbs.keys()[i].to_string())) continue;
        claimed[i] = true;
        try {
          cb->load_state_dict(cbs.values()[i]);
        } catch (const CheckpointMismatch& e) {
          throw CheckpointMismatch(from + ": " + e.what());
        } catch (const std::exception& e) {  // a missing key, a wrong type: a file that is not this callback's state
          throw CheckpointMismatch(from + ": callbacks['" + cbs.keys()[i].to_string() + "']: " + e.what());
        }
        break;
      }
    }
    // Saved state that no callback of this run claims would vanish with the
    // next save: a removed callback, or one whose identity changed.
    std::vector<std::string> orphans;
    for (size_t i = 0; i < claimed.size(); ++i) {
      if (!claimed[i]) orphans.push_back(cbs.keys()[i].to_string());
    }
    if (!orphans.empty()) {
      std::string names;
      for (const auto& o : orphans) names += (names.empty() ? "" : ", ") + o;
      if (!allow_unclaimed_state_) {
        throw UnclaimedState(from + " holds the state of callback(s) this run does not have: " + names +
                             " (their best values, top-k lists or counters would be dropped at the next save); add "
                             "the callback(s) back as they were, or pass --allow-config-change to drop that state");
      }
      add_resume_warning("dropped the saved state of callback(s) this run does not have: " + names);
      std::cerr << "cairn: warning: dropping the saved state of " << names << " (--allow-config-change)\n";
    }
    section = "loop";
    const Value& loop = c.at("loop");
    metrics_.load_accumulator_state(loop.at("accumulators"));
    // Older checkpoints have no running statistics: nothing was measured that way.
    const Value* stats = loop.find("metric_states");
    metrics_.load_stats_state(stats ? *stats : Value::dict());
    // A metric the config no longer has (a change --allow-config-change let through).
    for (const auto& name : metrics_.drop_undeclared_stats()) {
      add_resume_warning("dropped the running statistics of metric '" + name + "', which this run does not measure");
    }
    resume_points_.clear();
    for (const auto& r : loop.at("resumes").items()) {
      const auto v = r.to_int_list();
      resume_points_.emplace_back(v.at(0), v.at(1));
    }
    resume_warnings_.clear();
    if (const Value* w = loop.find("resume_warnings")) {
      for (const auto& item : w->items()) resume_warnings_.push_back(item.to_string());
    }
    for (const auto& kv : sections_) {
      section = kv.first;  // grad_scaler, or a section of the user's (Loop::track_section)
      if (const Value* s = c.find(kv.first)) {
        kv.second->load_state_dict(*s);
      } else {
        add_resume_warning("the checkpoint has no '" + kv.first + "': it starts from its initial state");
      }
    }
    section = "loop.objects";
    if (const Value* objects = loop.find("objects")) {
      for (const auto& kv : objects_) {
        if (const Value* s = objects->find(kv.first)) kv.second->load_state_dict(*s);
      }
    }
    section = "position (epoch, batch_in_epoch, global_step)";
    state_.epoch = c.at("epoch").to_int();
    state_.batch_in_epoch = c.at("batch_in_epoch").to_int();
    if (const Value* g = loop.find("global_batch_size")) {
      // The position is kept in samples: another split of the batch over the
      // processes continues at the same sample, a different global batch only
      // where its batches line up.
      const int64_t saved = g->to_int(), now = state_.global_batch_size;
      if (saved > 0 && now > 0 && saved != now && state_.batch_in_epoch > 0) {
        const int64_t samples = loop.at("samples_in_epoch").to_int();
        if (state_.train_samples > 0 && samples >= state_.train_samples) {
          state_.batch_in_epoch = (state_.train_samples + now - 1) / now;
        } else if (samples % now == 0) {
          state_.batch_in_epoch = samples / now;
        } else {
          throw CheckpointMismatch(from + " stopped after " + std::to_string(samples) + " samples of epoch " +
                                   std::to_string(state_.epoch) + " with a global batch of " + std::to_string(saved) +
                                   "; this run's global batch (" + std::to_string(now) +
                                   ") does not divide that: keep the global batch (batch_size x processes) or resume "
                                   "from a checkpoint at an epoch's end");
        }
      }
    }
    if (state_.batches_per_epoch > 0 && state_.batch_in_epoch > state_.batches_per_epoch) {
      // Past this run's epoch (its data shrank: a change the drift check let
      // through): the epoch is over, as the sampler would find; said, not silent.
      add_resume_warning("batch_in_epoch " + std::to_string(state_.batch_in_epoch) + " is past this run's " +
                         std::to_string(state_.batches_per_epoch) + " batches per epoch: epoch " +
                         std::to_string(state_.epoch) + " ends there");
      std::cerr << "cairn: warning: " << from << " stopped at batch " << state_.batch_in_epoch << " of epoch "
                << state_.epoch << ", past this run's " << state_.batches_per_epoch
                << " batches per epoch: the epoch ends there\n";
      state_.batch_in_epoch = state_.batches_per_epoch;
    }
    state_.global_step = c.at("global_step").to_int();
    state_.epoch_finished = false;
    state_.finished = loop.at("finished").to_bool();
    state_.stop = StopRequest{};
    if (state_.finished && loop.at("stop_reason").is_string()) state_.stop.reason = loop.at("stop_reason").to_string();
    const int64_t threads = loop.at("threads").to_int();
    if (threads != at::get_num_threads()) {
      std::cerr << "cairn: warning: " << from << " was written with " << threads << " intra-op thread(s), this run uses "
                << at::get_num_threads() << "; the resumed run will not be bitwise identical to an uninterrupted one\n";
    }
    if (!state_.finished) resume_points_.emplace_back(state_.epoch, state_.global_step);
    flush_resume_warnings();  // those of the check that accepted this resume, at its position
    checked = false;  // the callbacks' own reactions (rewriting metrics.csv, ...): their errors stay theirs
    boundary_ = Boundary{};
    mark_boundary();
    loaded_ = &c;
    try {
      emit(Event::load_checkpoint);
    } catch (...) {
      loaded_ = nullptr;
      throw;
    }
    loaded_ = nullptr;
  } catch (const CheckpointMismatch&) {
    throw;
  } catch (const CheckpointError&) {
    throw;
  } catch (const UnclaimedState&) {
    throw;
  } catch (const CheckpointWriteError&) {  // a full disk, a lost peer, no memory: not the file's fault
    throw;
  } catch (const DistributedError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    if (!checked || std::string(e.what()).find("out of memory") != std::string::npos) throw;
    throw CheckpointMismatch(from + ": " + section + ": " + e.what());
  }
}

}  // namespace cairn
