#!/usr/bin/env bash
# Sets up, builds, and runs the main job: an MLP on the full Fashion-MNIST.
# Re-running continues the run (or reports that it finished); pass
# `--resume never --overwrite` to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec ./build/cairn fit --config configs/fashion_mnist_mlp.yaml "$@"
