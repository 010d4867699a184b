"""A real `duet serve` for tests: the CLI in a subprocess on 127.0.0.1, a free port, a config file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
URL = re.compile(r"at (http://\S+/v1)")


class DuetServe:
    """`python -m app --config FILE serve --port 0 ...`; ``base`` is the URL it printed."""

    def __init__(self, config_text: str, folder: Path, *args: str, env: dict | None = None, timeout: float = 180):
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "config.toml"
        self.config.write_text(config_text)
        self.log = folder / "serve.log"
        home = folder / "home"
        home.mkdir(exist_ok=True)
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        # OpenMP threads that sleep instead of spinning: on a busy test machine spinning
        # threads wait for each other for seconds per token. Speed only, not results.
        full_env = {**os.environ, "DUET_HOME": str(home), "PYTHONPATH": path, "OMP_WAIT_POLICY": "PASSIVE",
                    **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "app", "--config", str(self.config), "serve",
                                      "--port", "0", *args], cwd=ROOT, env=full_env, text=True,
                                     stdout=subprocess.PIPE, stderr=open(self.log, "w"))
        self.stdout_lines: list[str] = []
        found = threading.Event()

        def read():  # keep draining stdout so the server never blocks on a full pipe
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
                if URL.search(line):
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"duet serve did not start:\n{self.log.read_text()[-3000:]}")
        self.base = next(URL.search(line).group(1) for line in self.stdout_lines if URL.search(line))

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def stderr(self) -> str:
        return self.log.read_text()


def llama_config(gguf: Path, *, role: str = "reasoner", context: int = 1024) -> str:
    return f'[{role}]\nbackend = "llama.cpp"\npath = "{gguf}"\ncontext = {context}\nthreads = 1\n'


def local_config(folder: Path, *, role: str = "reasoner", context: int = 256) -> str:
    return f'[{role}]\nbackend = "local"\npath = "{folder}"\ndtype = "float32"\ncontext = {context}\n'
