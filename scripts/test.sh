#!/usr/bin/env bash
# Sets up, builds and runs every check, as CI does (37 minutes on 2 cores
# with the packages and the torch wheel already present; the wheel is a
# one-time 4.7 GB download, about a minute here):
#  1. the whole test suite (CTest: doctest cases, the CLI, kill-and-resume
#     with real processes, Python interop, hostile inputs, the examples),
#     against Debian's LibTorch 1.13, built by clang with AddressSanitizer +
#     UndefinedBehaviorSanitizer;
#  2. the whole test suite again against LibTorch 2.11 from PyPI's torch
#     wheel (the CUDA build, run on the CPU; NCCL and every CUDA path compiled
#     and linked), built by g++ in Release, Python interop with the wheel's
#     Python torch; tests that need a GPU report themselves skipped;
#  3. each libFuzzer target for CAIRN_FUZZ_SECONDS (default 45) seconds;
#  4. the threaded tests (checkpoint files and their helper threads, the
#     async writer, signals and SIGKILL) built with ThreadSanitizer.
# Every build has -Werror on cairn's own code. docs/building.md ("Two platforms") says why
# each suite runs where it does.
# Extra arguments go to the ctest of both whole suites (e.g. -R test_config).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --deps-only

echo "== test suite (AddressSanitizer + UndefinedBehaviorSanitizer)"
bash scripts/check-build.sh
# Leak checking stays on for cairn's own code; libtorch's and Python's
# one-time allocations at exit are not leaks of a run.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:allocator_may_return_null=0"
export LSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
(cd build-check && ctest --output-on-failure -j "$(nproc)" "$@")

echo "== test suite against LibTorch 2.x (PyPI's torch wheel, CUDA build, on this machine's CPU)"
bash scripts/check-build.sh torch2
(cd build-torch2 && ctest --output-on-failure -j "$(nproc)" "$@")

echo "== bench_loop smoke (20 steps an epoch: it runs, every leg; figures come from full runs, see docs/benchmarks.md)"
(cd build-torch2 && ./bench_loop --epochs 1 --repeats 1 --steps 20)

echo "== fuzzing (${CAIRN_FUZZ_SECONDS:-45} s per target)"
bash scripts/fuzz.sh "${CAIRN_FUZZ_SECONDS:-45}"

echo "== threaded tests (ThreadSanitizer)"
bash scripts/check-build.sh tsan
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/sanitizers/tsan.supp"
(cd build-tsan && ctest --output-on-failure -j "$(nproc)")
