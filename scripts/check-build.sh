#!/usr/bin/env bash
# Configures and builds ./build-check: every target (library, CLI, examples,
# tests, fuzz targets) compiled by clang with AddressSanitizer,
# UndefinedBehaviorSanitizer and libFuzzer's coverage instrumentation. The
# test suite and the fuzzers run from this one build (scripts/test.sh,
# scripts/fuzz.sh). Assumes the packages of scripts/setup.sh are installed.
#   bash scripts/check-build.sh          # -> build-check/
#   bash scripts/check-build.sh tsan     # -> build-tsan/: ThreadSanitizer, tests only
set -euo pipefail
cd "$(dirname "$0")/.."

flavour="${1:-asan}"
common="-O1 -g1 -fno-omit-frame-pointer"
if [ "$flavour" = tsan ]; then
  dir=build-tsan
  flags="$common -fsanitize=thread"
  extra=(-DCAIRN_BUILD_EXAMPLES=OFF -DCAIRN_BUILD_FUZZ=OFF
         "-DCAIRN_TEST_ONLY=test_checkpoint_file;test_checkpoint_callback;test_kill")
else
  dir=build-check
  # UBSan findings abort (no recover), so a test or a fuzzer cannot pass over them.
  flags="$common -fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize=fuzzer-no-link"
  extra=(-DCAIRN_BUILD_EXAMPLES=ON -DCAIRN_BUILD_FUZZ=ON)
fi
CC=clang CXX=clang++ cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=None \
  -DCMAKE_CXX_FLAGS="$flags" -DCAIRN_BUILD_TESTS=ON -DCAIRN_BUILD_BENCH=OFF "${extra[@]}" >/dev/null
cmake --build "$dir"
