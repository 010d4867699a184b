"""The SEARCH/REPLACE format and the sloppiness it tolerates (and what it never guesses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.workspace import Workspace
from app.workspace.edit_blocks import parse

SOURCE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture
def ws(tmp_path) -> Workspace:
    (tmp_path / "calc.py").write_text(SOURCE)
    return Workspace(tmp_path)


def block(path_line: str, search: str, replace: str) -> str:
    return f"{path_line}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def after(ws: Workspace, reply: str) -> str:
    changes = ws.propose(reply)
    assert not changes.rejected, changes.feedback()
    assert len(changes.edits) == 1
    return changes.edits[0].after.decode()


def test_a_plain_block_replaces_exactly_the_searched_lines(ws):
    out = after(ws, block("calc.py", "    return a - b\n", "    return a - b - 0\n"))
    assert out == SOURCE.replace("a - b\n", "a - b - 0\n")


@pytest.mark.parametrize("path_line", ["`calc.py`", "**calc.py**", "calc.py:", "  calc.py  ", "'calc.py'",
                                       "File: calc.py", "# calc.py", "./calc.py"])
def test_decorated_path_lines_are_understood(ws, path_line):
    out = after(ws, block(path_line, "    return a - b\n", "    return b - a\n"))
    assert "return b - a" in out


def test_fences_around_the_block_are_ignored(ws):
    reply = ("Sure:\n\ncalc.py\n```python\n<<<<<<< SEARCH\n    return a + b\n=======\n    return b + a\n"
             ">>>>>>> REPLACE\n```\nDone.\n")
    assert "return b + a" in after(ws, reply)


def test_a_path_on_the_fence_line_is_understood(ws):
    reply = "```python calc.py\n<<<<<<< SEARCH\n    return a + b\n=======\n    return b + a\n>>>>>>> REPLACE\n```\n"
    assert "return b + a" in after(ws, reply)


def test_trailing_spaces_in_search_and_markers_are_tolerated(ws):
    reply = "calc.py\n<<<<<<< SEARCH   \n    return a + b   \n=======  \n    return a+b\n>>>>>>> REPLACE \n"
    assert "return a+b\n" in after(ws, reply)


def test_a_missing_final_newline_in_the_reply_is_tolerated(ws):
    reply = "calc.py\n<<<<<<< SEARCH\n    return a + b\n=======\n    return 0\n>>>>>>> REPLACE"
    assert "return 0\n" in after(ws, reply)


def test_search_indented_more_than_the_file_is_reindented_by_the_same_amount(ws):
    reply = block("calc.py", "  def sub(a, b):\n      return a - b\n", "  def sub(a, b):\n      return b - a\n")
    assert "\ndef sub(a, b):\n    return b - a\n" in after(ws, reply)


def test_search_indented_less_than_the_file_is_reindented_by_the_same_amount(tmp_path):
    (tmp_path / "m.py").write_text("class A:\n    def f(self):\n        return 1\n")
    reply = block("m.py", "def f(self):\n    return 1\n", "def f(self):\n    return 2\n")
    assert after(Workspace(tmp_path), reply) == "class A:\n    def f(self):\n        return 2\n"


def test_inconsistent_indentation_differences_are_not_guessed(tmp_path):
    (tmp_path / "m.py").write_text("class A:\n    def f(self):\n        return 1\n")
    changes = Workspace(tmp_path).propose(block("m.py", "def f(self):\n  return 1\n", "x\n"))
    assert not changes.edits and "Did you mean" in changes.rejected[0].reason


def test_blank_lines_at_the_edges_of_search_are_tolerated_without_adding_lines(ws):
    reply = block("calc.py", "\n    return a - b\n\n", "\n    return b - a\n\n")
    assert after(ws, reply) == SOURCE.replace("a - b", "b - a")


def test_blank_lines_that_are_really_there_are_matched_first(tmp_path):
    (tmp_path / "g.py").write_text("x = 1\n\ny = 2\n")
    reply = block("g.py", "x = 1\n\n", "x = 10\n\n")
    assert after(Workspace(tmp_path), reply) == "x = 10\n\ny = 2\n"


def test_several_blocks_after_one_path_line_all_apply(ws):
    reply = ("calc.py\n<<<<<<< SEARCH\n    return a + b\n=======\n    return b + a\n>>>>>>> REPLACE\n"
             "<<<<<<< SEARCH\n    return a - b\n=======\n    return b - a\n>>>>>>> REPLACE\n")
    out = after(ws, reply)
    assert "b + a" in out and "b - a" in out


def test_a_search_matching_two_places_is_rejected_naming_the_lines(tmp_path):
    (tmp_path / "dup.py").write_text("x = 1\ny = 2\nx = 1\n")
    changes = Workspace(tmp_path).propose(block("dup.py", "x = 1\n", "x = 3\n"))
    assert not changes.edits
    assert "matches 2 places" in changes.rejected[0].reason and "1, 3" in changes.rejected[0].reason


def test_a_search_matching_nothing_suggests_the_closest_lines(ws):
    changes = ws.propose(block("calc.py", "def sub(a, b):\n    return a - c\n", "x\n"))
    reason = changes.rejected[0].reason
    assert "Did you mean" in reason and "return a - b" in reason and "(5-6)" in reason


def test_a_search_unlike_anything_says_no_similar_lines(ws):
    changes = ws.propose(block("calc.py", "zzzz qqqq wwww\n", "x\n"))
    assert "no similar lines" in changes.rejected[0].reason


def test_an_empty_search_creates_a_file_with_a_final_newline(tmp_path):
    ws = Workspace(tmp_path)
    changes = ws.propose("new/mod.py\n<<<<<<< SEARCH\n=======\nprint(1)\n>>>>>>> REPLACE")
    assert changes.edits[0].created and changes.edits[0].after == b"print(1)\n"
    assert changes.edits[0].diff.startswith("--- /dev/null\n+++ b/new/mod.py\n")


def test_an_empty_search_on_an_existing_file_is_rejected_not_appended(ws):
    changes = ws.propose(block("calc.py", "", "junk\n"))
    assert not changes.edits and "already exists" in changes.rejected[0].reason


def test_a_search_on_a_missing_file_says_how_to_create_it(ws):
    changes = ws.propose(block("nope.py", "x\n", "y\n"))
    assert "does not exist" in changes.rejected[0].reason and "empty SEARCH" in changes.rejected[0].reason


def test_a_block_without_a_path_line_is_rejected(ws):
    changes = ws.propose("<<<<<<< SEARCH\n    return a + b\n=======\nx\n>>>>>>> REPLACE\n")
    assert not changes.edits and "no file path" in changes.rejected[0].reason


def test_prose_before_a_block_is_not_taken_for_a_path(ws):
    changes = ws.propose("Now change the function as follows\n<<<<<<< SEARCH\n=======\nx\n>>>>>>> REPLACE\n")
    assert not changes.edits and "must be the file path alone" in changes.rejected[0].reason


def test_an_unterminated_block_is_rejected(ws):
    changes = ws.propose("calc.py\n<<<<<<< SEARCH\n    return a + b\n=======\nx\n")
    assert not changes.edits and "no >>>>>>> REPLACE" in changes.rejected[0].reason


def test_a_later_block_matches_the_text_left_by_an_earlier_one(ws):
    reply = (block("calc.py", "    return a + b\n", "    total = a + b\n    return total\n")
             + block("calc.py", "    return total\n", "    return int(total)\n"))
    assert "total = a + b\n    return int(total)\n" in after(ws, reply)


def test_one_bad_block_does_not_stop_the_good_ones(ws):
    reply = block("calc.py", "    return a + b\n", "    return b + a\n") + block("calc.py", "nothing like it\n", "y\n")
    changes = ws.propose(reply)
    assert len(changes.edits) == 1 and len(changes.rejected) == 1
    assert changes.rejected[0].block.line == 8  # its <<<<<<< SEARCH line


def test_parse_reports_line_numbers_of_blocks():
    blocks, problems = parse("intro\n\na.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n")
    assert not problems
    assert blocks[0].path == "a.py" and blocks[0].line == 4
    assert blocks[0].search == ("x",) and blocks[0].replace == ("y",)


def test_proposing_writes_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("one\n")
    before = {p: p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file()}
    Workspace(tmp_path).propose(block("a.txt", "one\n", "two\n") + block("b.txt", "", "new\n"))
    assert {p: p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file()} == before


def test_a_block_missing_its_search_marker_is_reported_as_stray():
    blocks, problems = parse("a.py\n=======\nnew\n>>>>>>> REPLACE\n")
    assert not blocks and "stray >>>>>>> REPLACE at line 4" in problems[0].reason


def test_a_heading_underline_in_prose_is_not_a_problem():
    blocks, problems = parse("Title\n=======\n\na.py\n<<<<<<< SEARCH\n=======\nx\n>>>>>>> REPLACE\n")
    assert not problems and blocks[0].path == "a.py"


def test_a_block_after_a_line_of_dots_continues_the_previous_blocks_file(ws):
    reply = (block("calc.py", "    return a + b\n", "    return b + a\n") + "...\n"
             + "<<<<<<< SEARCH\n    return a - b\n=======\n    return -(b - a)\n>>>>>>> REPLACE\n")
    text = after(ws, reply)
    assert "return b + a" in text and "return -(b - a)" in text


def test_a_sentence_between_two_blocks_does_not_break_the_second_one(ws):
    reply = (block("calc.py", "    return a + b\n", "    return b + a\n") + "\nAnd the second function:\n\n"
             + "<<<<<<< SEARCH\n    return a - b\n=======\n    return -(b - a)\n>>>>>>> REPLACE\n")
    assert "return -(b - a)" in after(ws, reply)


def test_a_one_word_line_set_apart_between_two_blocks_is_prose_not_a_file(ws, tmp_path):
    second = "```\n<<<<<<< SEARCH\n    return a - b\n=======\n    return -(b - a)\n>>>>>>> REPLACE\n```\n"
    first = "calc.py\n```\n<<<<<<< SEARCH\n    return a + b\n=======\n    return b + a\n>>>>>>> REPLACE\n```\n"
    text = after(ws, first + "\nand\n\n" + second)  # aider's test suite writes blocks this way
    assert "return b + a" in text and "return -(b - a)" in text
    # a name right above the block, or one with a dot, still names a file
    changes = ws.propose(first + "\nMakefile\n<<<<<<< SEARCH\n=======\nall:\n>>>>>>> REPLACE\n"
                         + "\nnotes.txt\n\n<<<<<<< SEARCH\n=======\nhi\n>>>>>>> REPLACE\n")
    assert sorted(e.path for e in changes.edits) == ["Makefile", "calc.py", "notes.txt"]


def test_a_line_of_dots_before_the_first_block_is_still_no_path(ws):
    changes = ws.propose("...\n<<<<<<< SEARCH\n    return a + b\n=======\nx\n>>>>>>> REPLACE\n")
    assert not changes.edits and "no file path" in changes.rejected[0].reason


def test_a_bare_file_name_matching_one_file_in_context_resolves_to_it(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "calc.py").write_text(SOURCE)
    ws = Workspace(tmp_path)
    ws.context.add("src/pkg/calc.py")
    changes = ws.propose(block("calc.py", "    return a + b\n", "    return b + a\n"))
    assert not changes.rejected and [e.path for e in changes.edits] == ["src/pkg/calc.py"]
    ws.apply(changes)
    assert "return b + a" in (tmp_path / "src" / "pkg" / "calc.py").read_text()


def test_an_ambiguous_bare_file_name_is_rejected_naming_the_candidates(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "util.py").write_text("x = 1\n")
    ws = Workspace(tmp_path)
    ws.context.add("a/util.py")
    ws.context.add("b/util.py")
    changes = ws.propose(block("util.py", "x = 1\n", "x = 2\n"))
    assert not changes.edits
    reason = changes.rejected[0].reason
    assert "a/util.py" in reason and "b/util.py" in reason


def test_a_bare_file_name_that_exists_at_the_root_is_that_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "calc.py").write_text(SOURCE)
    (tmp_path / "sub" / "calc.py").write_text(SOURCE)
    ws = Workspace(tmp_path)
    ws.context.add("sub/calc.py")
    changes = ws.propose(block("calc.py", "    return a + b\n", "    return b + a\n"))
    assert [e.path for e in changes.edits] == ["calc.py"]


@pytest.mark.parametrize("path_line", ["my dir/old calc.py", "`my dir/old calc.py`", "my dir/old calc.py:"])
def test_a_path_with_spaces_names_a_file_that_exists_and_stays_prose_otherwise(tmp_path, path_line):
    (tmp_path / "my dir").mkdir()
    (tmp_path / "my dir" / "old calc.py").write_text(SOURCE)
    ws = Workspace(tmp_path)
    out = after(ws, block(path_line, "    return a - b\n", "    return b - a\n"))
    assert "return b - a" in out and ws.propose(block(path_line, "    return a - b\n", "x\n")).edits[0].path == "my dir/old calc.py"
    for prose in ("Here is the fix for old calc.py", "my dir/new calc.py"):  # no such file: never created
        changes = ws.propose(block(prose, "", "x = 1\n"))
        assert not changes.edits and "file path alone" in changes.rejected[0].reason
    assert not (tmp_path / "my dir" / "new calc.py").exists()
    outside = ws.propose(block("../" + tmp_path.name + "/my dir/old calc.py", "    return a - b\n", "x\n"))
    assert not outside.edits  # the rule for paths stays: nothing outside the root
    blocks, problems = parse(block("my dir/old calc.py", "a\n", "b\n"))  # without a workspace: prose
    assert not blocks and problems
