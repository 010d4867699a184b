#!/usr/bin/env bash
# Install Duet into ./.venv. `bash scripts/install.sh` for the app and its demo model,
# `bash scripts/install.sh dev` for everything the test suite needs too.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-demo}
python=${PYTHON:-python3}
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch first, pinned: its CPU build; an unpinned torch pulls a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
# llama.cpp built for this CPU crashes in its AMX (Intel Sapphire Rapids+) matmuls on some
# kernels/VMs (a segfault at the first decode, seen here). Where the CPU has AMX, build it
# once without AMX and keep that wheel apart from pip's cache, which ignores build flags.
llama="llama-cpp-python==0.3.36"
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/duet/wheels-no-amx"
  if ! ls "$wheels"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CFLAGS="$noamx" CXXFLAGS="$noamx" .venv/bin/python -m pip wheel --quiet --disable-pip-version-check \
      --no-deps --no-cache-dir "$llama" -w "$wheels"
  fi
  "${pip[@]}" --no-deps "$wheels"/llama_cpp_python-0.3.36-*.whl
fi
"${pip[@]}" -e ".[$extra]"
