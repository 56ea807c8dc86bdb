#!/bin/bash
# The fast-path measurements of benchmarks/RESULTS.md (issue 11) on one machine with two GPUs; results go to $OUT.
export PYTHONPATH=$PWD/src
T0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpus.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.nccl.version())" | tee -a $OUT/gpus.txt
Z=${Z:-.devdata/c1/cifar10-train-jpeg75-5k.zip}
B="benchmarks/bench_step.py --batch 32 --settings graphs-cl --no-mfu --warmup 4 --steps 20"
# GPU 0: the one-GPU fast-path tests (the whole GPU suite: benchmarks/fastpath_1gpu.sh); GPU 1 at the same time: the
# one-GPU measurements, the basis of the scaling factors.
(CUDA_VISIBLE_DEVICES=0 timeout ${SUITE_S:-170} python -m pytest -q -p no:cacheprovider \
    tests/training/test_gpu_fastpath.py -rfE > $OUT/gpu_suite.txt 2>&1) &
(
  export CUDA_VISIBLE_DEVICES=1
  el c10; timeout 90 python $B --preset cifar10-32x32-uncond --out $OUT/bench_1gpu.md 2>&1 | grep -v warm-up
  el c10-zip-aug; timeout 60 python $B --preset cifar10-32x32-uncond --data $Z --augment 0.12 --out $OUT/bench_1gpu.md \
    2>&1 | grep -v warm-up
  el in64; timeout 70 python $B --preset imagenet-64x64 --out $OUT/bench_1gpu.md 2>&1 | grep -v warm-up
  el example; timeout 90 python examples/distill_edm.py --recipe cifar10-uncond --method sida --random-teacher \
    --data $Z --batch 32 --total-kimg 16 --start-kimg 0 --log-kimg 3.2 --cuda-graphs --channels-last --outdir /tmp/ex1 \
    > /tmp/ex1.log 2>&1
  cp /tmp/ex1/stats.jsonl $OUT/example_1gpu_stats.jsonl; tail -c 400 /tmp/ex1.log
) > $OUT/one_gpu.txt 2>&1
wait
el two GPUs
timeout 80 python -m pytest -q -p no:cacheprovider tests/training/test_gpu_fastpath.py -k two_gpus -rfE 2>&1 | tail -15 \
  > $OUT/two_gpu_test.txt
el c10-2gpu; timeout 50 torchrun --nproc_per_node=2 $B --preset cifar10-32x32-uncond --data $Z --augment 0.12 \
  --out $OUT/bench_2gpu.md 2>&1 | grep -v warm-up | tail -3
el in64-2gpu; timeout 70 torchrun --nproc_per_node=2 $B --preset imagenet-64x64 --out $OUT/bench_2gpu.md 2>&1 \
  | grep -v warm-up | tail -3
el done
