"""`duet --demo run --apply --test`: the committed demo models fix a sample module end to end —
the reasoner (our engine, int8) thinks and plans, the coder (llama.cpp) writes the blocks, the
workspace applies them and the module's own test passes. Real models, real files, real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.demo import demo_models_present, fresh_sample_project

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.skipif(not demo_models_present(), reason="the demo models are not in this checkout")

MODULE = "stats.py"  # the demo's first suggested request: "/plan fix the bug in stats.py"


def test_duet_demo_run_fixes_a_sample_module_and_its_test_passes(tmp_path):
    project = fresh_sample_project(tmp_path / "sample")
    test_file = f"test_{MODULE}"
    before = (project / MODULE).read_text(encoding="utf-8")
    assert subprocess.run([sys.executable, test_file], cwd=project, capture_output=True).returncode != 0  # the bug
    env = dict(os.environ, PYTHONPATH=str(ROOT), DUET_HOME=str(tmp_path / "home"))
    result = subprocess.run(
        [sys.executable, "-m", "app", "--demo", "--workspace", str(project), "run", "--apply", "--test",
         f"{sys.executable} {test_file}", "--no-save", "--json", f"/plan fix the bug in {MODULE}"],
        capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["status"] == "passed" and report["plan"], report
    assert [e["path"] for e in report["edits"]] == [MODULE] and all(e["applied"] for e in report["edits"])
    after = (project / MODULE).read_text(encoding="utf-8")
    assert after != before
    assert subprocess.run([sys.executable, test_file], cwd=project, capture_output=True).returncode == 0
