#!/usr/bin/env bash
# The GPU check, run on a machine with CUDA and a pip-installed PyTorch 2.x
# (no Debian packages there), in one command (under 8 minutes on 16 cores):
# build cairn against that LibTorch with CUDA and NCCL, run the whole test
# suite (test_cuda included: CUDA RNG, training on the GPU, 2-process jobs on
# Gloo sharing a GPU and on NCCL, data on the device against pinned prefetched
# batches, foreach and fused Adam on CUDA, captured steps (trainer.cuda_graphs)
# against uncaptured ones, checkpoint snapshots page-locked in 64 MiB pieces,
# Python 2.x reading checkpoints),
# then the GPU benchmarks (bench_gpu, bench_checkpoint, bench_loop --device
# cuda). Every log goes to one folder, $OUT (or ./gpu_out); the GPU figures of
# docs/benchmarks.md come from it, with the date and PyTorch version it records in env.txt.
#
# Needs, next to the tree (git-ignored, carried to the machine):
#   .debs/  apt-get download libyaml-cpp-dev libyaml-cpp0.7 libboost1.74-dev doctest-dev libxxhash-dev \
#             zlib1g-dev zlib1g libisal-dev libisal2 libgloo-dev
#           (libgloo-dev: Gloo's headers, which c10d's ProcessGroupGloo.hpp includes and the wheel lacks)
#   .data/fashion-mnist/  the four .gz files of dataset-fashion-mnist
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT" /tmp/deps /usr/share/datasets
for f in .debs/*.deb; do dpkg -x "$f" /tmp/deps; done
[ -d /usr/share/datasets/fashion-mnist ] || cp -r .data/fashion-mnist /usr/share/datasets/
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
PY=$(command -v python3)
TORCH_PREFIX=$($PY -c 'import torch;print(torch.utils.cmake_prefix_path)')
{ date -u +%Y-%m-%dT%H:%MZ; nvidia-smi -L; nproc;
  $PY -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), "nccl", torch.distributed.is_nccl_available())'; } 2>&1 | tee "$OUT/env.txt"

build() {
  cmake -S . -B /tmp/b -G Ninja -DCMAKE_BUILD_TYPE=Release -DCAIRN_CXX_STANDARD="$1" \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;/tmp/deps/usr" -DCAIRN_GLOO_INCLUDE_DIR=/tmp/deps/usr/include -DCAIRN_PYTHON="$PY" >"$OUT/cmake.log" 2>&1 &&
    cmake --build /tmp/b -j "$(nproc)" >"$OUT/build.log" 2>&1
}
start=$(date +%s)
if ! build 17; then
  echo "C++17 build failed (see build17.log); trying C++20"
  cp "$OUT/build.log" "$OUT/build17.log"
  rm -rf /tmp/b
  build 20 || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1; }
fi
echo "build: $(( $(date +%s) - start )) s"
grep -c "warning:" "$OUT/build.log" | sed 's/^/compiler warnings: /'

cd /tmp/b && timeout 300 ctest --output-on-failure -j 8 >"$OUT/ctest.log" 2>&1
echo "ctest exit $?"; tail -25 "$OUT/ctest.log"
./tests/cairn_tests --source-file='*test_cuda.cpp' --cairn-needs-gpu 2>&1 | tee "$OUT/test_cuda.log" | tail -6
cd - >/dev/null
timeout 150 /tmp/b/bench_gpu --dir /tmp/cairn_gpu_bench 2>&1 | tee "$OUT/bench_gpu.txt" | tail -16
timeout 100 /tmp/b/bench_checkpoint --dir /tmp/bench_ckpt --repeats 3 --steps 0 2>&1 | tee "$OUT/bench_checkpoint.txt" | tail -6
# The loop on the GPU job of issue "a training loop at GPU speed": cairn (data
# on the device, foreach Adam), each lever switched off, and CUDA graphs, against the
# hand-written LibTorch and Python loops and Lightning, seconds per epoch.
timeout 240 /tmp/b/bench_loop --device cuda --epochs 2 --repeats 3 2>&1 | tee "$OUT/bench_loop_cuda.txt" | tail -16
