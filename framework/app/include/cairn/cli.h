// The `cairn` command line: fit, print-config, inspect.
//
//   cairn fit --config FILE [--set dotted.key=value]... [--run-dir DIR] [--resume auto|never|PATH] [--overwrite]
//   cairn print-config --config FILE [--set ...]
//   cairn inspect CKPT [--json]
//
// Exit codes: 0 done; 1 an unexpected error; 2 bad command line, config or
// data location; 3 a checkpoint that cannot be used; 128+N after signal N
// (the run saved a checkpoint and can resume).
#pragma once

namespace cairn {
int cli_main(int argc, char** argv);
}
