"""The shared vocabulary sits below every other layer: nothing of ours in it, and the
store, the splitter's users and the backends meet there instead of in each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("app", "local_engine", "kernels", "vocab")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def ours(modules: set[str], top: str) -> set[str]:
    return {m for m in modules if m.split(".")[0] == top}


def test_vocab_imports_nothing_of_ours_but_itself():
    for path in (ROOT / "vocab").glob("*.py"):
        found = {m for m in imports_of(path) if m.split(".")[0] in OURS and m.split(".")[0] != "vocab"}
        assert not found, f"{path.name} imports {found}"


def test_the_store_does_not_import_the_backends():
    for path in (ROOT / "app" / "store").glob("*.py"):
        assert not {m for m in imports_of(path) if m.startswith("app.backends")}, path.name


def test_server_and_gguf_backends_take_the_splitter_from_vocab_not_the_engine():
    for name in ("openai.py", "llamacpp.py"):
        assert not ours(imports_of(ROOT / "app" / "backends" / name), "local_engine"), name


def test_the_engine_never_imports_the_app():
    for path in (ROOT / "local_engine").rglob("*.py"):
        assert not ours(imports_of(path), "app"), path.name


def test_the_conversation_core_never_imports_the_tui():
    for path in (ROOT / "app" / "conversation").rglob("*.py"):
        assert not {m for m in imports_of(path) if m.startswith(("app.tui", "textual"))}, path.name
