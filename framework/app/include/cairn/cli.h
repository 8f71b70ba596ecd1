// The `cairn` command line (docs/cli.md):
//
//   cairn fit --config FILE [--set dotted.key=value]... [--run-dir DIR] [--resume auto|never|PATH]
//             [--overwrite] [--allow-config-change] [--nproc N [--max-restarts K]]
//   cairn print-config --config FILE [--set ...]
//   cairn inspect CKPT|RUN_DIR [--json]
//   cairn report RUN_DIR|CKPT [MORE...] [--out FILE]
//   cairn --version
//
// Exit codes: 0 done; 1 an unexpected error; 2 bad command line, config or
// data location, or a refused config change (drift, unclaimed callback
// state); 3 a checkpoint that cannot be used; 4 the run directory or
// checkpoint folder is in use by another process; 5 the final checkpoint
// could not be saved; 6 a process of a distributed run failed or did not
// answer within distributed.timeout; 128+N after signal N (the run saved a
// checkpoint and can resume).
#pragma once

namespace cairn {
int cli_main(int argc, char** argv);
}
