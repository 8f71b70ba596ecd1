#!/usr/bin/env bash
# Sets up, builds, and runs the whole test suite (CTest: doctest cases, the
# CLI, kill-and-resume with real processes, Python interop, the examples).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cd build
ctest --output-on-failure -j "$(nproc)" "$@"
