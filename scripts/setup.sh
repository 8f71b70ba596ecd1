#!/usr/bin/env bash
# Installs what cairn needs on Debian 12 (as root, or with sudo) and builds it.
# Idempotent: installs only missing packages, and rebuilds only what changed.
#   bash scripts/setup.sh              # the main job's deps + the `cairn` program (Release, ./build)
#   bash scripts/setup.sh bench_loop   # ... and the named targets
#   bash scripts/setup.sh --deps-only  # every package, tests' included (scripts/test.sh builds its own trees)
set -euo pipefail
cd "$(dirname "$0")/.."

# What the main job needs (scripts/main.sh): a compiler, LibTorch, the
# libraries cairn links, and the real data set.
packages=(
  g++ cmake ninja-build                   # toolchain
  libtorch-dev                            # LibTorch 1.13 (CPU)
  libgloo-dev                             # c10d's Gloo headers (data parallelism)
  libopenblas0-pthread                    # fast BLAS behind LibTorch (else the reference BLAS)
  libyaml-cpp-dev libboost-dev            # YAML experiments, Boost.Signals2 events
  zlib1g-dev libxxhash-dev                # .gz datasets, checkpoint checksums
  libpng-dev libturbojpeg0-dev            # image folders (data.name: image_folder): PNG and JPEG decoders
  libisal-dev                             # fast zip CRC-32 for checkpoints
  dataset-fashion-mnist                   # the real Fashion-MNIST (gzipped IDX files)
)
# What the tests add (scripts/test.sh, --deps-only); the main job does without.
test_packages=(
  doctest-dev                             # the test framework
  clang libclang-rt-14-dev                # sanitizer builds and libFuzzer (scripts/test.sh, fuzz.sh)
  python3-torch                           # Python interop tests (/usr/bin/python3)
  python3-sklearn                         # the metric tests compare with scikit-learn
  chromium                                # renders `cairn report` pages in the report test
  tmux                                    # the progress bar test runs on real terminals of 60 and 80 columns
)
[ "${1:-}" = "--deps-only" ] && packages+=("${test_packages[@]}")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "cairn setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "${1:-}" = "--deps-only" ] && exit 0

# The main job needs the `cairn` program only; name other targets to build
# them too (scripts/bench.sh: the benchmarks; they also turn
# CAIRN_BUILD_BENCH on). Tests and examples are built by scripts/test.sh.
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(cairn)
bench=OFF
for t in "${targets[@]}"; do [[ "$t" == bench_* ]] && bench=ON; done
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCAIRN_BUILD_TESTS=OFF -DCAIRN_BUILD_EXAMPLES=OFF -DCAIRN_BUILD_BENCH=$bench >/dev/null
cmake --build build --target "${targets[@]}"
