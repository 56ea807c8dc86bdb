#!/bin/bash
# The one-GPU fast-path measurements of benchmarks/RESULTS.md (issue 11) in one device call; results go to $OUT.
# The rows of _fastpath_common.sh, then the GPU-marked tests.
source "$(dirname "$0")/_fastpath_common.sh"
one_gpu_rows > $OUT/one_gpu.txt 2>&1
el suite
timeout ${SUITE_S:-240} python -m pytest -q -p no:cacheprovider -m "gpu or kernels" --durations=15 \
  tests/training/test_gpu_fastpath.py tests -rfE > $OUT/gpu_suite.txt 2>&1
el end
