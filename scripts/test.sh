#!/usr/bin/env bash
# Sets up, builds and runs every check, as CI does (about 20 minutes on 2 cores):
#  1. the whole test suite (CTest: doctest cases, the CLI, kill-and-resume
#     with real processes, Python interop, hostile inputs, the examples),
#     built by clang with AddressSanitizer + UndefinedBehaviorSanitizer;
#  2. each libFuzzer target for CAIRN_FUZZ_SECONDS (default 45) seconds;
#  3. the threaded tests (checkpoint files and their helper threads, the
#     async writer, signals and SIGKILL) built with ThreadSanitizer.
# Extra arguments go to the first ctest (e.g. -R test_config).
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

echo "== fuzzing (${CAIRN_FUZZ_SECONDS:-45} s per target)"
bash scripts/fuzz.sh "${CAIRN_FUZZ_SECONDS:-45}"

echo "== threaded tests (ThreadSanitizer)"
bash scripts/check-build.sh tsan
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/sanitizers/tsan.supp"
(cd build-tsan && ctest --output-on-failure -j "$(nproc)")
