#!/bin/bash
# Issue 20's candidate changes against the fast path, on a GPU, in one device call of at most 9.5 minutes: their
# parity tests, bench_norms (both group-norm strategies beside the native composition), bench_step with each
# candidate setting on the three workloads (same process per workload, the fast path first and last), then a sweep
# of the one-pass group norm's tilings (tune_norms_one_pass.py) in the time left. The candidates:
#   graphs-cl-nobgrad  the path before the fewer bias-gradient reductions (residual_triton.FUSED_BIAS_GRAD and
#                      groupnorm_triton.FUSED_AFFINE_GRAD_SUMS; measured 2026-12-06: they paid, now the default)
#   graphs-cl-nocat    the path before the skip concatenation's Triton copy (concat_triton.FUSED_CAT; the same)
#   graphs-cl-gn1    the group norms' one-pass kernels (measured 2026-12-06: slower, not adopted)
#   graphs-cl-ot     the teacher on a second CUDA stream (measured 2026-12-06: faster, opt-in)
#
#   device: bash benchmarks/candidates_check.sh      (carry .devdata for the CIFAR-10 zip rows; results in $OUT)
#           QUICK=1 bash benchmarks/candidates_check.sh    (the tests, bench_norms and CIFAR-10 batch 32 only: at
#                                                           most 6 minutes by its limits, for a call shared with
#                                                           the study)
#           SETTINGS=graphs-cl,graphs-cl-ot,graphs-cl ...  (other settings of bench_step.py)
set -u
OUT=${OUT:-/tmp/candidates_check}
source benchmarks/_device.sh "$OUT"
cat "$OUT/gpu.txt"
SETTINGS=${SETTINGS:-graphs-cl,graphs-cl-nobgrad,graphs-cl-nocat,graphs-cl}

el "parity tests"
P="python -m pytest -q -p no:cacheprovider -rfE"
timeout 170 $P tests/kernels/test_groupnorm_kernel.py -k "one_pass or networks or affine_sums" > "$OUT/gn_tests.txt" 2>&1 &
timeout 170 $P tests/kernels/test_residual_kernel.py tests/kernels/test_concat_kernel.py \
  > "$OUT/residual_tests.txt" 2>&1 &
timeout 170 $P tests/training/test_gpu_matrix.py -k side_stream > "$OUT/overlap_tests.txt" 2>&1 &
wait
tail -n 3 "$OUT/gn_tests.txt" "$OUT/residual_tests.txt" "$OUT/overlap_tests.txt"
el "bench_norms"
timeout 100 python benchmarks/bench_norms.py --out "$OUT/candidates.md" > "$OUT/bench_norms.txt" 2>&1
data=(); [ -f "$Z" ] && data=(--data "$Z" --augment 0.12)
B="benchmarks/bench_step.py --out $OUT/candidates.md --no-mfu --warmup 4 --steps 20 --settings $SETTINGS"
el "bench_step CIFAR-10 batch 32"
timeout 90 python $B --preset cifar10-32x32-uncond --batch 32 "${data[@]}" > "$OUT/step_c10_b32.txt" 2>&1
if [ "${QUICK:-0}" = 1 ]; then el end; grep -h "^\[" "$OUT"/step_*.txt; exit 0; fi
el "bench_step CIFAR-10 batch 128"
timeout 80 python $B --preset cifar10-32x32-uncond --batch 128 "${data[@]}" > "$OUT/step_c10_b128.txt" 2>&1
el "bench_step ImageNet-64 batch 32"
timeout 110 python $B --preset imagenet-64x64 --batch 32 > "$OUT/step_in64_b32.txt" 2>&1
left=$((570 - ($(date +%s) - T0)))
if [ "$left" -gt 30 ]; then
  el "tune_norms_one_pass (what is left of the call: ${left} s)"
  timeout "$left" python benchmarks/tune_norms_one_pass.py > "$OUT/tune_one_pass.txt" 2>&1
fi
el end
grep -h "^\[" "$OUT"/step_*.txt
