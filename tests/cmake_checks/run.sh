#!/usr/bin/env bash
# CTest `cmake_checks`: a LibTorch that cannot build cairn stops CMake with a
# message naming what is missing (cmake/CairnTorch.cmake), not a compile or
# link error 500 lines later. Fake LibTorch packages stand in for the old and
# the c10d-less builds; the ABI case uses the real LibTorch of this build.
#   run.sh SOURCE_DIR WORK_DIR CXX_COMPILER "PREFIX_PATH"
set -euo pipefail
src=$1 work=$2 cxx=$3 prefix=${4:-}
rm -rf "$work"
mkdir -p "$work"
fails=0

fake_torch() {  # fake_torch DIR VERSION: a LibTorch package with only a version
  mkdir -p "$1/share/cmake/Torch"
  echo 'set(TORCH_LIBRARIES "")' > "$1/share/cmake/Torch/TorchConfig.cmake"
  echo "set(PACKAGE_VERSION \"$2\")
set(PACKAGE_VERSION_COMPATIBLE TRUE)" > "$1/share/cmake/Torch/TorchConfigVersion.cmake"
}

expect_refusal() {  # expect_refusal NAME "TEXT" cmake-args...
  local name=$1 text=$2
  shift 2
  if cmake -S "$src/tests/cmake_checks" -B "$work/$name" -DCAIRN_SOURCE="$src" -DCMAKE_CXX_COMPILER="$cxx" "$@" \
      > "$work/$name.log" 2>&1; then
    echo "FAIL: $name: CMake accepted it"; fails=$((fails + 1))
  else
    # CMake wraps messages at ~80 columns: match on the text with its lines joined.
    local said
    said=$(tr '\n' ' ' < "$work/$name.log" | tr -s ' ')
    if ! grep -q -- "$text" <<< "$said"; then
      echo "FAIL: $name: CMake stopped without saying '$text':"; tail -20 "$work/$name.log"; fails=$((fails + 1))
    else
      echo "ok: $name: $(grep -o -- "$text.*" <<< "$said" | cut -c1-150)"
    fi
  fi
}

fake_torch "$work/old" 1.12.1
expect_refusal too_old "LibTorch 1.12.1 at .* is too old" -DTorch_DIR="$work/old/share/cmake/Torch"
fake_torch "$work/noc10d" 2.5.0
expect_refusal no_c10d "was built without c10d" -DTorch_DIR="$work/noc10d/share/cmake/Torch"
expect_refusal abi "_GLIBCXX_USE_CXX11_ABI=" \
  -DCMAKE_CXX_FLAGS=-D_GLIBCXX_USE_CXX11_ABI=0 ${prefix:+-DCMAKE_PREFIX_PATH="$prefix"}
# Without Gloo's headers where they are looked for (a wheel on a machine
# without libgloo-dev): an empty folder stands in.
mkdir -p "$work/empty"
expect_refusal no_gloo "Gloo's headers (gloo/algorithm.h) were not found" \
  -DCAIRN_GLOO_INCLUDE_DIR="$work/empty" ${prefix:+-DCMAKE_PREFIX_PATH="$prefix"}

# And the real one is accepted.
if cmake -S "$src/tests/cmake_checks" -B "$work/real" -DCAIRN_SOURCE="$src" -DCMAKE_CXX_COMPILER="$cxx" \
    ${prefix:+-DCMAKE_PREFIX_PATH="$prefix"} > "$work/real.log" 2>&1 && grep -q "LibTorch accepted" "$work/real.log"; then
  echo "ok: this build's LibTorch is accepted: $(grep -m1 -o 'cairn: LibTorch.*' "$work/real.log")"
else
  echo "FAIL: this build's LibTorch was refused:"; tail -20 "$work/real.log"; fails=$((fails + 1))
fi
[ "$fails" -eq 0 ] || { echo "$fails cmake check(s) failed"; exit 1; }
echo "cmake checks: OK"
