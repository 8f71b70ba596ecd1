// Entry points shared by the libFuzzer targets (tests/fuzz/fuzz_*.cpp) and by
// the regression test over tests/hostile/ (tests/test_hostile.cpp).
//
// Each feeds one input to a real cairn reader and returns how it ended:
// accepted, or rejected with cairn's documented error for that input
// (CheckpointError / CheckpointMismatch: exit 3; ConfigError: exit 2).
// Anything else — a crash, a hang, another exception — is a finding: the
// exception propagates (libFuzzer reports it as a crash, doctest as a failure).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cairn {
namespace fuzz {

enum class Outcome { accepted, rejected };

struct Result {
  Outcome outcome;
  std::string message;  //!< the error text when rejected
};

//! Checkpoint reader. The first byte chooses how the rest is read:
//!   bits 0-1: 0 the whole file, checksums required (cairn checkpoints)
//!             1 the whole file, checksums optional (plain torch.save files)
//!             2 a pickle (data.pkl) wrapped in a zip with a valid cairn checksum record
//!             3 a pickle wrapped in a zip with valid CRC-32s and no checksum record
//!   bit 7:    header-only read (meta tensors, as used to order checkpoints)
//! Modes 2 and 3 let mutations reach the pickle parser past the integrity
//! checks; the wrapped zip also holds records data/0 .. data/15 of 4096 bytes.
Result checkpoint(const uint8_t* data, size_t size);

//! `cairn::load_weights` (model.init_from) into a small MLP: first byte as
//! above (modes 1 and 3 are plain torch.save files); strict and non-strict.
Result weights(const uint8_t* data, size_t size);

//! A YAML experiment: parsed, validated against the built-in registry, and
//! its resolved config emitted (what `cairn print-config` does).
Result config(const uint8_t* data, size_t size);

//! `--set` arguments, one per line, applied to a small valid experiment.
Result set_args(const uint8_t* data, size_t size);

//! A run's checkpoint whose bytes verify and whose contents are wrong: a
//! real checkpoint of a small run (model, Adam, a cosine schedule, metrics,
//! checkpoint, early stopping and EMA callbacks) is changed by the input,
//! written with valid checksums and resumed by a Trainer of the same config,
//! which then trains on. The input is a list of 4-byte mutations: node (2
//! bytes, an index into the tree's nodes in depth-first order), operation,
//! argument (see StateOp). Rejections are CheckpointError, CheckpointMismatch
//! and UnclaimedState (exit 3 / exit 2); a crash or another exception is a finding.
Result state(const uint8_t* data, size_t size);

//! The data readers of files from disk (cairn/datasets.h). The first byte
//! chooses: bit 0 clear, `decode_image` of the rest (PNG or JPEG; bit 1: grey
//! or RGB); bit 0 set, the rest as a `.cshard` file, opened as a
//! ShardDataset and every row read (up to 4096). Rejections are BadExample,
//! DataError and the decoders' std::runtime_error (exit 3 / exit 2 from `cairn`).
Result data(const uint8_t* data, size_t size);

//! The operations of `state`: what one mutation does to the node it picks.
enum class StateOp : uint8_t {
  remove = 0,    //!< a dict's entry removed (a list's last item; anything else: None)
  integer = 1,   //!< an int: -1, 0, 1, 2^31, -2^63, 10^12, 7, 2^62 (by the argument)
  real = 2,      //!< a float: NaN, inf, -inf, -1.5, 0, 1e300 (by the argument)
  text = 3,      //!< a string
  reshape = 4,   //!< a tensor of the same dtype and another shape (dims and sizes from the argument)
  retype = 5,    //!< a tensor of the same shape and another dtype (float64, int64, bool, uint8, float32)
  empty = 6,     //!< an empty list, dict or tensor of the same kind
  grow = 7,      //!< a list's item repeated, a dict's extra key, a tensor's first dimension doubled
};
constexpr int kStateOps = 8;

//! How many nodes the base checkpoint's tree has (the range of `state`'s node index).
size_t state_nodes();
//! Removes the files `state` made in this process (the fuzzer leaves them to
//! the process's exit; a forked child, which leaves by _exit, calls this).
void state_cleanup();
//! The path of node `node` in the base checkpoint (e.g. `['optimizer_states'][0]['state'][1]['exp_avg']`).
std::string state_node_name(size_t node);

//! Removes every scratch file this process's harness calls made (the fuzz
//! targets leave theirs to be reused; a forked child calls this before _exit).
void remove_scratch();

//! Wraps a pickle into a checkpoint zip as modes 2/3 do (for building seeds).
std::string wrap_pickle(const std::string& pickle, bool with_checksums);

}  // namespace fuzz
}  // namespace cairn
