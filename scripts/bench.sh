#!/usr/bin/env bash
# Sets up, builds, and runs the benchmarks; prints ratios measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --deps-only   # bench_loop compares with Python's loop (python3-torch)
bash scripts/setup.sh bench_loop bench_checkpoint bench_distributed bench_gpu bench_data
./build/bench_loop "$@"
./build/bench_checkpoint "$@"
./build/bench_distributed --batch 128   # communication-heavy: 25 MB of gradients per 128 examples
./build/bench_distributed --batch 512   # compute-bound: the same model, 4x the work per step
./build/bench_data                      # worker threads against PNG decoding, vs torch::data's DataLoader
