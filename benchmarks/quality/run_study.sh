#!/usr/bin/env bash
# The CIFAR-10 quality study of docs/results.md: one-step SiD, SiDA and SiD²A students of a teacher, over seeds,
# with FID against two references, precision and recall.
#
#   bash benchmarks/quality/run_study.sh all          # everything, in order, on every visible GPU
#   bash benchmarks/quality/run_study.sh STAGE ...    # stages: ref train sid2a teacher cond final report
#
# What runs (SEEDS="0 1 2"): SiD and SiDA for KIMG from the teacher, per seed; from each SiD result, SiD²A for
# SID2A_KIMG and, beside it, the control: the same SiD run continued (optimiser, fake score and all) for SID2A_KIMG.
# Every run's final EMA generator is scored against the training set (`train`, the teacher's data) and against
# held-out images (`test`). Jobs of a stage are spread over the GPUs, one lane per GPU. `cond` trains a conditional
# teacher of the same size (train_teacher.py, COND_TEACHER_KIMG) and distils it with SiD and SiDA (COND_SEEDS, the
# cifar10-cond recipe), scored like the rest (runs sid-cond-s*, sida-cond-s*; teacher-cond-nfe35-*.json).
#
# Every stage can be re-run: training resumes from a run's training_state/, and a run, a reference or a final
# figure that is already there is skipped; `all` after an interruption continues where it stopped. Training is the
# example script, run exactly as a user runs it. `report` writes REPORT_OUT/results.json (every number), then the
# plot and tables.md from that file alone; publish with REPORT_OUT=docs/results RECORDS=benchmarks/quality/records
# (RECORDS keeps the runs' stats.jsonl and final and teacher JSON, from which `report --root RECORDS` makes the same
# results.json). ONLY="sida-s1 sid-s2" restricts the train, sid2a, cond and final stages to those runs (a device
# session that has time for two runs). Settings come from the environment:
TEACHER=${TEACHER:-../shared/teachers/cifar10-uncond-ddpmpp32}        # scoredistill artefact directory or EDM .pkl
DATA_PARTS=${DATA_PARTS:-../shared/data/cifar10-train-jpeg75.zip}       # zip(s) whose union is the `train` reference
TEST_DATA=${TEST_DATA:-../shared/data/cifar10-test-jpeg75.zip}          # the held-out `test` reference
SIDA_DATA=${SIDA_DATA:-../shared/data/cifar10-train-jpeg75.zip}         # SiDA's real images
INCEPTION=${INCEPTION:-}                                                # Inception weights ('' = installed package)
RUNS=${RUNS:-runs/quality}                                              # everything goes here
REPORT_OUT=${REPORT_OUT:-$RUNS/report}                                  # results.json, plot, tables
SEEDS=${SEEDS:-0 1 2}                                                   # one SiD, SiDA, SiD²A and control run each
KIMG=${KIMG:-2000}                                                      # SiD and SiDA length (thousands of images)
SID2A_KIMG=${SID2A_KIMG:-500}                                           # SiD²A and control length
# The library's fast path, with the teacher after the fake score on one stream: the path of the study's first runs
# (the teacher's second stream became the default later; the same maths, but one execution path for every seed).
SPEED=${SPEED:---precision bf16 --cuda-graphs --channels-last --no-overlap-teacher}
EXTRA=${EXTRA:-}                                                        # more example flags (e.g. --batch 4 on a CPU)
EVAL_N=${EVAL_N:-10000}; EVAL_KIMG=${EVAL_KIMG:-250}                     # in-training FID (both refs); EVAL_N=0: none
FINAL_N=${FINAL_N:-50000}                                               # samples of the final figures
TEACHER_NFE=${TEACHER_NFE:-35 1 3 7 13}; TEACHER_N=${TEACHER_N:-50000 10000 10000 10000 10000}
REF_MAX=${REF_MAX:-}                                                    # at most this many reference images (tests)
COND_SEEDS=${COND_SEEDS:-0}                                             # the conditional study's SiD and SiDA seeds
COND_TEACHER_KIMG=${COND_TEACHER_KIMG:-2460}                            # its teacher's training (as the shared one's)
COND_TEACHER_ARGS=${COND_TEACHER_ARGS:-}                                # more train_teacher.py flags (tests: tiny sizes)
LANES_PER_GPU=${LANES_PER_GPU:-1}                                       # jobs side by side on each GPU (small students)
ONLY=${ONLY:-}                                                          # run names: a stage runs only these runs' jobs
RECORDS=${RECORDS:-}                                                    # `report` first copies the small records here
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p "$RUNS"
inception=(); [ -n "$INCEPTION" ] && inception=(--inception "$INCEPTION")
ref_max=(); [ -n "$REF_MAX" ] && ref_max=(--max-images "$REF_MAX" --workers 0)
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
study=(python3 benchmarks/quality/study.py)

