"""The demo's test runner (``app/plain_tests.py``): run by its path in any workspace, plain
asserts and test_* functions, the tests of the modules named, the workspace's modules first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app import demo
from app.conversation.verify import failing_functions, run_tests, with_changed

RUNNER = Path(demo.__file__).resolve().parent / "plain_tests.py"


def run(root: Path, *names: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *names], cwd=root, capture_output=True, text=True, timeout=60)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_plain_asserts_and_test_functions_pass_and_fail_each_by_name(tmp_path):
    write(tmp_path, {
        "calc.py": "def add(a, b):\n    return a - b\n\n\ndef neg(a):\n    return -a\n",
        "test_calc.py": "from calc import add, neg\n\n\ndef test_neg():\n    assert neg(2) == -2\n\n\n"
                        "def test_add():\n    assert add(2, 3) == 5\n\n\ndef helper_not_a_test():\n    raise SystemExit(3)\n",
        "test_plain.py": "from calc import neg\nassert neg(0) == 0\n",
    })
    out = run(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL test_calc.py::test_add" in out.stdout and "test_neg" not in out.stdout
    assert "PASS test_plain.py" in out.stdout and out.stdout.rstrip().endswith("1 failed")
    assert "assert add(2, 3) == 5" in out.stdout and "runpy" not in out.stdout and "plain_tests" not in out.stdout
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a + b\n\n\ndef neg(a):\n    return -a\n")
    fixed = run(tmp_path)
    assert fixed.returncode == 0 and fixed.stdout.rstrip().endswith("all tests passed")


def test_the_named_modules_tests_run_wherever_they_are_else_every_test(tmp_path):
    write(tmp_path, {
        "pkg/a.py": "def f():\n    return 1\n", "tests/test_a.py": "import sys; sys.path.insert(0, 'pkg')\nfrom a import f\nassert f() == 2\n",
        "b.py": "X = 1\n", "test_b.py": "from b import X\nassert X == 1\n",
        ".venv/test_vendored.py": "raise SystemExit('never collected')\n",
    })
    only_a = run(tmp_path, "pkg/a.py")
    assert "FAIL tests/test_a.py" in only_a.stdout and "test_b" not in only_a.stdout
    assert run(tmp_path, "b.py").returncode == 0
    assert run(tmp_path, "tests/test_a.py").stdout.count("FAIL") == 1  # a test file names itself
    every = run(tmp_path, "notes.md", "c.py")  # nothing of theirs: the whole suite
    assert "FAIL tests/test_a.py" in every.stdout and "PASS test_b.py" in every.stdout
    assert "never collected" not in every.stdout + every.stderr


def test_the_workspace_modules_come_first_each_file_its_own(tmp_path):
    # modules named as Duet's own files (app/config.py, app/demo.py) and two folders each with its util.py
    write(tmp_path, {
        "config.py": "VALUE = 'workspace'\n", "test_config.py": "from config import VALUE\nassert VALUE == 'workspace'\n",
        "one/util.py": "N = 1\n", "one/test_one.py": "from util import N\nassert N == 1\n",
        "two/util.py": "N = 2\n", "two/test_two.py": "from util import N\nassert N == 2\n",
    })
    out = run(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("PASS ") == 3


def test_no_test_file_is_its_own_exit_code(tmp_path):
    out = run(write(tmp_path, {"calc.py": "X = 1\n"}))
    assert out.returncode == 5 and "no test files" in out.stdout


def test_the_demo_test_command_works_in_a_workspace_of_the_users_own(tmp_path):
    """`duet --demo --workspace DIR`: no run_tests.py there, the demo's command still tests it, and
    what fails names the function the reasoner's reading is focused on."""
    source = "def total(xs):\n    s = 1\n    for x in xs:\n        s += x\n    return s\n"
    write(tmp_path, {"money.py": source, "test_money.py": "from money import total\nassert total([1, 2]) == 3\n"})
    assert not (tmp_path / "run_tests.py").exists()
    result = run_tests(with_changed(demo.test_command(), ["money.py"]), tmp_path)
    assert result.status == "failed", result.output
    assert "FAIL test_money.py" in result.output
    assert failing_functions(result.output, [("money.py", source)], reach=False) == frozenset({"total"})


def test_the_sample_projects_runner_is_this_one():
    sample = demo.sample_source() / "run_tests.py"
    assert sample.read_text(encoding="utf-8") == RUNNER.read_text(encoding="utf-8")
