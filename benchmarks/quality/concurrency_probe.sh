#!/usr/bin/env bash
# Does one GPU train the study's small students faster side by side? The study teacher (2.85M parameters) leaves an
# H100 mostly idle inside each kernel, so K runs at once may add up to more than one run's images/s. This measures
# the sum of the logged images/s of K concurrent SiD runs (the example script, study teacher, batch 256, captured),
# without and with CUDA MPS (which lets kernels of different processes share the GPU), and prints one table.
#
#   device: bash benchmarks/quality/concurrency_probe.sh      (carry .devdata, which holds the study teacher)
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
T=${T:-.devdata/cifar10-uncond-ddpmpp32}
KS=${KS:-1 3}
LOG=${OUT:-/tmp/probe}; mkdir -p "$LOG"
EX="examples/distill_edm.py --recipe cifar10-uncond --method sid --teacher $T --batch 256 --cuda-graphs \
  --channels-last --precision bf16 --start-kimg 0 --log-kimg 25.6"

trial() {  # trial LABEL K KIMG: K runs at once; prints LABEL K and the sum of their steady images/s
  local label=$1 k=$2 kimg=$3 i
  for ((i = 0; i < k; i++)); do
    rm -rf "/tmp/probe_$label$i"
    timeout 150 python $EX --total-kimg "$kimg" --seed "$i" --outdir "/tmp/probe_$label$i" \
      > "$LOG/probe_$label${k}_$i.txt" 2>&1 &
  done
  wait
  python3 - "$label" "$k" /tmp/probe_"$label"{0..9}/stats.jsonl <<'EOF' 2>/dev/null
import pathlib, sys
sys.path.insert(0, "benchmarks")
from _gpu_check_summary import logged  # a run's mean logged images/s after the warm-up interval

label, k = sys.argv[1], int(sys.argv[2])
rates = [mean for p in sys.argv[3:] if (mean := logged(pathlib.Path(p))[1]) is not None]
print(f"| {label} | {k} | {len(rates)} | {' / '.join(f'{r:,.0f}' for r in rates)} | {sum(rates):,.0f} |")
EOF
}

{
  nvidia-smi --query-gpu=name --format=csv,noheader
  echo "| MPS | runs | logged | images/s each | sum |"
  echo "|---|---|---|---|---|"
  for k in $KS; do trial nomps "$k" 102.4; done
  if command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d; then
      for k in $KS; do [ "$k" -gt 1 ] && trial mps "$k" 102.4; done
      echo quit | nvidia-cuda-mps-control
    else
      echo "MPS: the daemon did not start"
    fi
  else
    echo "MPS: nvidia-cuda-mps-control is not installed"
  fi
} | tee "$LOG/probe.md"
