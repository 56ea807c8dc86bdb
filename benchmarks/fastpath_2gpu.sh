#!/bin/bash
# The fast-path measurements of benchmarks/RESULTS.md (issue 11) on one machine with two GPUs; results go to $OUT.
source "$(dirname "$0")/_fastpath_common.sh"
# GPU 0: the one-GPU fast-path tests (the whole GPU suite: benchmarks/fastpath_1gpu.sh); GPU 1 at the same time: the
# one-GPU rows, the basis of the scaling factors.
(CUDA_VISIBLE_DEVICES=0 timeout ${SUITE_S:-170} python -m pytest -q -p no:cacheprovider \
    tests/training/test_gpu_fastpath.py -rfE > $OUT/gpu_suite.txt 2>&1) &
(CUDA_VISIBLE_DEVICES=1 one_gpu_rows) > $OUT/one_gpu.txt 2>&1
wait
el two GPUs
timeout 80 python -m pytest -q -p no:cacheprovider tests/training/test_gpu_fastpath.py -k two_gpus -rfE 2>&1 | tail -15 \
  > $OUT/two_gpu_test.txt
el c10-2gpu; timeout 50 torchrun --nproc_per_node=2 $B --preset cifar10-32x32-uncond --data $Z --augment 0.12 \
  --out $OUT/bench_2gpu.md 2>&1 | grep -v warm-up | tail -3
el in64-2gpu; timeout 70 torchrun --nproc_per_node=2 $B --preset imagenet-64x64 --out $OUT/bench_2gpu.md 2>&1 \
  | grep -v warm-up | tail -3
el done
