#!/usr/bin/env bash
# The quality study on a lent one-GPU machine whose calls carry at most 64 MiB each and last at most 10 minutes:
# the inputs travel in several calls to one warm machine, then run_study.sh runs in slices that resume.
#
#   bash benchmarks/quality/device_session.sh stage            # each call: copy the carried .devdata* to $STUDY
#   bash benchmarks/quality/device_session.sh run SECONDS STAGE...   # run_study.sh STAGE... for at most SECONDS,
#                                                              # then pack what it made into $OUT
#   MPS=1 LANES_PER_GPU=2 ONLY="sida-s0 sid-s1" SEEDS="0 1" bash ... run 570 train
#       two runs side by side under CUDA MPS (on an H100, 3 study runs at once sum to 1.19x one run's images/s:
#       concurrency_probe.sh; two runs, 1.06x); ONLY picks the runs a call has time for
#   FROM=0 bash benchmarks/quality/device_session.sh suspend NAME...   # then FROM=4, FROM=8, ... until it says done
#       a run the session cannot finish, carried to the next: its training state (77 MB for the study's SiD) is packed
#       into parts of PART_SIZE, and each call returns PARTS_PER_CALL of them with a digest file per run (a call
#       returns at most 8 files, 16 MiB each, 64 MiB in all). Carry the returned files in a later session (at most
#       about 50 MB beside the repository per call); `run` (or `unsuspend`) checks them against the digest and
#       unpacks the run into $STUDY/runs, where run_study.sh resumes it. Nothing is unpacked from an incomplete set.
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
RUNS=$STUDY/runs
CARRIED=${CARRIED:-.devdata .devdata2 .devdata3}  # the folders `stage` copies, those of them that travelled
PART_SIZE=${PART_SIZE:-15M} PARTS_PER_CALL=${PARTS_PER_CALL:-4}  # `suspend`: 4 parts of 15 MiB = 60 MiB a call
mkdir -p "$STUDY"

unsuspend() {  # the carried suspended runs (NAME.state.sha256 and its parts in $STUDY), checked, into $RUNS
  local digest_file name digest parts have
  for digest_file in "$STUDY"/*.state.sha256; do
    [ -f "$digest_file" ] || continue
    name=$(basename "$digest_file" .state.sha256)
    if [ -d "$RUNS/$name/training_state" ]; then echo "$name: already in $RUNS"; continue; fi
    read -r digest parts <"$digest_file"
    have=$(find "$STUDY" -maxdepth 1 -name "$name.state.tar.part*" | wc -l)
    if [ "$have" -ne "$parts" ]; then
      echo "$name: $have of its $parts parts were carried; carry the others (nothing unpacked)" >&2; return 1
    fi
    if [ "$(cat "$STUDY/$name".state.tar.part* | sha256sum | cut -d' ' -f1)" != "$digest" ]; then
      echo "$name: its parts do not add up to the state that was suspended (sha256 differs; nothing unpacked)" >&2
      return 1
    fi
    mkdir -p "$RUNS" && cat "$STUDY/$name".state.tar.part* | tar -xf - -C "$RUNS" || return 1
    echo "$name: unpacked its suspended state into $RUNS; run_study.sh resumes it"
  done
}

case ${1:-} in
stage)
  for dir in $CARRIED; do
    if [ -d "$dir" ]; then cp -r "$dir"/. "$STUDY"/; fi
  done
  ls -la "$STUDY" ;;
unsuspend) unsuspend ;;
suspend)
  shift
  [ $# -gt 0 ] || { echo "usage: $0 suspend NAME..." >&2; exit 2; }
  held=$STUDY/suspended; mkdir -p "$held"
  for name in "$@"; do
    [ -f "$held/$name.state.sha256" ] && continue  # packed by an earlier call: this one returns further parts
    [ -d "$RUNS/$name/training_state" ] || { echo "$name has no training state in $RUNS" >&2; exit 1; }
    # The run's folder (training state, records, config) and log; the best and last EMA artefacts and the sample
    # grids stay behind (the study reads the final EMA generator, written when the run ends).
    logs=(); [ -f "$RUNS/$name.log" ] && logs=("$name.log")
    tar -cf "$held/$name.state.tar" -C "$RUNS" --exclude="$name/generator_best" --exclude="$name/generator_last" \
      --exclude="$name/samples" "$name" "${logs[@]}" || exit 1
    split -b "$PART_SIZE" -d -a 2 "$held/$name.state.tar" "$held/$name.state.tar.part" || exit 1
    echo "$(sha256sum <"$held/$name.state.tar" | cut -d' ' -f1) $(find "$held" -name "$name.state.tar.part*" | wc -l)" \
      >"$held/$name.state.sha256"
    rm "$held/$name.state.tar"
  done
  mapfile -t parts < <(for name in "$@"; do find "$held" -name "$name.state.tar.part*"; done | sort)
  from=${FROM:-0}; to=$((from + PARTS_PER_CALL))
  if [ -n "${OUT:-}" ]; then
    for name in "$@"; do cp "$held/$name.state.sha256" "$OUT/"; done
    for ((i = from; i < to && i < ${#parts[@]}; i++)); do cp "${parts[i]}" "$OUT/"; done
  fi
  if [ "$to" -lt "${#parts[@]}" ]; then echo "parts $from-$((to - 1)) of ${#parts[@]}; next: FROM=$to"
  else echo "parts $from-$((${#parts[@]} - 1)) of ${#parts[@]}: done"; fi ;;
run)
  seconds=$2; shift 2
  unsuspend || exit 1
  export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
  if [ ! -f "$STUDY/train.zip" ]; then
    python3 benchmarks/quality/zip_parts.py join "$STUDY"/train-*of2.zip --out "$STUDY/train.zip" || exit 1
  fi
  export RUNS TEACHER=${TEACHER:-$STUDY/cifar10-uncond-ddpmpp32}
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
*) echo "usage: $0 stage | run SECONDS STAGE... | suspend NAME... | unsuspend" >&2; exit 2 ;;
esac
