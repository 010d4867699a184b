"""The demo's sample project: a few small modules, each with one planted bug and a test file,
and ``run_tests.py`` (``app/plain_tests.py``: runs every ``test_*.py``, or those of the modules named; no pytest
needed). Built from the generator
with a fixed seed and written to ``app/data/demo/sample`` (package data):

    python -m training.sample_project app/data/demo/sample
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from training.tasks import make_module

# (file, bug kind, number of functions): one of each kind the demo shows off
PLAN = [("calc.py", "operator", 2), ("stats.py", "accumulator", 2), ("listops.py", "off_by_one", 3),
        ("checks.py", "comparison", 2), ("shapes.py", "swapped_args", 3), ("words.py", "wrong_name", 2)]
SEED = 20260


RUN_TESTS = (Path(__file__).resolve().parent.parent / "app" / "plain_tests.py").read_text(encoding="utf-8")

README = """# Duet demo project

Each module here has one planted bug; its test file says what the functions should return.
Try, in `duet --demo`:  /plan fix the bug in stats.py  → hand off → review the diff → apply → /test
Tests: python run_tests.py
"""


def build(out: Path) -> list:
    from training import tasks

    tasks.RANDOM_NAME_P = 0.0  # the pools' everyday names, not random words
    rng = random.Random(SEED)
    out.mkdir(parents=True, exist_ok=True)
    mods = []
    for path, kind, n in PLAN:
        m = make_module(rng, "train", kind=kind, n_funcs=n, path=path)
        (out / m.path).write_text(m.source, encoding="utf-8")
        (out / m.test_path).write_text(m.test_source, encoding="utf-8")
        mods.append(m)
    (out / "run_tests.py").write_text(RUN_TESTS, encoding="utf-8")
    (out / "README.md").write_text(README, encoding="utf-8")
    return mods


if __name__ == "__main__":
    for m in build(Path(sys.argv[1] if len(sys.argv) > 1 else "app/data/demo/sample")):
        print(f"{m.path}: `{m.func.name}` {m.mutation.kind}: {m.bad_line.strip()!r} -> {m.good_line.strip()!r}")
