#!/bin/bash
# The one-pass group norm (groupnorm_triton.set_strategy("one_pass")) on a GPU, in one device call of at most 9.5
# minutes: its parity tests, bench_norms (both strategies beside the native composition), bench_step's fast path
# with each strategy on the three workloads of issue 20 (same process per workload, alternating settings), then a
# sweep of its tilings (tune_norms_one_pass.py) in the time left.
#
#   device: bash benchmarks/gn_check.sh      (carry .devdata for the CIFAR-10 zip rows; results in $OUT)
#           QUICK=1 bash benchmarks/gn_check.sh    (the tests, bench_norms and CIFAR-10 batch 32 only: at most 5.3
#                                                   minutes by its limits, for a call shared with the study)
set -u
OUT=${OUT:-/tmp/gn_check}
source benchmarks/_device.sh "$OUT"
cat "$OUT/gpu.txt"

el "parity tests"
timeout 150 python -m pytest -q -p no:cacheprovider -rfE tests/kernels/test_groupnorm_kernel.py \
  -k "one_pass or networks" > "$OUT/gn_tests.txt" 2>&1
tail -3 "$OUT/gn_tests.txt"
el "bench_norms"
timeout 100 python benchmarks/bench_norms.py --out "$OUT/gn.md" > "$OUT/bench_norms.txt" 2>&1
data=(); [ -f "$Z" ] && data=(--data "$Z" --augment 0.12)
B="benchmarks/bench_step.py --out $OUT/gn.md --no-mfu --warmup 4 --steps 20 --settings graphs-cl,graphs-cl-gn1,graphs-cl"
el "bench_step CIFAR-10 batch 32"
timeout 70 python $B --preset cifar10-32x32-uncond --batch 32 "${data[@]}" > "$OUT/step_c10_b32.txt" 2>&1
if [ "${QUICK:-0}" = 1 ]; then el end; grep -h "^\[" "$OUT"/step_*.txt; exit 0; fi
el "bench_step CIFAR-10 batch 128"
timeout 70 python $B --preset cifar10-32x32-uncond --batch 128 "${data[@]}" > "$OUT/step_c10_b128.txt" 2>&1
el "bench_step ImageNet-64 batch 32"
timeout 90 python $B --preset imagenet-64x64 --batch 32 > "$OUT/step_in64_b32.txt" 2>&1
el "tune_norms_one_pass (what is left of the call)"
timeout $((570 - ($(date +%s) - T0))) python benchmarks/tune_norms_one_pass.py > "$OUT/tune_one_pass.txt" 2>&1
el end
grep -h "^\[" "$OUT"/step_*.txt
