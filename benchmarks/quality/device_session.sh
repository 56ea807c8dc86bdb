#!/usr/bin/env bash
# The quality study on a lent one-GPU machine whose calls carry at most 64 MiB each and last at most 10 minutes:
# the inputs travel in several calls to one warm machine, then run_study.sh runs in slices that resume.
#
#   bash benchmarks/quality/device_session.sh stage            # each call: copy the carried .devdata* to $STUDY
#   bash benchmarks/quality/device_session.sh run SECONDS STAGE...   # run_study.sh STAGE... for at most SECONDS,
#                                                              # then pack what it made into $OUT
#   MPS=1 LANES_PER_GPU=2 ONLY="sida-s0 sid-s1" SEEDS="0 1" bash ... run 570 train
#       two runs side by side under CUDA MPS (on an H100, 3 study runs at once sum to 1.19x one run's images/s:
#       concurrency_probe.sh); ONLY picks the runs a call has time for
#
# What to carry (git-ignored folders of this repository; no two fit in one call beside the repository itself):
#   .devdata    the teacher directory, the CIFAR-10 test zip and train-0of2.zip
#   .devdata2   train-1of2.zip                      (benchmarks/quality/zip_parts.py split ... --parts 2)
#   .devdata3   inception-fp16.safetensors          (scoredistill fid export-inception --dtype fp16)
#   runs/NAME/generator_ema inside any of them lands in $STUDY/runs: a generator finished in an earlier session, for
#   its final figures or as SiD²A's start (its run then counts as done; a control needs SiD's training state, which
#   is too large to travel, so run SiD, its SiD²A and its control in one session)
# A warm machine keeps /tmp between back-to-back calls only, so issue the calls one after another. `run` joins the
# train parts into the one zip that SiDA reads, stops run_study.sh with SIGINT when SECONDS are up (every run saves
# its training state; the next `run` resumes it), and packs the small results (JSON, logs) into $OUT/study.tgz and
# each EMA generator (and the conditional teacher) finished in this call into $OUT/NAME.tgz: unpack them into
# runs/quality here, and `report` runs here.
set -uo pipefail
cd "$(dirname "$0")/../.."
STUDY=${STUDY:-/tmp/study}
CARRIED=${CARRIED:-.devdata .devdata2 .devdata3}  # the folders `stage` copies, those of them that travelled
mkdir -p "$STUDY"

case ${1:-} in
stage)
  for dir in $CARRIED; do
    if [ -d "$dir" ]; then cp -r "$dir"/. "$STUDY"/; fi
  done
  ls -la "$STUDY" ;;
run)
  seconds=$2; shift 2
  export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
  if [ ! -f "$STUDY/train.zip" ]; then
    python3 benchmarks/quality/zip_parts.py join "$STUDY"/train-*of2.zip --out "$STUDY/train.zip" || exit 1
  fi
  export RUNS=$STUDY/runs TEACHER=${TEACHER:-$STUDY/cifar10-uncond-ddpmpp32}
  export DATA_PARTS="$STUDY/train-0of2.zip $STUDY/train-1of2.zip" TEST_DATA=$STUDY/cifar10-test-jpeg75.zip
  export SIDA_DATA=$STUDY/train.zip INCEPTION=$STUDY/inception-fp16.safetensors
  touch "$STUDY/.run-start"
  if [ "${MPS:-0}" = 1 ]; then  # CUDA MPS: kernels of the side-by-side runs (LANES_PER_GPU) share the GPU
    export CUDA_MPS_PIPE_DIRECTORY=$STUDY/mps_pipe CUDA_MPS_LOG_DIRECTORY=$STUDY/mps_log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d || echo "MPS: the daemon did not start; the runs share the GPU by time slices"
  fi
  timeout -s INT "$seconds" bash benchmarks/quality/run_study.sh "$@"
  echo "run_study.sh: exit $?"
  if [ "${MPS:-0}" = 1 ]; then echo quit | nvidia-cuda-mps-control; fi
  if [ -n "${OUT:-}" ]; then
    (cd "$RUNS" && find . -maxdepth 2 \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.npz' \
      -o -name '*.png' -o -name '*.md' \) -size -8M -print0 | tar -czf "$OUT/study.tgz" --null -T -)
    # The networks finished in this call (a call returns at most 8 files): EMA generators and the conditional teacher.
    find "$RUNS" -mindepth 2 -maxdepth 2 \( -name generator_ema -o -name teacher \) -newer "$STUDY/.run-start" \
      | sort | head -7 | while read -r net; do
      name=$(basename "$(dirname "$net")")
      tar -czf "$OUT/$name.tgz" -C "$RUNS" "$name/$(basename "$net")"
    done
  fi ;;
*) echo "usage: $0 stage | run SECONDS STAGE..." >&2; exit 2 ;;
esac
