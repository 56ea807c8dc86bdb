#!/bin/bash
# The profile that kernel and scheduling work starts from, in one device call: for each workload the user path runs,
# the reference's setting and the fast path (images/s, MFU, peak memory), the fast path's device time by kernel family
# over graph replays (each family rated in FLOP/s or GB/s), then eager steps' device time by phase. Not yet timed on a
# GPU: each step has its own limit, 9.3 minutes in all inside one call's 10 (ImageNet-64, with its slow fp32
# reference row, has the longest).
#
#   device: bash benchmarks/profile_step.sh     (carry .devdata, which holds Z below; results in $OUT)
#
# Z: a CIFAR-10 dataset zip (default .devdata/cifar10-test-jpeg75.zip) for the zip + augmentation rows. Every table
# goes to $OUT/profile.md (bench_step's rows) and $OUT/profile_*.txt (the profiles); copy what you quote into
# benchmarks/RESULTS.md with the card's name.
set -u
OUT=${OUT:-/tmp/profile_step}
source benchmarks/_device.sh "$OUT"
cat "$OUT/gpu.txt"
B="benchmarks/bench_step.py --out $OUT/profile.md --warmup 3 --steps 10"
data=(); [ -f "$Z" ] && data=(--data "$Z" --augment 0.12)

el "CIFAR-10 batch 32"
timeout 120 python $B --preset cifar10-32x32-uncond --batch 32 "${data[@]}" --settings baseline,graphs-cl --profile \
  > "$OUT/profile_c10_b32.txt" 2>&1
el "CIFAR-10 batch 128"
timeout 120 python $B --preset cifar10-32x32-uncond --batch 128 "${data[@]}" --settings baseline,graphs-cl --profile \
  > "$OUT/profile_c10_b128.txt" 2>&1
el "ImageNet-64 batch 32"
timeout 170 python $B --preset imagenet-64x64 --batch 32 --settings baseline,graphs-cl --profile \
  > "$OUT/profile_in64_b32.txt" 2>&1
el phases
for w in "cifar10-32x32-uncond 32" "cifar10-32x32-uncond 128" "imagenet-64x64 32"; do
  set -- $w
  timeout 50 python benchmarks/bench_step.py --preset "$1" --batch "$2" --profile-phases \
    > "$OUT/phases_${1%%-*}_b$2.txt" 2>&1
done
el end