job_run() {  # job_run JOB: the run a job is for (distill NAME / final NAME: NAME; control SEED: sidcont-sSEED)
  local word prev=""
  for word in $1; do
    case $prev in distill | final) echo "$word"; return ;; control) echo "sidcont-s$word"; return ;; esac
    prev=$word
  done
}

lanes() {  # lanes JOB...: run the jobs (shell commands) on LANES_PER_GPU lanes per GPU, each lane in order
  local n=$(((gpus > 0 ? gpus : 1) * LANES_PER_GPU)) jobs=() pids=() lane i job
  for job in "$@"; do  # ONLY: the jobs of the named runs, chosen before the lanes are dealt so that they balance
    [ -z "$ONLY" ] || [[ " $ONLY " == *" $(job_run "$job") "* ]] && jobs+=("$job")
  done
  [ ${#jobs[@]} -gt 0 ] || { echo "no job of this stage is in ONLY ($ONLY)"; return; }
  for ((lane = 0; lane < n; lane++)); do
    (for ((i = lane; i < ${#jobs[@]}; i += n)); do GPU=$((lane % (gpus > 0 ? gpus : 1))) eval "${jobs[i]}"; done) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}

distill() {  # distill NAME METHOD KIMG SEED [extra example flags]; skipped once NAME/generator_ema exists
  local name=$1 method=$2 kimg=$3 seed=$4; shift 4
  [ -d "$RUNS/$name/generator_ema" ] && { echo "skip $name (done)"; return; }
  local eval=(); [ "$EVAL_N" -gt 0 ] && eval=(--ref-stats "$RUNS/ref.npz" --extra-ref-stats "test=$RUNS/ref-test.npz"
    --eval-kimg "$EVAL_KIMG" --eval-n "$EVAL_N")  # the same samples against both references
  echo "train $name on lane ${GPU:-0}"
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=${GPU:-0} python3 examples/distill_edm.py --recipe "${RECIPE:-cifar10-uncond}" --method "$method" \
    --teacher "$TEACHER" --outdir "$RUNS/$name" --total-kimg "$kimg" --seed "$seed" $SPEED $EXTRA --log-kimg 50 \
    --ckpt-kimg 250 "${eval[@]}" "${inception[@]}" "$@" >>"$RUNS/$name.log" 2>&1
}

control() {  # control SEED: SiD continued from its final state for SID2A_KIMG (the SiD²A runs' baseline)
  local seed=$1
  if [ ! -d "$RUNS/sidcont-s$seed/training_state" ] && [ ! -d "$RUNS/sidcont-s$seed/generator_ema" ]; then
    mkdir -p "$RUNS/sidcont-s$seed"
    cp -r "$RUNS/sid-s$seed/training_state" "$RUNS/sidcont-s$seed/training_state"
  fi
  distill "sidcont-s$seed" sid "$(python3 -c "print($KIMG + $SID2A_KIMG)")" "$seed"
}

final() {  # final NAME: FID vs both references, precision and recall of NAME's EMA generator; skipped when done
  local name=$1
  [ -f "$RUNS/final-$name.json" ] && { echo "skip final-$name (done)"; return; }
  CUDA_VISIBLE_DEVICES=${GPU:-0} "${study[@]}" final --generator "$RUNS/$name/generator_ema" \
    --ref "train=$RUNS/ref.npz" --ref "test=$RUNS/ref-test.npz" --ref-features "$RUNS/ref.features.npy" \
    --n "$FINAL_N" --out "$RUNS/final-$name.json" "${inception[@]}" >>"$RUNS/final-$name.log" 2>&1
}

stage() {
  local jobs=() seed name
  case $1 in
  ref)  # `train`: the exact merge of the parts' statistics (their sums add up); `test`: the held-out set
    for zip in $DATA_PARTS; do
      name="$RUNS/ref-part-$(basename "$zip" .zip)"
      [ -f "$name.npz" ] || "${study[@]}" ref --data "$zip" --out "$name" "${ref_max[@]}" "${inception[@]}"
    done
    [ -f "$RUNS/ref.npz" ] || "${study[@]}" merge "$RUNS"/ref-part-*.npz --out "$RUNS/ref"
    [ -f "$RUNS/ref-test.npz" ] || "${study[@]}" ref --data "$TEST_DATA" --out "$RUNS/ref-test" "${ref_max[@]}" \
      "${inception[@]}" ;;
  train)  # SiD (data-free) and SiDA (real images) from the teacher, per seed
    for seed in $SEEDS; do
      jobs+=("distill sid-s$seed sid $KIMG $seed" "distill sida-s$seed sida $KIMG $seed --data $SIDA_DATA")
    done
    lanes "${jobs[@]}" ;;
  sid2a)  # SiD²A from each SiD generator, and the SiD control beside it
    for seed in $SEEDS; do
      jobs+=("distill sid2a-s$seed sid2a $SID2A_KIMG $seed --data $SIDA_DATA --generator-init $RUNS/sid-s$seed/generator_ema")
      jobs+=("control $seed")
    done
    lanes "${jobs[@]}" ;;
  teacher)  # the teacher with EDM's Heun sampler against both references
    if ls "$RUNS"/teacher-nfe*.json >/dev/null 2>&1; then echo "skip teacher (done)"; return; fi
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$((gpus > 0 ? gpus - 1 : 0)) "${study[@]}" teacher --teacher "$TEACHER" \
      --ref "train=$RUNS/ref.npz" --ref "test=$RUNS/ref-test.npz" --nfe $TEACHER_NFE --n $TEACHER_N --out "$RUNS" \
      "${inception[@]}" ;;
  cond)  # the conditional study: a conditional teacher of the shared one's size and recipe, trained on the labelled
        # training zip with the library's DSM loss (resumes like the runs), its Heun FIDs, then SiD and SiDA from it
    local cond=$RUNS/teacher-cond
    if [ ! -d "$cond/teacher" ]; then
      echo "train the conditional teacher"
      # shellcheck disable=SC2086
      CUDA_VISIBLE_DEVICES=${GPU:-0} python3 benchmarks/quality/train_teacher.py --data "$SIDA_DATA" --label-dim 10 \
        --outdir "$cond" --kimg "$COND_TEACHER_KIMG" $COND_TEACHER_ARGS >>"$cond.log" 2>&1
      [ -d "$cond/teacher" ] || { echo "the conditional teacher did not finish: see $cond.log" >&2; return 1; }
    fi
    if ls "$RUNS"/teacher-cond-nfe*.json >/dev/null 2>&1; then echo "skip teacher-cond FID (done)"; else
      # shellcheck disable=SC2086
      CUDA_VISIBLE_DEVICES=$((gpus > 0 ? gpus - 1 : 0)) "${study[@]}" teacher --teacher "$cond/teacher" --name cond \
        --ref "train=$RUNS/ref.npz" --ref "test=$RUNS/ref-test.npz" --nfe ${TEACHER_NFE%% *} --n ${TEACHER_N%% *} \
        --out "$RUNS" "${inception[@]}"
    fi
    for seed in $COND_SEEDS; do
      jobs+=("RECIPE=cifar10-cond TEACHER=$cond/teacher distill sid-cond-s$seed sid $KIMG $seed")
      jobs+=("RECIPE=cifar10-cond TEACHER=$cond/teacher distill sida-cond-s$seed sida $KIMG $seed --data $SIDA_DATA")
    done
    lanes "${jobs[@]}" ;;
  final)  # final figures of every finished run
    for name in "$RUNS"/*/generator_ema; do
      [ -d "$name" ] && jobs+=("final $(basename "$(dirname "$name")")")
    done
    [ ${#jobs[@]} -eq 0 ] || lanes "${jobs[@]}" ;;
  report)
    if [ -n "$RECORDS" ]; then  # what the tables are made from, small enough to keep in the repository
      local records; records=$(mkdir -p "$RECORDS" && cd "$RECORDS" && pwd)
      (cd "$RUNS" && find . -maxdepth 2 \( -name 'final-*.json' -o -name 'teacher-*nfe*.json' -o -name stats.jsonl \) \
        -print0 | xargs -0 -r cp --parents -t "$records")
    fi
    "${study[@]}" report --root "$RUNS" --out "$REPORT_OUT" --offset "sid2a=$(python3 -c "print(round($KIMG * 1000))")" \
      --setting "seeds=$SEEDS" "kimg=$KIMG" "sid2a_kimg=$SID2A_KIMG" "final_n=$FINAL_N" "eval_n=$EVAL_N" \
      "speed=$SPEED" "teacher=$TEACHER" ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
  esac
}

[ "${1:-all}" = all ] && set -- ref train sid2a teacher cond final report
for s in "$@"; do echo "== $s ($(date +%T))"; stage "$s"; done
