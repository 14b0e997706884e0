#!/usr/bin/env bash
# `--suite all` with every kernel library held off this CPU's fastest path for the whole run (issue 25): what the
# shipped reference weights, the exports derived from them and the suite's bounds must survive on another machine.
# Usage: bash scripts/suite_other_kernels.sh [-- extra pytest arguments]. Not part of CI (.ci/run runs the
# README's test command only); about as long as `--suite all`.
set -euo pipefail
cd "$(dirname "$0")/.."
export ATEN_CPU_CAPABILITY=avx2              # ATen's AVX2 kernels, not AVX-512
export OPENBLAS_CORETYPE=Haswell             # numpy's OpenBLAS on its Haswell (AVX2) kernels
export ONEDNN_MAX_CPU_ISA=AVX2               # oneDNN convolutions and matmuls held to AVX2
export MKL_ENABLE_INSTRUCTIONS=AVX2          # MKL's AVX2 branch
export NPY_DISABLE_CPU_FEATURES="X86_V4,AVX512_ICL,AVX512_SPR"  # numpy's own AVX-512 loops off
rm -rf .cache/reference                      # references rebuilt (from the shipped weights) on these kernels
exec python3 run_tests.py --suite all "$@"
