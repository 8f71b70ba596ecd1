// Fine-tuning: starting from other weights (a pretrained backbone under a new
// head) and training part of the model.
//
//   cairn::WeightsOptions o;
//   o.strict = false;                                  // a new head: its names are left new
//   o.exclude = {"^fc\\."};                            // never take these from the file
//   o.rename = {{"^backbone\\.", "features."}};        // the file's names -> the model's
//   const cairn::WeightsReport r = cairn::load_weights(*model, "pretrained.pt", o);
//   std::cout << r.summary() << "\n";
//   cairn::freeze(*model, optimizer, {"^features\\."}, /*lr=*/1e-4);  // before fit (and before a resume)
//   trainer.add_callback(std::make_shared<cairn::Finetuning>(cairn::FinetuningOptions{...}));
//
// YAML: model.init_from: {path, strict, exclude, rename}, trainer.freeze and
// the `finetuning` callback (docs/yaml.md).
#pragma once

#include "cairn/torch_fwd.h"

#include <string>
#include <utility>
#include <vector>

namespace cairn {

struct WeightsOptions {
  //! Every model name must come from the file and every file name must be the
  //! model's, shapes equal (else CheckpointMismatch listing all). Without it,
  //! what does not fit is skipped and reported; loading nothing is an error.
  bool strict = true;
  //! ECMAScript regexes searched in the file's names (after `rename`): a match is never loaded.
  std::vector<std::string> exclude;
  //! (regex, replacement) pairs applied in order to each of the file's names.
  std::vector<std::pair<std::string, std::string>> rename;
};

//! What load_weights did, by the model's names.
struct WeightsReport {
  std::vector<std::string> loaded;     //!< taken from the file
  std::vector<std::string> excluded;   //!< the file's names an `exclude` pattern matched
  std::vector<std::string> unexpected; //!< the file's names the model lacks
  std::vector<std::string> mismatched; //!< in both, shapes differ ("name (file [a], model [b])")
  std::vector<std::string> left_new;   //!< the model's names the file did not provide
  //! One line: "loaded 4 tensors; skipped 2 (excluded: ...); left new 2 (fc.weight, fc.bias)".
  std::string summary() const;
};

//! Initialises `model` from a torch.save state_dict or a cairn checkpoint
//! (its state_dict), filtered and renamed by `options`. Throws
//! CheckpointMismatch (strict and anything off, or nothing loaded) and
//! CheckpointError (an unreadable file); std::invalid_argument for a bad regex.
WeightsReport load_weights(torch::nn::Module& model, const std::string& path, const WeightsOptions& options);

//! Freezes the parameters whose names match any of `patterns` (requires_grad
//! false) and moves them into a parameter group of their own at the end of
//! `optimizer` with learning rate `lr` (the rate they train at once a
//! Finetuning callback unfreezes them; schedulers treat the group as any
//! other). Call it on a fresh optimizer, before fit or a resume: the groups
//! are part of what a checkpoint holds. Returns the frozen names; throws
//! std::invalid_argument when a pattern matches nothing (naming it).
std::vector<std::string> freeze(torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                                const std::vector<std::string>& patterns, double lr);

}  // namespace cairn
