#!/usr/bin/env bash
# Installs what cairn needs on Debian 12 (as root, or with sudo) and builds it.
# Idempotent: installs only missing packages, and rebuilds only what changed.
#   bash scripts/setup.sh              # deps + Release build into ./build
#   bash scripts/setup.sh --deps-only  # deps only (scripts/test.sh builds its own)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  g++ cmake ninja-build                   # toolchain
  libgloo-dev                             # c10d ProcessGroupGloo (data parallelism)
  clang libclang-rt-14-dev                # sanitizer builds and libFuzzer (scripts/test.sh, fuzz.sh)
  libtorch-dev                            # LibTorch 1.13 (CPU)
  libopenblas0-pthread                    # fast BLAS behind LibTorch (else the reference BLAS)
  libyaml-cpp-dev libboost-dev            # YAML experiments, Boost.Signals2 events
  doctest-dev zlib1g-dev libxxhash-dev    # tests, .gz datasets, checkpoint checksums
  libisal-dev                             # fast zip CRC-32 for checkpoints
  dataset-fashion-mnist                   # the real Fashion-MNIST (gzipped IDX files)
  python3-torch                           # Python interop tests (/usr/bin/python3)
  chromium                                # renders `cairn report` pages in the report test
)
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

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCAIRN_BUILD_TESTS=ON -DCAIRN_BUILD_EXAMPLES=ON -DCAIRN_BUILD_BENCH=ON >/dev/null
cmake --build build
