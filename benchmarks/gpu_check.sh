#!/bin/bash
# The check a contributor runs on one GPU before merging anything that touches the loop, the roles or the kernels
# (docs/contributing.md): the GPU-marked tests, the captured-vs-eager matrix, and the speed of the paths users run.
# Two device calls on one warm machine, the tests (about 6 minutes) and then the speed rows (about 4); prints one
# summary table at the end (also $LOG/gpu_check.md).
#
#   device: PHASES=tests bash benchmarks/gpu_check.sh, then PHASES=speed bash benchmarks/gpu_check.sh
#           (carry .devdata, which holds the two inputs below, and .whl, which holds pytest-xdist and execnet wheels
#           if the GPU machine lacks them). On a GPU of your own, `bash benchmarks/gpu_check.sh` runs both.
#
# Inputs (git-ignored): Z, a CIFAR-10 dataset zip (default .devdata/cifar10-test-jpeg75.zip), and T, the study's
# teacher directory (default .devdata/cifar10-uncond-ddpmpp32). Rows whose input is missing are reported as skipped.
set -u
LOG=${LOG:-/tmp/gpu_check}  # every output; $OUT (the device tool's folder), if set, gets the summary and a tarball
source benchmarks/_device.sh "$LOG"
# Each finished part's logs also go to $OUT at once, so that a call cut off by its limit still returns them:
# `python benchmarks/_gpu_check_summary.py DIR` prints the table from whatever DIR holds. ($LOG stays in /tmp so
# that the two halves, run in back-to-back calls on one warm machine, end in one table.)
keep() { if [ -n "${OUT:-}" ]; then for f in "$@"; do [ -f "$LOG/$f" ] && cp "$LOG/$f" "$OUT/"; done; fi; true; }
keep gpu.txt
T=${T:-.devdata/cifar10-uncond-ddpmpp32}
PHASES=${PHASES:-tests speed}  # "tests" alone or "speed" alone runs half of the check
# The tests' limit (seconds). On an H100 (2026-12-07, fourteenth round) the 67-row matrix took 307 s beside the
# GPU-marked tests, which did not finish in 330 s (5 workers); those alone, in 8 workers, took 333 s, the longest
# test (the analytic demo in bf16) 182 s. The speed rows took 246 s. So the two halves take two calls.
TESTS_S=${TESTS_S:-480}
B="benchmarks/bench_step.py --settings graphs-cl --no-mfu --no-write --warmup 4 --steps 20"
EX="examples/distill_edm.py --cuda-graphs --channels-last --precision bf16"

if [[ " $PHASES " == *" tests "* ]]; then
  el tests
  # The matrix and the other GPU-marked tests run side by side, each spread over worker processes by pytest-xdist
  # (most of these tests are launch- or compile-bound on small networks; in one process the GPU-marked tests did not
  # finish in 230 s). xdist is installed from .whl when it is not there (the device machine has no internet).
  python -c "import xdist" 2>/dev/null || { [ -d .whl ] && python -m pip install -q --no-index --no-deps \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
  if python -c "import xdist" 2>/dev/null; then matrix_n="-n 4"; others_n="-n 8"; else matrix_n=""; others_n=""; fi
  P="python -m pytest -q -p no:cacheprovider -rfE --durations=15"
  python -m pytest -q -p no:cacheprovider --collect-only tests/training/test_gpu_matrix.py 2>/dev/null \
    | grep '::' > "$LOG/matrix_ids.txt"
  timeout "$TESTS_S" $P $matrix_n tests/training/test_gpu_matrix.py > "$LOG/matrix.txt" 2>&1 &
  timeout "$TESTS_S" $P $others_n -m "gpu or kernels" tests --ignore=tests/training/test_gpu_matrix.py \
    > "$LOG/gpu_tests.txt" 2>&1 &
  wait
  keep matrix_ids.txt matrix.txt gpu_tests.txt
fi

if [[ " $PHASES " == *" speed "* ]]; then
  # Speed. bench_step prints each row as a Python list; the examples log images/s per interval.
  el speed
  if [ -f "$Z" ]; then
    timeout 100 python $B --preset cifar10-32x32-uncond --batch 32 --data $Z --augment 0.12 > "$LOG/c10_b32.txt" 2>&1
    keep c10_b32.txt
    timeout 80 python $B --preset cifar10-32x32-uncond --batch 128 --data $Z --augment 0.12 > "$LOG/c10_b128.txt" 2>&1
    keep c10_b128.txt
    rm -rf /tmp/gc_ex && timeout 90 python $EX --recipe cifar10-uncond --method sida --random-teacher --data $Z \
      --batch 32 --total-kimg 16 --start-kimg 0 --log-kimg 3.2 --outdir /tmp/gc_ex > "$LOG/example.txt" 2>&1
    cp /tmp/gc_ex/stats.jsonl "$LOG/example.jsonl" 2>/dev/null
    keep example.txt example.jsonl
  fi
  timeout 90 python $B --preset imagenet-64x64 --batch 32 > "$LOG/in64_b32.txt" 2>&1
  keep in64_b32.txt
  if [ -d "$T" ]; then
    for m in sid sida; do
      data=$([ $m = sida ] && echo "--data $Z")
      rm -rf /tmp/gc_$m && timeout 75 python $EX --recipe cifar10-uncond --method $m --teacher $T $data --batch 256 \
        --total-kimg 76.8 --start-kimg 0 --log-kimg 19.2 --outdir /tmp/gc_$m > "$LOG/study_$m.txt" 2>&1
      cp /tmp/gc_$m/stats.jsonl "$LOG/study_$m.jsonl" 2>/dev/null
      keep study_$m.txt study_$m.jsonl
    done
  fi
fi

el summary
python benchmarks/_gpu_check_summary.py "$LOG" | tee "$LOG/gpu_check.md"
if [ -n "${OUT:-}" ]; then
  cp "$LOG/gpu_check.md" "$OUT/" && tar -czf "$OUT/gpu_check_logs.tgz" -C "$LOG" .
fi
