# Sourced by fastpath_1gpu.sh and fastpath_2gpu.sh: the environment, the timer and the one-GPU rows they share.
export PYTHONPATH=$PWD/src
T0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpus.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.nccl.version())" | tee -a $OUT/gpus.txt
Z=${Z:-.devdata/c1/cifar10-train-jpeg75-5k.zip}
B="benchmarks/bench_step.py --batch 32 --settings graphs-cl --no-mfu --warmup 4 --steps 20"

# bench_step with a fixed GPU batch and on the user's path (dataset zip through the loader, augmentation p = 0.12),
# the example script on the same settings (its logged images/s), batch 128, ImageNet-64. The first row on a fresh
# machine also compiles the Triton kernels (about 60 s).
one_gpu_rows() {
  el c10; timeout 90 python $B --preset cifar10-32x32-uncond --out $OUT/bench_1gpu.md 2>&1 | grep -v warm-up
  el c10-zip-aug; timeout 60 python $B --preset cifar10-32x32-uncond --data $Z --augment 0.12 --out $OUT/bench_1gpu.md \
    2>&1 | grep -v warm-up
  el example; timeout 90 python examples/distill_edm.py --recipe cifar10-uncond --method sida --random-teacher \
    --data $Z --batch 32 --total-kimg 16 --start-kimg 0 --log-kimg 3.2 --cuda-graphs --channels-last --outdir /tmp/ex1 \
    > /tmp/ex1.log 2>&1
  cp /tmp/ex1/stats.jsonl $OUT/example_1gpu_stats.jsonl; tail -c 600 /tmp/ex1.log
  el c10-b128; timeout 60 python ${B/--batch 32/--batch 128} --preset cifar10-32x32-uncond --data $Z --augment 0.12 \
    --out $OUT/bench_1gpu.md 2>&1 | grep -v warm-up
  el in64; timeout 80 python $B --preset imagenet-64x64 --out $OUT/bench_1gpu.md 2>&1 | grep -v warm-up
  el done
}
