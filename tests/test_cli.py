"""The command line: help for every command, exit codes, and a start-up that stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["tui", "ask", "route", "doctor", "export-traces"]


def run_duet(*args, env_extra=None, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_version_prints_the_package_version():
    from app import __version__

    result = run_duet("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"duet {__version__}"


def test_help_lists_every_contract_command():
    result = run_duet("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = run_duet(command, "--help")
    assert result.returncode == 0 and "usage: duet" in result.stdout


def test_unknown_command_is_usage_error_exit_2():
    result = run_duet("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert result.stderr.count("\n") == 1


def test_missing_required_argument_is_exit_2():
    result = run_duet("export-traces")
    assert result.returncode == 2 and "--out" in result.stderr


def _imported_modules(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


HEAVY = {"torch", "llama_cpp", "transformers"}


def test_help_does_not_import_torch_or_llama_cpp():
    mods = _imported_modules(
        "from app.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not HEAVY & mods


def test_doctor_does_not_import_torch_or_llama_cpp(tmp_path, capsys):
    mods = _imported_modules(
        "import os\nos.environ['DUET_HOME'] = %r\nfrom app.cli import main\nmain(['--demo', 'doctor'])" % str(tmp_path))
    assert "app.doctor" in mods
    assert not HEAVY & mods


def test_route_command_does_not_import_torch():
    mods = _imported_modules("from app.cli import main\nmain(['route', 'design a cache'])")
    assert not HEAVY & mods
