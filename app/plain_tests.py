"""Run Python test files without pytest; exit 1 if any fails (standard library only).

    python run_tests.py              every test_*.py under the current folder
    python run_tests.py stats.py     the tests of stats.py (test_stats.py, wherever it is)

A test file passes when it runs to the end (its plain top-level ``assert``s hold) and each
``test_*`` function it defines, called without arguments, returns. A module named with no test
file of its own adds none; when the names add none at all, every test file runs. No test file
at all: exit 5 (pytest's "no tests").

This file is the demo's test command (``app.demo.test_command``, run by its path in whatever
workspace Duet works on) and, written as ``run_tests.py``, the sample project's own runner.
It runs as a script, so the workspace, not this file's folder, comes first on ``sys.path``.
"""

import os
import runpy
import sys
import traceback

SKIP_DIRS = {".git", ".hg", ".venv", "venv", "env", "node_modules", "__pycache__", "site-packages", ".tox"}


def test_files(root):
    """Every test_*.py under ``root`` (hidden and environment folders skipped), sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files
                  if f.startswith("test_") and f.endswith(".py")]
    return sorted(found)


def tests_of(names, every):
    """The test files of the named modules (a test file names itself), among ``every``."""
    wanted = set()
    for name in names:
        base = os.path.basename(name)
        if not base.endswith(".py"):
            continue
        target = base if base.startswith("test_") else "test_" + base
        beside = os.path.normpath(os.path.join(os.path.dirname(name), target))
        matches = [f for f in every if os.path.normpath(f) == beside] or \
                  [f for f in every if os.path.basename(f) == target]
        wanted.update(matches)
    return sorted(wanted)


def run_file(path):
    """Run one test file and its test_* functions; returns the failures as (label, traceback)."""
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)  # a test beside its module imports it by name
    loaded = set(sys.modules)
    try:
        try:
            namespace = runpy.run_path(path, run_name="__main__")
        except Exception as exc:  # noqa: BLE001 - a failing test file is what this reports
            return [(path, shown(exc))]
        failures = []
        for name, value in list(namespace.items()):
            if name.startswith("test_") and callable(value) and getattr(value, "__module__", None) == "__main__":
                try:
                    value()
                except Exception as exc:  # noqa: BLE001
                    failures.append((f"{path}::{name}", shown(exc)))
        return failures
    finally:
        sys.path.remove(folder)
        for name in set(sys.modules) - loaded:  # the next file imports its own modules afresh
            del sys.modules[name]


def shown(exc):
    """The traceback from the test file's frame on (this runner's and runpy's frames left out)."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = (os.path.abspath(__file__), os.path.abspath(runpy.__file__))
    kept = [f for f in frames if not f.filename.startswith("<frozen") and os.path.abspath(f.filename) not in own]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(kept),
             *traceback.format_exception_only(type(exc), exc)]
    return "".join(lines)


def main(argv):
    sys.path[0] = os.getcwd()  # as a script, this file's folder came first: the workspace instead
    every = test_files(".")
    chosen = tests_of(argv, every) or every
    if not chosen:
        print(f"no test files (test_*.py) under {os.getcwd()}")
        return 5
    failed = 0
    for path in chosen:
        failures = run_file(path)
        failed += len(failures)
        if not failures:
            print(f"PASS {path}")
        for label, text in failures:
            print(f"FAIL {label}")
            print(text, end="")
    print(f"{failed} failed" if failed else "all tests passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
