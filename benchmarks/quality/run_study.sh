#!/usr/bin/env bash
# The CIFAR-10 quality study of docs/results.md: a teacher, one-step SiD, SiDA and SiD²A students, FID/precision/recall.
#
#   bash benchmarks/quality/run_study.sh all          # everything, in order (one or two GPUs)
#   bash benchmarks/quality/run_study.sh STAGE ...    # stages: ref merge train sid2a teacher final report
#
# With two GPUs, `all` runs two lanes side by side after the reference statistics:
#   GPU 0: SiD -> SiD²A (from SiD's result) -> final figures of both;  GPU 1: SiDA -> teacher -> final figures of SiDA.
#
# Training is the example script, run exactly as a user runs it. Settings come from the environment:
TEACHER=${TEACHER:-../shared/teachers/cifar10-uncond-ddpmpp32}        # scoredistill artefact directory or EDM .pkl
DATA_PARTS=${DATA_PARTS:-../shared/data/cifar10-train-jpeg75.zip}       # zip(s) whose union is the FID reference set
SIDA_DATA=${SIDA_DATA:-../shared/data/cifar10-train-jpeg75.zip}         # SiDA's real images
INCEPTION=${INCEPTION:-}                                                # Inception weights ('' = installed package)
RUNS=${RUNS:-runs/quality}                                              # everything goes here
KIMG=${KIMG:-2000}                                                      # SiD and SiDA length (thousands of images)
SID2A_KIMG=${SID2A_KIMG:-500}                                           # SiD²A length
SPEED=${SPEED:---precision bf16 --cuda-graphs --channels-last}          # the library's fast path
EVAL_N=${EVAL_N:-10000}; EVAL_KIMG=${EVAL_KIMG:-250}                     # in-training FID: samples, interval
FINAL_N=${FINAL_N:-50000}; TEACHER_N=${TEACHER_N:-50000 10000}          # 50k figures; 10k for the NFE curve
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p "$RUNS"
inception=(); [ -n "$INCEPTION" ] && inception=(--inception "$INCEPTION")
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")

distill() {  # distill GPU NAME METHOD KIMG [extra example flags]
  local gpu=$1 name=$2 method=$3 kimg=$4; shift 4
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$gpu python3 examples/distill_edm.py --recipe cifar10-uncond --method "$method" \
    --teacher "$TEACHER" --outdir "$RUNS/$name" --total-kimg "$kimg" $SPEED --log-kimg 50 --ckpt-kimg 500 \
    --ref-stats "$RUNS/ref.npz" --eval-kimg "$EVAL_KIMG" --eval-n "$EVAL_N" "${inception[@]}" "$@" >"$RUNS/$name.log" 2>&1
}

final() {  # final GPU NAME
  CUDA_VISIBLE_DEVICES=$1 python3 benchmarks/quality/study.py final --generator "$RUNS/$2/generator_ema" \
    --ref "$RUNS/ref.npz" --ref-features "$RUNS/ref.features.npy" --n "$FINAL_N" --out "$RUNS/final-$2.json" \
    "${inception[@]}"
}

stage() {
  case $1 in
  ref)  # statistics and features of each part of the reference set
    for zip in $DATA_PARTS; do
      python3 benchmarks/quality/study.py ref --data "$zip" --out "$RUNS/ref-part-$(basename "$zip" .zip)" "${inception[@]}"
    done ;;
  merge)  # one reference: the exact merge of the parts (their sums add up)
    python3 benchmarks/quality/study.py merge "$RUNS"/ref-part-*.npz --out "$RUNS/ref" ;;
  train)  # SiD (data-free) and SiDA (real images) from scratch, side by side when there are two GPUs
    distill 0 sid sid "$KIMG" & pid=$!
    if [ "$gpus" -ge 2 ]; then distill 1 sida sida "$KIMG" --data "$SIDA_DATA"; wait $pid
    else wait $pid; distill 0 sida sida "$KIMG" --data "$SIDA_DATA"; fi ;;
  sid2a)  # SiD²A: SiDA fine-tuning the SiD generator
    distill 0 sid2a sid2a "$SID2A_KIMG" --data "$SIDA_DATA" --generator-init "$RUNS/sid/generator_ema" ;;
  lanes)  # two GPUs: the two lanes described at the top
    (stage train-sid && stage sid2a && final 0 sid && final 0 sid2a) >"$RUNS/lane0.log" 2>&1 & lane0=$!
    (distill 1 sida sida "$KIMG" --data "$SIDA_DATA" && stage teacher && final 1 sida) >"$RUNS/lane1.log" 2>&1
    wait $lane0 ;;
  train-sid) distill 0 sid sid "$KIMG" ;;
  teacher)  # the teacher with EDM's Heun sampler: 35 NFE on 50k samples, and the curve on 10k
    read -r n35 n_curve <<<"$TEACHER_N"
    CUDA_VISIBLE_DEVICES=$((gpus > 0 ? gpus - 1 : 0)) python3 benchmarks/quality/study.py teacher --teacher "$TEACHER" \
      --ref "$RUNS/ref.npz" --nfe 35 1 3 7 13 --n "$n35" "$n_curve" "$n_curve" "$n_curve" "$n_curve" --out "$RUNS" \
      "${inception[@]}" ;;
  final)  # 50k-sample FID, precision and recall of each student's final EMA generator
    for name in sid sida sid2a; do [ -d "$RUNS/$name/generator_ema" ] && final 0 "$name"; done; true ;;
  report)
    python3 benchmarks/quality/study.py report --root "$RUNS" --out "$RUNS/report" --offset "sid2a=${KIMG}000" ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
  esac
}

if [ "${1:-all}" = all ]; then
  if [ "$gpus" -ge 2 ]; then set -- ref merge lanes report; else set -- ref merge train sid2a teacher final report; fi
fi
for s in "$@"; do echo "== $s ($(date +%T))"; stage "$s"; done
