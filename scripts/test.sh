#!/usr/bin/env bash
# Install the test dependencies into ./.venv and run the whole test suite.
# With no arguments it then runs the engine and kernel tests again as an AVX2-only x86 CPU
# (no AVX-512: what most users' and the acceptance machines have): torch's kernels, oneDNN and
# the engine's own path choice all lowered to AVX2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
# pytest exits 5 when it collected no tests: that is a failure here too.
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
  echo "== again as an AVX2-only CPU (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 DUET_CPU=avx2)"
  ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 DUET_CPU=avx2 \
    .venv/bin/python -m pytest -q tests/test_cpu_capability.py tests/test_engine_*.py tests/test_quant_*.py \
    tests/test_kernels_native.py tests/test_kernels_moe.py tests/test_kernels_mla.py tests/test_kernels_norm_rope.py \
    tests/test_kernels_dispatch.py tests/test_kernels_decode_step.py tests/test_kernels_prefill.py \
    tests/test_kernels_indexer.py
fi
