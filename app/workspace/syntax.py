"""Does a source file parse? The check an edit passes before it is proposed.

``syntax_error(rel, data)`` names the first syntax error as one line (``line 13: unmatched
']'``), or None when the file parses or Duet has no parser for its language. Python files are
parsed by this Python (syntax only: ``ast``'s parse, no compile step); other languages by the
outline's tree-sitter grammars (JavaScript, TypeScript, Go, Rust, and whatever the installed
grammar pack has). The workspace rejects an edit that leaves a file it could parse unparsable
(``Workspace.propose``), so a coder's slip is sent back to it rather than written.
"""

from __future__ import annotations

import ast
import sys

from app.workspace.context import parser_of

PYTHON_SUFFIXES = (".py", ".pyi")
PYTHON = f"Python {sys.version_info.major}.{sys.version_info.minor}"
SNIPPET_CHARS = 40


def syntax_error(rel: str, data: bytes) -> str | None:
    """The first syntax error in ``data`` (the contents of the file at ``rel``) as one line, or
    None: it parses, or no parser for its language is at hand."""
    if rel.lower().endswith(PYTHON_SUFFIXES):
        return _python_error(rel, data)
    parser = parser_of(rel)
    if parser is None:
        return None
    root = parser.parse(data).root_node
    if not root.has_error:
        return None
    node = _first_error(root)
    if node is None:
        return "does not parse"
    line = node.start_point[0] + 1
    if node.is_missing:
        return f"line {line}: missing {node.type!r}"
    text = data[node.start_byte:node.end_byte].decode("utf-8", "replace").strip().splitlines()
    near = text[0][:SNIPPET_CHARS] if text else ""
    return f"line {line}: cannot parse {near!r}" if near else f"line {line}: cannot parse"


def _python_error(rel: str, data: bytes) -> str | None:
    try:
        ast.parse(data, filename=rel)
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""
        return f"{where}{exc.msg} ({PYTHON})"
    except ValueError:  # null bytes: not Python source at all
        return None
    return None


def _first_error(node):
    """The first ERROR or MISSING node in source order, depth first."""
    if node.is_missing or node.type == "ERROR":
        return node
    if not node.has_error:
        return None
    for child in node.children:
        found = _first_error(child)
        if found is not None:
            return found
    return None
