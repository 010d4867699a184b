"""Running the user's test command after an apply, and trimming a failure for the coder.

Only the command the user configured (``[workspace] test``, ``--test``, ``/test``) ever runs,
in the workspace root (``{changed}`` in it becomes the files the apply changed, shell-quoted,
so a project whose other modules still fail can test just what was fixed), in its own process group: a timeout or a cancel kills the whole group
(the test runner and anything it started). Output is captured up to a cap (its head and its
tail, where tracebacks and summaries are).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HEAD_BYTES = 16_000  # captured from the start of the output ...
TAIL_BYTES = 48_000  # ... and from its end; the middle of a huge log is dropped
KILL_GRACE_S = 1.0  # after SIGTERM, this long before SIGKILL
FEEDBACK_CHARS = 6_000  # what goes back to the coder


@dataclass(frozen=True)
class TestResult:
    """``status``: passed | failed | no_tests (the runner found no test to run) | timeout |
    cancelled | error (the command could not start)."""

    __test__ = False

    command: str
    status: str
    exit_code: int | None
    output: str
    seconds: float | None  # None: not known (a run read back from the session store)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


CHANGED = "{changed}"
NO_TESTS_EXIT = 5  # pytest's exit code when it collected no test (app/plain_tests.py's too) ...
_NO_TESTS = re.compile(r"\bno tests ran\b|\bcollected 0 items\b|\bno test files\b", re.I)  # ... and what they print


def with_changed(command: str, changed: Sequence[str] = ()) -> str:
    """``command`` with ``{changed}`` replaced by the changed paths, each shell-quoted (by
    nothing when no apply came before: the whole suite)."""
    if CHANGED not in command:
        return command
    return command.replace(CHANGED, " ".join(shlex.quote(p) for p in changed)).strip()


def run_tests(command: str, root: str | Path, *, timeout: float = 300.0,
              cancel: threading.Event | None = None) -> TestResult:
    """Run ``command`` through the shell in ``root``; never raises for the command's own faults."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(command, shell=True, cwd=str(root), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=os.name == "posix")
    except OSError as exc:
        return TestResult(command, "error", None, f"could not start: {exc}", time.monotonic() - start)
    capture = _Capture()
    reader = threading.Thread(target=capture.read, args=(proc.stdout,), daemon=True)
    reader.start()
    status = None
    while proc.poll() is None:
        if cancel is not None and cancel.is_set():
            status = "cancelled"
        elif time.monotonic() - start > timeout:
            status = "timeout"
        if status is not None:
            _kill_group(proc)
            break
        time.sleep(0.02)
    proc.wait()
    reader.join(timeout=2.0)
    output = capture.text()
    if status == "timeout":
        output += f"\n(duet: stopped after {timeout:g} s: the test command took too long)\n"
    elif status is None:
        status = "passed" if proc.returncode == 0 else "failed"
        if proc.returncode == NO_TESTS_EXIT and _NO_TESTS.search(output):
            status = "no_tests"  # not a failure to fix: nothing was tested
    return TestResult(command, status, proc.returncode, output, time.monotonic() - start)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group, SIGKILL it if it lingers."""
    if os.name != "posix":
        proc.kill()
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    try:
        proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # also whatever the runner left behind in the group
    except (ProcessLookupError, PermissionError):
        pass


class _Capture:
    """The first HEAD_BYTES and the last TAIL_BYTES of a stream."""

    def __init__(self):
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.dropped = 0

    def read(self, stream) -> None:
        try:
            for chunk in iter(lambda: stream.read1(65536), b""):
                self.add(chunk)
        except (OSError, ValueError):
            pass

    def add(self, chunk: bytes) -> None:
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size - len(self.tail[0]) >= TAIL_BYTES:
            self.dropped += len(self.tail[0])
            self.tail_size -= len(self.tail.popleft())

    def text(self) -> str:
        tail = b"".join(self.tail)
        if self.tail_size > TAIL_BYTES:
            self.dropped += self.tail_size - TAIL_BYTES
            tail = tail[-TAIL_BYTES:]
        middle = f"\n… ({self.dropped:,} bytes of output dropped) …\n".encode() if self.dropped else b""
        return (bytes(self.head) + middle + tail).decode("utf-8", errors="replace")


_FAILING = re.compile(r"^(FAILED|ERROR)\s+\S|^(FAIL|ERROR):\s|^--- FAIL:|^not ok\b|^\s*✗|^\s*\d+\) ")
_ASSERTION = re.compile(r"^E\s{2,}|AssertionError|assert |Error:|Exception:|^\s*expected|^\s*received|panicked at")


def failure_summary(output: str, limit: int = FEEDBACK_CHARS) -> str:
    """What the coder needs from a failing run: the failing tests' names, the assertion lines,
    and the tail (traceback and summary). Short output goes back whole."""
    output = output.replace("\r\n", "\n").strip("\n")
    if len(output) <= limit:
        return output
    lines = output.split("\n")
    names = [line for line in lines if _FAILING.search(line)][:30]
    asserts = [line for line in lines if _ASSERTION.search(line) and line not in names][:30]
    tail = lines[-60:]
    parts = []
    if names:
        parts.append("Failing:\n" + "\n".join(names))
    if asserts:
        parts.append("Assertions and errors:\n" + "\n".join(asserts))
    budget = limit - sum(len(p) + 2 for p in parts) - 40
    tail_text = "\n".join(tail)
    if budget < len(tail_text):
        tail_text = tail_text[-max(budget, 500):]
    parts.append("End of the output:\n" + tail_text)
    return "\n\n".join(parts)[-limit:] if len("\n\n".join(parts)) > limit else "\n\n".join(parts)


_CALLED = re.compile(r"(?<![\w.])(?:[A-Za-z_][A-Za-z0-9_]*\.)*([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def failing_functions(output: str, files: Sequence[tuple[str, str]], *, reach: bool = True) -> frozenset[str]:
    """The functions of the files (not of their test files) a failing run reaches: each one the
    output shows called (``assert add(2, 3) == 5``; pytest's ``def test_add():`` counts for what
    it calls) that the files define, and every function those call, transitively
    (`app.code_map.reached`). ``reach=False``: only those the output shows called, the likeliest
    place of the fault (all it reaches where it shows none of them). Empty when the output names
    none of the files' functions (an import error, another language): nothing to focus on."""
    from app.code_map import reached

    names = set(_CALLED.findall(output))
    found = [f for f in reached(names, files) if not is_test_path(f.path)]
    shown = frozenset(f.name for f in found if f.name in names)
    return shown if shown and not reach else frozenset(f.name for f in found)


def is_test_path(path: str) -> bool:
    """A test module by its name: ``test_*.py``, ``*_test.py``, ``conftest.py``."""
    name = Path(path).name
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
