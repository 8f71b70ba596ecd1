#!/usr/bin/env bash
# Runs cairn's libFuzzer targets for a given time each, one per core at a time.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s, all six
# Targets: checkpoint weights config set_args state data (tests/fuzz/harness.h).
# Seeds come from real files: checkpoints the instrumented `cairn` writes,
# Python torch.save files, configs/ (tests/fuzz/make_seeds.py). Corpora grow
# in build-check/fuzz/<target>/corpus and survive between runs. A crash stops
# with exit 1 and names the input; copy it into tests/hostile/ (see its
# README) so the test suite replays it for good.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(checkpoint weights config set_args state data)

[ -x build-check/tests/fuzz/fuzz_checkpoint ] || bash scripts/check-build.sh
work=build-check/fuzz
mkdir -p "$work"
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS=1

# Seeds: a tiny real run of the instrumented cairn, plus Python's files.
if [ ! -d "$work/seeds/data" ]; then  # (seeds of an older checkout lack the newer targets)
  run="$work/seed-run"
  rm -rf "$run"
  mkdir -p "$run"
  cat > "$run/config.yaml" <<YAML
name: seed
seed: 1
run: {dir: $run/out}
data: {name: synthetic, train_size: 48, valid_size: 16, test_size: 16, features: 4, num_classes: 2, batch_size: 8}
model: {name: mlp, hidden: [3]}
optimizer: {name: adam, lr: 0.01}
scheduler: {name: cosine, warmup_steps: 2}
trainer: {max_epochs: 2, log_every_n_steps: 2, enable_progress_bar: false}
callbacks:
  - {name: checkpoint, monitor: valid/loss, save_top_k: 1, every_n_train_steps: 4}
  - {name: early_stopping, monitor: valid/loss, patience: 3}
YAML
  ./build-check/cairn fit --config "$run/config.yaml" >"$run/log" 2>&1 || { cat "$run/log"; exit 1; }
  /usr/bin/python3 tests/fuzz/make_seeds.py "$work/seeds.tmp" configs $(find "$run/out" -name '*.ckpt' | sort | head -3)
  rm -rf "$work/seeds"
  mv "$work/seeds.tmp" "$work/seeds"
fi

run_one() {
  local t=$1 dir="$work/$1"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  # -rss_limit_mb: an input that makes cairn use more than this is a finding.
  ./build-check/tests/fuzz/fuzz_"$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$dir/artifacts/" \
    "$dir/corpus" "$work/seeds/$t" >"$dir/log" 2>&1
}

status=0
cores=$(getconf _NPROCESSORS_ONLN)  # (nproc would obey the OMP_NUM_THREADS=1 set above)
# One target per core at a time, in batches; each waited for by its PID
# (`wait -n` answers 127 when the job it should wait for already ended).
pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "$cores" ]; then
    for p in "${pids[@]}"; do wait "$p" || status=1; done
    pids=()
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done

printf '%-11s %12s %10s %8s %8s  %s\n' target executions exec/s cov ft result
for t in "${targets[@]}"; do
  log="$work/$t/log"
  execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  rate=$(grep -ao 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -ao 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  ft=$(grep -ao 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  found=$(ls "$work/$t/artifacts" 2>/dev/null | head -1)
  if [ -n "$found" ]; then
    result="FOUND $work/$t/artifacts/$found (log: $log)"
    status=1
  else
    result=ok
  fi
  printf '%-11s %12s %10s %8s %8s  %s\n' "$t" "$execs" "$rate" "$cov" "$ft" "$result"
done
if [ $status -ne 0 ]; then
  echo "fuzz: a target failed; its log:" >&2
  for t in "${targets[@]}"; do
    if ! grep -q 'Done [0-9]* runs' "$work/$t/log"; then tail -40 "$work/$t/log" >&2; fi
  done
fi
exit $status
