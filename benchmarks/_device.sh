# Sourced by the one-call device scripts (gpu_check.sh, profile_step.sh, candidates_check.sh) from the repository root:
#   source benchmarks/_device.sh DIR
# puts the library on the path, defaults Z (the CIFAR-10 zip of the zip rows), defines `el` (a line with the seconds
# since the start) and writes the card's name and the torch and Triton versions to DIR/gpu.txt.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
Z=${Z:-.devdata/cifar10-test-jpeg75.zip}
mkdir -p "$1"
T0=$(date +%s)
el() { echo "[t=$(($(date +%s) - T0))s] $*"; }
{
  nvidia-smi --query-gpu=name --format=csv,noheader
  python -c "import torch, triton; print(f'torch {torch.__version__}, triton {triton.__version__}')"
} > "$1/gpu.txt"
