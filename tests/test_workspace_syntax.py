"""An edit that leaves a file that parsed unparsable is rejected (``[workspace] check_syntax``),
with the parser's line and message, and goes back to the coder like any rejected block."""

from __future__ import annotations

import pytest

from app.config import ConfigError, parse_config
from app.workspace import Workspace, revise
from app.workspace.context import parser_of
from app.workspace.syntax import syntax_error
from tests.test_workspace_revise import ScriptedCoder, block

SOURCE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


def test_python_errors_name_their_line_and_valid_source_passes():
    assert syntax_error("calc.py", SOURCE.encode()) is None
    assert syntax_error("calc.py", b"def f(xs):\n    return xs]\n").startswith("line 2: unmatched ']'")
    assert syntax_error("pkg/Calc.PY", b"def f():\nreturn 1\n").startswith("line 2: expected an indented block")
    assert syntax_error("notes.txt", b"((( not code") is None  # no parser for the language


@pytest.mark.parametrize("rel, good, bad, line", [
    ("app.js", b"function f() { return [1, 2]; }\n", b"function f() {\n  return [1, 2;\n}\n", 2),
    ("main.go", b"package main\n\nfunc f() int { return 1 }\n", b"package main\n\nfunc f() int { return 1 \n", 4),
    ("lib.rs", b"fn f() -> i32 { 1 }\n", b"fn f() -> i32 {\n    let x = ;\n    1\n}\n", 2),
])
def test_tree_sitter_languages_name_the_line_of_their_first_error(rel, good, bad, line):
    if parser_of(rel) is None:
        pytest.skip(f"no tree-sitter grammar for {rel} here")
    assert syntax_error(rel, good) is None
    error = syntax_error(rel, bad)
    assert error is not None and error.startswith(f"line {line}:")


def test_an_edit_that_breaks_a_parsing_file_is_rejected_and_the_rest_stands(tmp_path):
    (tmp_path / "calc.py").write_text(SOURCE)
    (tmp_path / "other.py").write_text("X = 1\n")
    ws = Workspace(tmp_path, check_syntax=True)
    reply = block("calc.py", "    return a - b\n", "    return (a - b\n") + block("other.py", "X = 1\n", "X = 2\n")
    changes = ws.propose(reply)
    assert [e.path for e in changes.edits] == ["other.py"]
    assert len(changes.rejected) == 1 and changes.rejected[0].path == "calc.py"
    reason = changes.rejected[0].reason
    assert reason.startswith("this block leaves calc.py unparsable, line 6: '(' was never closed (Python 3.")
    assert "calc.py" in changes.feedback() and "block at line 2 of your reply" in changes.feedback()
    assert (tmp_path / "calc.py").read_text() == SOURCE  # proposing writes nothing


def test_only_the_blocks_that_break_the_file_are_sent_back(tmp_path):
    (tmp_path / "calc.py").write_text(SOURCE)
    ws = Workspace(tmp_path, check_syntax=True)
    reply = (block("calc.py", "    return a + b\n", "    return a + b + 0\n")
             + block("calc.py", "    return a - b\n", "    return a - b -\n"))
    changes = ws.propose(reply)
    assert [r.block.line for r in changes.rejected] == [8]
    assert "this block leaves calc.py unparsable, line 6: invalid syntax" in changes.rejected[0].reason
    assert changes.edits[0].after.decode() == SOURCE.replace("a + b", "a + b + 0")


def test_a_file_that_did_not_parse_or_is_new_is_not_judged(tmp_path):
    (tmp_path / "draft.py").write_text("def f(:\n    pass\n")
    ws = Workspace(tmp_path, check_syntax=True)
    changes = ws.propose(block("draft.py", "    pass\n", "    return 1\n") + block("new.py", "", "def g(:\n"))
    assert sorted(e.path for e in changes.edits) == ["draft.py", "new.py"] and not changes.rejected


def test_off_for_a_bare_workspace_and_when_configured_off(tmp_path):
    (tmp_path / "calc.py").write_text(SOURCE)
    reply = block("calc.py", "    return a - b\n", "x\n")
    assert Workspace(tmp_path).propose(reply).edits  # the Python API judges blocks only
    on = Workspace.from_config(tmp_path, parse_config({}))
    assert on.check_syntax and not on.propose(reply).edits
    off = Workspace.from_config(tmp_path, parse_config({"workspace": {"check_syntax": False}}))
    assert off.propose(reply).edits
    with pytest.raises(ConfigError, match="workspace.check_syntax"):
        parse_config({"workspace": {"check_syntax": "yes"}})


def test_the_retry_loop_sends_the_error_back_and_keeps_the_earlier_rounds_edit(tmp_path):
    (tmp_path / "calc.py").write_text(SOURCE)
    ws = Workspace(tmp_path, check_syntax=True)
    first = block("calc.py", "    return a + b\n", "    return b + a\n") + block("calc.py", "    return a - b\n", "    return a -- \n")
    broken_again = block("calc.py", "    return a - b\n", "    return a ** \n")
    fixed = block("calc.py", "    return a - b\n", "    return a - b - 0\n")
    coder = ScriptedCoder(broken_again, fixed)
    changes = revise(ws, first, coder)
    assert len(coder.prompts) == 2
    assert all("calc.py unparsable, line 6: invalid syntax" in p for p in coder.prompts)
    assert not changes.rejected
    assert changes.edits[0].after.decode() == SOURCE.replace("a + b", "b + a").replace("return a - b", "return a - b - 0")
