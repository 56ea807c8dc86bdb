#!/bin/bash
# Issue 20's candidate changes against the fast path, on a GPU, in one device call of at most 10 minutes: their
# parity tests, then bench_step with each setting on the three workloads (one process per workload, the fast path
# first and last, each setting's peak memory counted from a clean slate). The settings it times by default:
#   graphs-cl          the fast path, as users run it (with concat_triton.DENSE_SPLIT since 2026-12-07, and since
#                      then each network's own launch choices: DDPM++'s group norms "hybrid", ADM's split_qkv; since
#                      the tenth round frozen layers that save only their weights, and precast_weights;
#                      and since the eleventh the block input's two gradients summed in the norm's backward)
#   graphs-cl-noskipgrad  the block input's two gradients summed by autograd (UNetBlock.skip_grad_in_norm off)
# graphs-cl-nofrozen, for SETTINGS=...: the default before the tenth round (frozen networks' layers saved their
# inputs too, and the layers cast their weights at every use). H100, 2026-12-07, the tenth round's default against
# it: +4.8%, +1.1%, +1.4%, peak 5.98 -> 4.94, 17.02 -> 12.78, 26.55 -> 23.10 GiB.
# Measured on an H100 (2026-12-07) in the tenth round: graphs-cl-noprecast (the frozen layers without
# precast_weights: +0.0% and +0.2% against graphs-cl-nofrozen at CIFAR-10 batch 32 and ImageNet-64, the same speed
# for 1.06 and 3.65 GiB less) and graphs-cl-cudnnall (cuDNN timing every algorithm: not adopted; run it alone in a
# process of its own, since cuDNN's choices are cached per process).
# (percentages: CIFAR-10 batch 32, batch 128, ImageNet-64 batch 32, against the mean of the two graphs-cl rows)
# Measured on an H100 (2026-12-07) and not adopted, for SETTINGS=...: graphs-cl-gnhyb64 (the group norms' one-pass
# kernels on maps of 8x8 and smaller only: -0.6%, -0.5%, -0.2%). A 3x3 convolution of our own (a Triton implicit
# GEMM, forward with or without its input gradient) was 1.4% to 8.1% slower per iteration and has been removed:
# cuDNN's bias-free forward, as the layers run it, was 1.14-1.59x faster per layer (bench_conv_fusion.py's gemm table).
# and, for SETTINGS=...: graphs-cl-prev, the fast path before each network chose its own launch strategies (the tiled
# group norms and one qkv GEMM everywhere; H100, 2026-12-07: the networks' own choices +2.2%, +1.1%, +1.4%).
# Measured on an H200 (2026-12-07) and settled per network, for SETTINGS=...: graphs-cl-splitqkv / -nosplitqkv (the
# channels_last attention's q, k and v by three GEMMs, UNetBlock.split_qkv, everywhere / nowhere: -1.2%, -0.4%,
# +1.9%, and +1.4% on ImageNet-64 on an H100: DhariwalUNet's default) and graphs-cl-gnhyb / -gntiles (the group
# norms' one-pass kernels on maps of at most 16x16, groupnorm_triton's "hybrid", everywhere / the tiles everywhere:
# +1.7%, +0.5%, -1.3%: SongUNet's default).
# Measured and settled (2026-12-06), for SETTINGS=...: graphs-cl-noot (the path before the teacher went on a
# second CUDA stream by default: +1.0% to +4.6% for 0.06 GiB; dropped from the default list to stay within the
# limits), graphs-cl-shareenc (one encoder pass over SiDA's two
# batches: +1.2% at CIFAR-10 batch 32, -3.3% at batch 128; stays off), graphs-cl-nobgrad and graphs-cl-nocat (the
# paths before the fewer bias-gradient reductions and the concatenation kernel: both paid, now the default),
# graphs-cl-gn1 (the group norms' one-pass kernels: slower, not adopted; bench_norms.py and tune_norms_one_pass.py
# time them alone) and graphs-cl-convaug (the augmentation's op-by-op padding and upsampling: slower, replaced).
# Measured on an H200 (2026-12-07): graphs-cl-nodensecat (the path before the concatenation's backward wrote two
# dense channels_last gradients instead of two channel slices of dy, which cuDNN's backward of the encoder
# convolutions then copied: the dense split paid +0.8%, +0.8%, +1.3% at no memory cost and is now the default);
# graphs-cl-ovreal, removed (DistillConfig.overlap_real, SiDA's real images' encoder pass on a second CUDA stream
# beside the fakes' pass: -0.4% to +0.7%, and its captured run at full size diverged from the serial one).
#
# Before the bench_step rows, bench_norms.py times the group norm per layer shape (tiles, one pass, native), the data
# behind the hybrid strategy's threshold. PHASES=paired adds bench_paired.py (a paired teacher + fake-score
# network's layers against the two networks' layers; measured 2026-12-06: not worth building).
#
#   device: bash benchmarks/candidates_check.sh      (carry .devdata for the CIFAR-10 zip rows; results in $OUT)
#           QUICK=1 bash benchmarks/candidates_check.sh    (the tests, bench_norms and CIFAR-10 batch 32 only: at
#                                                           most 6 minutes by its limits, for a call shared with the
#                                                           study)
#           SETTINGS=graphs-cl,graphs-cl-gn1,graphs-cl ...  (other settings of bench_step.py)
#           PHASES="norms step" bash benchmarks/candidates_check.sh (the timings only, before or after the parity
#                                                           tests in a call of their own: about 7 minutes)
#           PHASES="conv" bash benchmarks/candidates_check.sh (bench_conv_fusion's per-layer table of the three
#                                                           convolution passes: cuDNN's and a Triton GEMM's)
set -u
OUT=${OUT:-/tmp/candidates_check}
source benchmarks/_device.sh "$OUT"
cat "$OUT/gpu.txt"
SETTINGS=${SETTINGS:-graphs-cl,graphs-cl-noskipgrad,graphs-cl}
PHASES=${PHASES:-tests norms step}

