// RNG state capture and restore: the CPU generator, every CUDA generator where
// CUDA is present, and generators the user registers by name.
#pragma once

#include "cairn/value.h"

#include <ATen/core/Generator.h>

#include <map>
#include <string>

namespace cairn {

//! {"cpu": uint8 tensor, "cuda": [uint8 tensor per device], "<name>": ...}
Value capture_rng_states(const std::map<std::string, at::Generator>& extra = {});
//! Restores what capture_rng_states() returned. Missing CUDA states (a
//! checkpoint from a CPU machine) leave the CUDA generators alone.
void restore_rng_states(const Value& states, const std::map<std::string, at::Generator>& extra = {});
//! capture_rng_states()'s result as bytes and back (to gather every rank's
//! states to rank 0 in a distributed run).
std::string encode_rng_states(const Value& states);
Value decode_rng_states(const std::string& bytes);

}  // namespace cairn
