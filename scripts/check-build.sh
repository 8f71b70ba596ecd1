#!/usr/bin/env bash
# Configures and builds ./build-check: every target (library, CLI, examples,
# tests, fuzz targets) compiled by clang with AddressSanitizer,
# UndefinedBehaviorSanitizer and libFuzzer's coverage instrumentation. The
# test suite and the fuzzers run from this one build (scripts/test.sh,
# scripts/fuzz.sh). Assumes the packages of scripts/setup.sh are installed.
#   bash scripts/check-build.sh          # -> build-check/
#   bash scripts/check-build.sh tsan     # -> build-tsan/: ThreadSanitizer, tests only
#   bash scripts/check-build.sh torch2   # -> build-torch2/: g++ Release against LibTorch 2.x
#                                        #    from PyPI's CUDA wheel (scripts/torch-wheel.sh):
#                                        #    library, CLI, examples, tests, benchmarks
# Every flavour builds with -Werror on cairn's own code: zero warnings.
set -euo pipefail
cd "$(dirname "$0")/.."

flavour="${1:-asan}"
common="-O1 -g1 -fno-omit-frame-pointer"
if [ "$flavour" = torch2 ]; then
  py=$(bash scripts/torch-wheel.sh)
  prefix=$("$py" -c 'import torch;print(torch.utils.cmake_prefix_path)')
  cmake -S . -B build-torch2 -G Ninja -DCMAKE_BUILD_TYPE=Release -DCAIRN_WERROR=ON \
    -DCMAKE_PREFIX_PATH="$prefix" -DCAIRN_PYTHON="$py" \
    -DCAIRN_BUILD_TESTS=ON -DCAIRN_BUILD_EXAMPLES=ON -DCAIRN_BUILD_BENCH=ON >build-torch2.cmake.log 2>&1 ||
    { cat build-torch2.cmake.log; exit 1; }
  grep "^-- cairn:" build-torch2.cmake.log
  cmake --build build-torch2
  exit 0
fi
if [ "$flavour" = tsan ]; then
  dir=build-tsan
  flags="$common -fsanitize=thread"
  extra=(-DCAIRN_BUILD_EXAMPLES=OFF -DCAIRN_BUILD_FUZZ=OFF
         "-DCAIRN_TEST_ONLY=test_checkpoint_file;test_checkpoint_callback;test_kill;test_data_device;test_data_pipeline")
else
  dir=build-check
  # UBSan findings abort (no recover), so a test or a fuzzer cannot pass over them.
  flags="$common -fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize=fuzzer-no-link"
  extra=(-DCAIRN_BUILD_EXAMPLES=ON -DCAIRN_BUILD_FUZZ=ON)
fi
CC=clang CXX=clang++ cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=None \
  -DCMAKE_CXX_FLAGS="$flags" -DCAIRN_WERROR=ON -DCAIRN_BUILD_TESTS=ON -DCAIRN_BUILD_BENCH=OFF "${extra[@]}" >/dev/null
cmake --build "$dir"
