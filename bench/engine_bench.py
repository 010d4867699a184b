"""Duet's engine vs transformers on the same weights. Same as `python -m local_engine bench`.

    python bench/engine_bench.py [--model DIR] [--dtype bfloat16|float32] [--profile]

Writes bench/results/engine_bench.json and prints a table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local_engine.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
