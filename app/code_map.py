"""The functions of Python files in context: where each one's lines are and what it calls.

What a failing test run reaches (`app.conversation.verify.failing_functions`) and where a
reading may conclude (`app.exact_quotes.ReadingFocus`) are both answered from this map. Files
that are not Python, or do not parse, have no functions here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Function:
    path: str
    name: str
    first: int  # 1-based line of its ``def`` (its decorators above are not counted)
    last: int  # its last line
    calls: frozenset[str]  # the names it calls: ``f(...)`` and ``obj.f(...)`` alike
    doc: str = ""  # its docstring's text (ast.get_docstring), "" when it has none
    code: int = 0  # the line its code starts on, after the docstring (0: not known)


def functions(files: Iterable[tuple[str, str]]) -> list[Function]:
    """Every function and method the ``(path, text)`` files define, nested ones too."""
    found = []
    for path, text in files:
        if not str(path).endswith(".py"):
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                calls = {_called(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
                calls.discard(None)
                doc = ast.get_docstring(node) or ""
                code = node.body[1 if doc and len(node.body) > 1 else 0].lineno
                found.append(Function(str(path), node.name, node.lineno, node.end_lineno or node.lineno,
                                      frozenset(calls), doc, code))
    return found


def reached(names: Iterable[str], files: Iterable[tuple[str, str]]) -> list[Function]:
    """The functions named, and every function they call, transitively (by name: a call of
    ``f`` reaches each ``f`` the files define)."""
    by_name: dict[str, list[Function]] = {}
    for f in functions(files):
        by_name.setdefault(f.name, []).append(f)
    seen: set[str] = set()
    todo = [n for n in names if n in by_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [c for f in by_name[name] for c in f.calls if c in by_name and c not in seen]
    return [f for name in sorted(seen) for f in by_name[name]]


def _called(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None
