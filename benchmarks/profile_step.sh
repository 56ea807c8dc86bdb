#!/bin/bash
# The profile that kernel and scheduling work starts from, in one device call: for each workload the user path runs,
# bench_step's rows for the chosen settings (images/s, MFU, peak memory), the last setting's device time by kernel
# family over graph replays (each family rated in FLOP/s or GB/s), then one eager step's device time by phase and by
# launching operator. Each part has its own limit and is skipped when the call's 570 s would not cover it.
#
#   device: bash benchmarks/profile_step.sh     (carry .devdata, which holds Z below; results in $OUT)
#           C10="graphs-cl-noot,graphs-cl" IN64="graphs-cl" TESTS="tests/training/test_augment.py" \
#             bash benchmarks/profile_step.sh    (other settings: the last one is profiled; tests first, if given)
#
# Z: a CIFAR-10 dataset zip (default .devdata/cifar10-test-jpeg75.zip) for the zip + augmentation rows. Every table
# goes to $OUT/profile.md (bench_step's rows) and $OUT/profile_*.txt (the profiles); copy what you quote into
# benchmarks/RESULTS.md with the card's name.
set -u
OUT=${OUT:-/tmp/profile_step}
source benchmarks/_device.sh "$OUT"
cat "$OUT/gpu.txt"
C10=${C10:-baseline,graphs-cl}  # CIFAR-10 settings, batch 32 (C10_B32) and 128 (C10_B128)
C10_B32=${C10_B32:-$C10}
C10_B128=${C10_B128:-$C10}
IN64=${IN64:-baseline,graphs-cl}  # ImageNet-64 settings
B="benchmarks/bench_step.py --out $OUT/profile.md --warmup 3 --steps 10 --profile"
data=(); [ -f "$Z" ] && data=(--data "$Z" --augment 0.12)
# part LIMIT NAME COMMAND...: run COMMAND under LIMIT seconds if the call has that long left, else skip it
part() {
  local limit=$1 name=$2; shift 2
  if [ $((570 - ($(date +%s) - T0))) -lt "$limit" ]; then el "skipped $name: under $limit s left"; return; fi
  el "$name"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1 || el "$name: exit $?"
}

if [ -n "${TESTS:-}" ]; then
  part 100 tests python -m pytest -q -p no:cacheprovider -rfE $TESTS
  tail -n 2 "$OUT/tests.txt"
fi
part 130 profile_c10_b32 python $B --preset cifar10-32x32-uncond --batch 32 "${data[@]}" --settings "$C10_B32"
part 120 profile_c10_b128 python $B --preset cifar10-32x32-uncond --batch 128 "${data[@]}" --settings "$C10_B128"
part 170 profile_in64_b32 python $B --preset imagenet-64x64 --batch 32 --settings "$IN64"
P="benchmarks/bench_step.py --profile-phases"
part 60 phases_cifar10_b32 python $P --preset cifar10-32x32-uncond --batch 32 "${data[@]}"
part 60 phases_imagenet_b32 python $P --preset imagenet-64x64 --batch 32
part 60 phases_cifar10_b128 python $P --preset cifar10-32x32-uncond --batch 128 "${data[@]}"
# Each kernel's launching operator, input shapes and autograd node, one eager step (what the families hold)
O="benchmarks/bench_step.py --profile-ops"
part 60 ops_imagenet_b32 python $O --preset imagenet-64x64 --batch 32
part 50 ops_cifar10_b32 python $O --preset cifar10-32x32-uncond --batch 32 "${data[@]}"
# The small launches (under 6 us each) by operator, autograd node and phase: what a launch-bound step is made of
part 50 launches_cifar10_b32 python benchmarks/bench_step.py --profile-launches --preset cifar10-32x32-uncond \
  --batch 32 "${data[@]}"
el end
grep -h "^\[" "$OUT"/profile_*.txt