if [[ " $PHASES " == *" tests "* ]]; then
  el "parity tests"
  P="python -m pytest -q -p no:cacheprovider -rfE"
  timeout 170 $P tests/kernels/test_groupnorm_kernel.py -k "cuda_parity and tiles or affine_sums" \
    > "$OUT/gn_tests.txt" 2>&1 &
  timeout 170 $P tests/kernels/test_residual_kernel.py tests/kernels/test_concat_kernel.py \
    > "$OUT/residual_tests.txt" 2>&1 &
  timeout 170 $P tests/training/test_gpu_matrix.py -k side_stream > "$OUT/overlap_tests.txt" 2>&1 &
  timeout 170 $P tests/kernels/test_groupnorm_kernel.py -k "networks_with_fused_norms and hybrid" \
    > "$OUT/hybrid_tests.txt" 2>&1 &
  timeout 170 $P tests/networks/test_networks.py tests/training/test_gpu_matrix.py \
    -k "split_qkv or channels_last_attention or precast or frozen" > "$OUT/attention_tests.txt" 2>&1 &
  wait
  tail -n 3 "$OUT/gn_tests.txt" "$OUT/residual_tests.txt" "$OUT/overlap_tests.txt" "$OUT/attention_tests.txt" \
    "$OUT/hybrid_tests.txt"
fi
if [[ " $PHASES " == *" conv "* ]]; then
  el "bench_conv_fusion --tables gemm (a Triton 3x3 convolution against cuDNN's per layer, the three passes)"
  timeout 120 python benchmarks/bench_conv_fusion.py --tables gemm --out "$OUT/conv.md" > "$OUT/conv.txt" 2>&1
  tail -n 9 "$OUT/conv.txt"
fi
if [[ " $PHASES " == *" norms "* ]]; then
  el "bench_norms (the group norm per layer shape: tiles, one pass, native)"
  timeout 60 python benchmarks/bench_norms.py --out "$OUT/norms.md" > "$OUT/norms.txt" 2>&1
  tail -n 24 "$OUT/norms.txt"
fi
if [[ " $PHASES " == *" paired "* ]]; then
  el "bench_paired (the teacher's and the fake score's layers as one)"
  timeout 90 python benchmarks/bench_paired.py --out "$OUT/paired.md" > "$OUT/paired.txt" 2>&1
  tail -n 14 "$OUT/paired.txt"
fi
[[ " $PHASES " == *" step "* ]] || { el end; exit 0; }
data=(); [ -f "$Z" ] && data=(--data "$Z" --augment 0.12)
B="benchmarks/bench_step.py --out $OUT/candidates.md --no-mfu --warmup 4 --steps 20 --settings $SETTINGS"
el "bench_step CIFAR-10 batch 32"
timeout 100 python $B --preset cifar10-32x32-uncond --batch 32 "${data[@]}" > "$OUT/step_c10_b32.txt" 2>&1
if [ "${QUICK:-0}" = 1 ]; then el end; grep -h "^\[" "$OUT"/step_*.txt; exit 0; fi
el "bench_step CIFAR-10 batch 128"
timeout 100 python $B --preset cifar10-32x32-uncond --batch 128 "${data[@]}" > "$OUT/step_c10_b128.txt" 2>&1
el "bench_step ImageNet-64 batch 32"
timeout 130 python $B --preset imagenet-64x64 --batch 32 > "$OUT/step_in64_b32.txt" 2>&1
el end
grep -h "^\[" "$OUT"/step_*.txt
