#!/usr/bin/env bash
# Install Duet into ./.venv. `bash scripts/install.sh` for the app and its demo model,
# `bash scripts/install.sh dev` for everything the test suite needs too.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-demo}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch first, pinned: its CPU build; an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extra]"
