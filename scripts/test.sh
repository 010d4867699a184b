#!/usr/bin/env bash
# Install the test dependencies into ./.venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
# pytest exits 5 when it collected no tests: that is a failure here too.
exec .venv/bin/python -m pytest -q "$@"
