#!/usr/bin/env bash
# The out-of-tree consumer test (CTest `consumer_project`): installs the build
# into a prefix, builds tests/consumer against the installed CMake package
# with the same compiler and flags, runs it (fresh, then resumed), and
# configures tests/consumer/subproject to check cairn as an add_subdirectory.
#   run.sh BUILD_DIR SOURCE_DIR CXX "CXX_FLAGS" WORK_DIR ["PREFIX_PATH"]
# PREFIX_PATH: the build's CMAKE_PREFIX_PATH (where its LibTorch was found).
set -euo pipefail
build=$1 src=$2 cxx=$3 flags=$4 work=$5 torch_prefix=${6:-}
rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix

echo "== cmake --install $build --prefix $prefix"
cmake --install "$build" --prefix "$prefix" > "$work/install.log"
for f in bin/cairn include/cairn/loop.h include/cairn/config.h include/cairn/callbacks/checkpoint.h \
         lib/libcairn_core.a lib/libcairn_callbacks.a lib/libcairn_app.a \
         lib/cmake/cairn/cairnConfig.cmake lib/cmake/cairn/cairnConfigVersion.cmake lib/cmake/cairn/cairnTargets.cmake; do
  [ -e "$prefix/$f" ] || { echo "FAIL: the install lacks $f"; ls -R "$prefix" | head -50; exit 1; }
done
if find "$prefix/include" -name pch.h | grep -q .; then echo "FAIL: the precompiled header was installed"; exit 1; fi
"$prefix/bin/cairn" --version

echo "== configure and build the consumer against the installed package"
cmake -S "$src/tests/consumer" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=None \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_PREFIX_PATH="$prefix${torch_prefix:+;$torch_prefix}" > "$work/configure.log"
cmake --build "$work/build" > "$work/build.log" || { cat "$work/build.log"; exit 1; }

echo "== run: paused after 2 epochs, then resumed (early stopping ends it before 30)"
"$work/build/consumer" "$work/run" 30 2 | tee "$work/run1.log"
grep -q "^epochs 2," "$work/run1.log" || { echo "FAIL: the first run did not stop after 2 epochs"; exit 1; }
"$work/build/consumer" "$work/run" 30 | tee "$work/run2.log"
grep -q "^resumed at epoch 2$" "$work/run2.log" || { echo "FAIL: the second run did not resume at epoch 2"; exit 1; }
grep -q "^stopped: .*valid/loss" "$work/run2.log" || { echo "FAIL: early stopping did not end the run"; exit 1; }
awk '/^valid\/acc/ { exit !($2 > 0.8) }' "$work/run2.log" || { echo "FAIL: the resumed run did not learn"; exit 1; }
[ -f "$work/run/checkpoints/last.ckpt" ] || { echo "FAIL: no last.ckpt"; exit 1; }
"$prefix/bin/cairn" inspect "$work/run" > "$work/inspect.log" || { cat "$work/inspect.log"; exit 1; }

echo "== cairn as a subproject (configure only)"
cmake -S "$src/tests/consumer/subproject" -B "$work/sub" -G Ninja -DCAIRN_SOURCE="$src" \
  -DCMAKE_CXX_COMPILER="$cxx" ${torch_prefix:+-DCMAKE_PREFIX_PATH="$torch_prefix"} > "$work/sub.log" || { cat "$work/sub.log"; exit 1; }
grep "cairn subproject" "$work/sub.log"
echo "consumer project: OK"
