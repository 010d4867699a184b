"""The SEARCH/REPLACE format against the cases other projects' suites check (aider's
tests/basic/test_editblock.py chiefly), on real files through the real Workspace.

Duet's contract decides where aider differs: a SEARCH must match exactly once (aider replaces
the first of several, or a fuzzy guess; Duet refuses), a path is never guessed from a
misspelling, and every refusal comes with a reason whose first line names the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.workspace import ApplyError, Workspace
from app.workspace.edit_blocks import parse


def block(path_line: str, search: str, replace: str, *, head: str = "<<<<<<< SEARCH", div: str = "=======",
          tail: str = ">>>>>>> REPLACE") -> str:
    return f"{path_line}\n{head}\n{search}{div}\n{replace}{tail}\n"


@pytest.fixture
def root(tmp_path) -> Path:
    """The project folder; the data dir (undo history) is a sibling under tmp_path."""
    folder = tmp_path / "proj"
    folder.mkdir()
    return folder


def tree(base: Path) -> dict[str, bytes]:
    """Every file under ``base`` (the project and anything beside it) with its bytes."""
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def propose(root: Path, reply: str, **files: str | bytes):
    for name, data in files.items():
        path = root / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    ws = Workspace(root)
    before = tree(root.parent)
    changes = ws.propose(reply)
    assert tree(root.parent) == before  # proposing writes nothing, whatever the reply
    return ws, changes


def only_edit(changes) -> bytes:
    assert not changes.rejected, changes.feedback()
    assert len(changes.edits) == 1, changes.paths
    return changes.edits[0].after


def one_line_reason(changes) -> str:
    assert len(changes.rejected) == 1, changes.feedback()
    reason = changes.rejected[0].reason
    assert reason and reason == reason.strip() and "\n" not in reason, reason
    return reason


# ---- where the file name is -------------------------------------------------

def test_filename_inside_a_fence_with_a_language_tag(root):  # aider: test_find_original_update_blocks
    reply = ("\nHere's the change:\n\n```text\nfoo.txt\n<<<<<<< SEARCH\nTwo\n=======\nTooooo\n>>>>>>> REPLACE\n"
             "```\n\nHope you like it!\n")
    _, changes = propose(root, reply, **{"foo.txt": "One\nTwo\nThree\n"})
    assert only_edit(changes) == b"One\nTooooo\nThree\n"
    assert changes.edits[0].path == "foo.txt"
    assert changes.edits[0].diff == ("--- a/foo.txt\n+++ b/foo.txt\n@@ -1,3 +1,3 @@\n One\n-Two\n+Tooooo\n Three\n")


def test_filename_above_the_fence(root):  # aider: test_find_original_update_blocks_quote_below_filename
    reply = "Here's the change:\n\nfoo.txt\n```text\n<<<<<<< SEARCH\nTwo\n=======\nTooooo\n>>>>>>> REPLACE\n```\n"
    _, changes = propose(root, reply, **{"foo.txt": "Two\n"})
    assert only_edit(changes) == b"Tooooo\n"


@pytest.mark.parametrize("path_line", ["  foo.txt  ", "\tfoo.txt", "# foo.txt", "### foo.txt", "`foo.txt`",
                                       "*foo.txt*", "**foo.txt**", "**`foo.txt`**", "foo.txt:", "`foo.txt`:",
                                       "'foo.txt'", '"foo.txt"', "./foo.txt", "File: foo.txt"])
def test_decorated_filename_lines(root, path_line):
    for fenced in (False, True):
        reply = (f"{path_line}\n" + ("```python\n" if fenced else "")
                 + "<<<<<<< SEARCH\nTwo\n=======\nTwo!\n>>>>>>> REPLACE\n" + ("```\n" if fenced else ""))
        _, changes = propose(root, reply, **{"foo.txt": "Two\n"})
        assert only_edit(changes) == b"Two!\n", (path_line, fenced)
        assert changes.edits[0].path == "foo.txt"


@pytest.mark.parametrize("lang", ["python", "sh", "csharp", "text", "c++", ""])
def test_a_fence_language_tag_is_not_a_file_name(root, lang):
    # aider: test_find_original_update_blocks_with_sh_language_identifier / _csharp_
    reply = f"```{lang}\nProgram.cs\n<<<<<<< SEARCH\n=======\nclass P {{}}\n>>>>>>> REPLACE\n```\n"
    _, changes = propose(root, reply)
    assert changes.paths == ["Program.cs"] and changes.edits[0].created
    assert changes.edits[0].after == b"class P {}\n"


def test_a_path_on_the_fence_line(root):
    reply = "```python src/m.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n```\n"
    _, changes = propose(root, reply, **{"src__m.py": "x = 1\n"})
    assert changes.paths == ["src/m.py"] and only_edit(changes) == b"x = 2\n"


def test_a_filename_in_its_own_fence_before_the_block(root):  # aider: test_deepseek_coder_v2_filename_mangling
    reply = ("Here's the change:\n\n ```python\nfoo.txt\n```\n```python\n<<<<<<< SEARCH\none\n=======\ntwo\n"
             ">>>>>>> REPLACE\n```\n\nHope you like it!\n")
    _, changes = propose(root, reply, **{"foo.txt": "one\n"})
    assert only_edit(changes) == b"two\n"


def test_quad_backtick_fence_with_triple_backticks_in_the_text(root):
    reply = ("foo.md\n````markdown\n<<<<<<< SEARCH\n```\nold\n```\n=======\n```\nnew\n```\n>>>>>>> REPLACE\n"
             "````\n")
    _, changes = propose(root, reply, **{"foo.md": "intro\n```\nold\n```\n"})
    assert only_edit(changes) == b"intro\n```\nnew\n```\n"


def test_a_misspelt_filename_is_never_guessed(root):
    # aider's find_filename maps "file1_py" to file1.py by similarity; Duet names no file it was not given
    _, changes = propose(root, block("file1_py", "x = 1\n", "x = 2\n"), **{"file1.py": "x = 1\n"})
    assert not changes.edits and "does not exist" in one_line_reason(changes)
    assert (root / "file1.py").read_text() == "x = 1\n"


def test_a_block_with_no_filename_at_all_is_rejected(root):  # aider: _missing_filename
    reply = "Here's the change:\n\n```text\n<<<<<<< SEARCH\nTwo\n=======\nTooooo\n>>>>>>> REPLACE\n```\n"
    _, changes = propose(root, reply, **{"foo.txt": "Two\n"})
    reason = one_line_reason(changes)  # the prose line above is no path: said so, nothing guessed
    assert not changes.edits and "line 4" in reason and "must be the file path alone" in reason
    _, changes = propose(root, reply.replace("Here's the change:\n\n", ""))
    assert not changes.edits and "no file path" in one_line_reason(changes)


# ---- several blocks ---------------------------------------------------------

def test_several_blocks_for_one_file_apply_in_order(root):  # aider: _mupltiple_same_file
    reply = ("Here's the change:\n\n```text\nfoo.txt\n<<<<<<< SEARCH\none\n=======\ntwo\n>>>>>>> REPLACE\n\n...\n\n"
             "<<<<<<< SEARCH\nthree\n=======\nfour\n>>>>>>> REPLACE\n```\n\nHope you like it!\n")
    blocks, problems = parse(reply)
    assert not problems and [(b.path, b.search, b.replace) for b in blocks] == [
        ("foo.txt", ("one",), ("two",)), ("foo.txt", ("three",), ("four",))]
    _, changes = propose(root, reply, **{"foo.txt": "one\nthree\n"})
    assert only_edit(changes) == b"two\nfour\n"


def test_a_later_block_sees_the_earlier_blocks_result_not_the_original(root):
    reply = block("f.txt", "a\n", "b\n") + block("f.txt", "b\n", "c\n") + block("f.txt", "a\n", "z\n")
    _, changes = propose(root, reply, **{"f.txt": "a\n"})
    assert changes.edits[0].after == b"c\n"
    assert len(changes.rejected) == 1 and changes.rejected[0].block.line == 14  # "a" is gone by then


def test_a_following_block_without_a_filename_line_edits_the_same_file(root):
    # aider: test_incomplete_edit_block_missing_filename
    reply = ("No problem!\n\n```python\ntests/test_repomap.py\n<<<<<<< SEARCH\n    def a(self):\n        run()\n"
             "=======\n    def a(self):\n        check()\n>>>>>>> REPLACE\n\n<<<<<<< SEARCH\n    def b(self):\n"
             "        run()\n=======\n    def b(self):\n        check()\n>>>>>>> REPLACE\n```\n\nThese changes ...\n")
    src = "class T:\n    def a(self):\n        run()\n\n    def b(self):\n        run()\n"
    _, changes = propose(root, reply, **{"tests__test_repomap.py": src})
    assert changes.paths == ["tests/test_repomap.py"]
    assert only_edit(changes) == src.replace("run()", "check()").encode()


def test_several_files_inside_one_fence(root):
    reply = "```\n" + block("a.py", "x = 1\n", "x = 2\n") + block("pkg/b.py", "y = 1\n", "y = 2\n") + "```\n"
    _, changes = propose(root, reply, **{"a.py": "x = 1\n", "pkg__b.py": "y = 1\n"})
    assert not changes.rejected and changes.paths == ["a.py", "pkg/b.py"]
    assert [e.after for e in changes.edits] == [b"x = 2\n", b"y = 2\n"]


def test_a_new_file_and_an_edit_in_the_same_folder(root):  # aider: test_new_file_created_in_same_folder
    reply = ("Here's the change:\n\npath/to/a/file2.txt\n```python\n<<<<<<< SEARCH\n=======\nthree\n"
             ">>>>>>> REPLACE\n```\n\nanother change\n\npath/to/a/file1.txt\n```python\n<<<<<<< SEARCH\none\n"
             "=======\ntwo\n>>>>>>> REPLACE\n```\n\nHope you like it!\n")
    ws, changes = propose(root, reply, **{"path__to__a__file1.txt": "one\n"})
    assert not changes.rejected
    assert {e.path: (e.created, e.after) for e in changes.edits} == {
        "path/to/a/file2.txt": (True, b"three\n"), "path/to/a/file1.txt": (False, b"two\n")}
    ws.apply(changes)
    assert (root / "path/to/a/file2.txt").read_bytes() == b"three\n"
    assert (root / "path/to/a/file1.txt").read_bytes() == b"two\n"


def test_blocks_without_a_final_newline_in_the_reply(root):  # aider: _no_final_newline
    reply = ("\naider/coder.py\n<<<<<<< SEARCH\n    print(1)\n=======\n    err(1)\n>>>>>>> REPLACE\n\n"
             "aider/coder.py\n<<<<<<< SEARCH\n    print(2)\n=======\n    err(2)\n>>>>>>> REPLACE")
    _, changes = propose(root, reply, **{"aider__coder.py": "def f():\n    print(1)\n    print(2)\n"})
    assert only_edit(changes) == b"def f():\n    err(1)\n    err(2)\n"


def test_a_new_file_leaves_the_other_files_alone(root):  # aider: test_create_new_file_with_other_file_in_chat
    reply = "\nDo this:\n\nnewfile.txt\n<<<<<<< SEARCH\n=======\ncreating a new file\n>>>>>>> REPLACE\n\n"
    ws, changes = propose(root, reply, **{"file.txt": "one\ntwo\nthree\n"})
    ws.apply(changes)
    assert (root / "file.txt").read_text() == "one\ntwo\nthree\n"
    assert (root / "newfile.txt").read_text() == "creating a new file\n"


# ---- the markers --------------------------------------------------------------

@pytest.mark.parametrize("n", [5, 6, 7, 8, 9])
def test_markers_of_five_to_nine_characters(root, n):
    reply = block("m.txt", "a\n", "b\n", head="<" * n + " SEARCH", div="=" * n, tail=">" * n + " REPLACE")
    _, changes = propose(root, reply, **{"m.txt": "a\n"})
    assert only_edit(changes) == b"b\n"


def test_marker_lengths_may_differ_within_a_block_and_the_search_marker_may_end_with_a_bracket(root):
    reply = block("m.txt", "a\n", "b\n", head="<<<<<<< SEARCH>", div="=====", tail=">>>>>>>>> REPLACE  ")
    _, changes = propose(root, reply, **{"m.txt": "a\n"})
    assert only_edit(changes) == b"b\n"


@pytest.mark.parametrize("head, div, tail", [("<<<< SEARCH", "=======", ">>>>>>> REPLACE"),
                                             ("<<<<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"),
                                             ("<<<<<<< SEARCH", "=======", ">>>> REPLACE")])
def test_markers_of_four_or_ten_characters_are_not_markers(root, head, div, tail):
    _, changes = propose(root, block("m.txt", "a\n", "b\n", head=head, div=div, tail=tail), **{"m.txt": "a\n"})
    assert not changes.edits and changes.rejected
    assert all(r.reason.splitlines()[0] for r in changes.rejected)


def test_a_replace_marker_with_text_after_it_is_rejected_naming_that_line(root):
    _, changes = propose(root, block("m.txt", "a\n", "b\n", tail=">>>>>>> REPLACE (end of edit)"), **{"m.txt": "a\n"})
    reason = one_line_reason(changes)
    assert not changes.edits and "no >>>>>>> REPLACE" in reason and "line 6" in reason


def test_an_unclosed_block_is_a_clear_rejection(root):  # aider: test_find_original_update_blocks_unclosed
    reply = "\nHere's the change:\n\n```text\nfoo.txt\n<<<<<<< SEARCH\nTwo\n=======\nTooooo\n\n\noops!\n"
    _, changes = propose(root, reply, **{"foo.txt": "Two\n"})
    reason = one_line_reason(changes)
    assert not changes.edits and changes.rejected[0].path == "foo.txt"
    assert "block at line 6" in reason and "no >>>>>>> REPLACE" in reason


def test_a_block_missing_its_divider_is_a_clear_rejection(root):
    _, changes = propose(root, "foo.txt\n<<<<<<< SEARCH\nTwo\n>>>>>>> REPLACE\n", **{"foo.txt": "Two\n"})
    assert not changes.edits and "no =======" in one_line_reason(changes)


# ---- bugs found: a malformed block must not send the next block to another file ----

def test_a_block_after_one_missing_its_divider_edits_its_own_file_not_an_earlier_one(root):
    reply = (block("a.py", "x = 1\n", "x = 2\n") + "\nb.py\n<<<<<<< SEARCH\ny = 1\n>>>>>>> REPLACE\n\n"
             + block("c.py", "z = 1\n", "z = 2\n"))
    _, changes = propose(root, reply, **{"a.py": "x = 1\nz = 1\n", "b.py": "y = 1\n", "c.py": "z = 1\n"})
    assert {e.path: e.after for e in changes.edits} == {"a.py": b"x = 2\nz = 1\n", "c.py": b"z = 2\n"}
    assert [(r.path, "no =======" in r.reason) for r in changes.rejected] == [("b.py", True)]


def test_a_block_after_one_missing_its_replace_marker_keeps_its_own_filename(root):
    reply = (block("a.py", "x = 1\n", "x = 2\n") + "\nb.py\n<<<<<<< SEARCH\ny = 1\n=======\ny = 2\n\n"
             + block("c.py", "w = 1\n", "w = 2\n"))
    _, changes = propose(root, reply, **{"a.py": "x = 1\nw = 1\n", "b.py": "y = 1\nw = 1\n", "c.py": "w = 1\n"})
    assert {e.path: e.after for e in changes.edits} == {"a.py": b"x = 2\nw = 1\n", "c.py": b"w = 2\n"}
    assert [r.path for r in changes.rejected] == ["b.py"]


def test_a_block_with_no_filename_after_a_malformed_one_edits_that_ones_file(root):
    reply = (block("a.py", "x = 1\n", "x = 2\n") + "\nb.py\n<<<<<<< SEARCH\ny = 1\n=======\ny = 2\n\n"
             "<<<<<<< SEARCH\nw = 1\n=======\nw = 2\n>>>>>>> REPLACE\n")
    _, changes = propose(root, reply, **{"a.py": "x = 1\nw = 1\n", "b.py": "y = 1\nw = 1\n"})
    assert {e.path: e.after for e in changes.edits} == {"a.py": b"x = 2\nw = 1\n", "b.py": b"y = 1\nw = 2\n"}


# ---- bug found: a ======= line in the text ------------------------------------------

def test_a_heading_underline_in_search_is_not_taken_for_the_divider(root):
    reply = ("README.rst\n<<<<<<< SEARCH\nTitle\n=====\n=======\nNew Title\n=========\n>>>>>>> REPLACE\n")
    _, changes = propose(root, reply, **{"README.rst": "Title\n=====\n\ntext\n"})
    assert only_edit(changes) == b"New Title\n=========\n\ntext\n"


def test_a_heading_underline_in_a_new_file_is_kept(root):
    reply = "NOTES.md\n<<<<<<< SEARCH\n=======\nNotes\n=======\n\nbody\n>>>>>>> REPLACE\n"
    _, changes = propose(root, reply)
    assert only_edit(changes) == b"Notes\n=======\n\nbody\n"


def test_a_heading_underline_in_replace_is_kept(root):
    reply = "doc.md\n<<<<<<< SEARCH\nTitle\n=======\nNew title\n=========\n>>>>>>> REPLACE\n"
    _, changes = propose(root, reply, **{"doc.md": "Title\nbody\n"})
    assert only_edit(changes) == b"New title\n=========\nbody\n"


def test_dividers_that_cannot_be_told_apart_are_refused_not_guessed(root):
    reply = "doc.rst\n<<<<<<< SEARCH\nChanges\n=======\n=======\nHistory\n=======\n>>>>>>> REPLACE\n"
    _, changes = propose(root, reply, **{"doc.rst": "Changes\n=======\n\nChanges\ntext\n"})
    reason = one_line_reason(changes)
    assert not changes.edits and "3 ======= lines" in reason and "unclear" in reason


# ---- bug found: REPLACE keeps its trailing spaces -------------------------------------

def test_trailing_spaces_in_replace_are_kept_so_copied_lines_stay_as_they_were(root):
    text = "first line  \nsecond line\n"  # a Markdown hard line break
    _, changes = propose(root, block("r.md", text, "first line  \nsecond LINE\n"), **{"r.md": text})
    assert only_edit(changes) == b"first line  \nsecond LINE\n"


# ---- line endings, final newlines, deleting, Unicode ---------------------------

def test_a_crlf_reply_edits_an_lf_file_and_a_crlf_file_keeps_crlf(root):
    reply = (block("lf.txt", "b\n", "B\n") + block("crlf.txt", "b\n", "B\nB2\n")).replace("\n", "\r\n")
    _, changes = propose(root, reply, **{"lf.txt": "a\nb\nc\n", "crlf.txt": b"a\r\nb\r\nc\r\n"})
    assert {e.path: e.after for e in changes.edits} == {"lf.txt": b"a\nB\nc\n", "crlf.txt": b"a\r\nB\r\nB2\r\nc\r\n"}


def test_a_file_without_a_final_newline(root):
    _, changes = propose(root, block("n.txt", "y\n", "Y\n"), **{"n.txt": "x\ny"})
    assert only_edit(changes) == b"x\nY"
    _, changes = propose(root, block("n.txt", "y\n", "y\nz\n"))
    assert only_edit(changes) == b"x\ny\nz"
    _, changes = propose(root, block("n.txt", "x\n", "X\n"))
    assert only_edit(changes) == b"X\ny"


@pytest.mark.parametrize("data", [b"one\ntwo\n", b"one\r\ntwo\r\n", b"one\ntwo"])
def test_a_replace_that_deletes_everything_leaves_an_empty_file_and_undo_brings_it_back(root, data):
    ws, changes = propose(root, block("gone.txt", "one\ntwo\n", ""), **{"gone.txt": data})
    assert only_edit(changes) == b""
    ws.apply(changes)
    assert (root / "gone.txt").read_bytes() == b""
    ws.undo()
    assert (root / "gone.txt").read_bytes() == data


def test_unicode_text_and_file_names(root):
    reply = block("données/café.py", "s = 'héllo'\n", "s = 'wörld 你好'\n") + block("新しい.md", "", "# 日本語\n")
    ws, changes = propose(root, reply, **{"données__café.py": "s = 'héllo'\n# ✓\n"})
    assert not changes.rejected and sorted(changes.paths) == ["données/café.py", "新しい.md"]
    ws.apply(changes)
    assert (root / "données/café.py").read_text("utf-8") == "s = 'wörld 你好'\n# ✓\n"
    assert (root / "新しい.md").read_text("utf-8") == "# 日本語\n"


def test_a_block_that_changes_nothing_proposes_nothing(root):
    _, changes = propose(root, block("a.txt", "a\n", "a\n"), **{"a.txt": "a\n"})
    assert not changes.edits and not changes.rejected


# ---- matching: exactly once, and whitespace flexibility that never picks a wrong place ----

def test_a_search_that_matches_twice_is_refused_where_aider_replaces_the_first(root):
    # aider: test_replace_multiple_matches ("only replace first occurrence")
    _, changes = propose(root, block("w.txt", "line1\n", "new_line\n"), **{"w.txt": "line1\nline2\nline1\nline3\n"})
    reason = one_line_reason(changes)
    assert not changes.edits and "matches 2 places" in reason and "lines 1, 3" in reason


def test_an_indent_shifted_search_that_matches_twice_is_refused(root):
    # aider: test_replace_multiple_matches_missing_whitespace
    text = "    line1\n    line2\n    line1\n    line3\n"
    _, changes = propose(root, block("w.txt", "line1\n", "new_line\n"), **{"w.txt": text})
    assert not changes.edits and "matches 2 places" in one_line_reason(changes)


@pytest.mark.parametrize("whole, part, replace, expected", [
    # aider: test_replace_part_with_missing_leading_whitespace
    ("    line1\n    line2\n    line3\n", "line1\nline2\n", "new_line1\nnew_line2\n",
     "    new_line1\n    new_line2\n    line3\n"),
    # aider: test_replace_part_with_just_some_missing_leading_whitespace
    ("    line1\n    line2\n    line3\n", " line1\n line2\n", " new_line1\n     new_line2\n",
     "    new_line1\n        new_line2\n    line3\n"),
    # aider: test_replace_part_with_missing_leading_whitespace_including_blank_line
    ("    line1\n    line2\n    line3\n", "\n  line1\n  line2\n", "  new_line1\n  new_line2\n",
     "    new_line1\n    new_line2\n    line3\n"),
    # aider: test_replace_part_with_missing_varied_leading_whitespace
    ("\n    line1\n    line2\n        line3\n    line4\n", "line2\n    line3\n", "new_line2\n    new_line3\n",
     "\n    line1\n    new_line2\n        new_line3\n    line4\n"),
])
def test_a_search_off_only_by_a_consistent_indent_matches_its_one_place(root, whole, part, replace, expected):
    _, changes = propose(root, block("w.txt", part, replace), **{"w.txt": whole})
    assert only_edit(changes) == expected.encode()


def test_an_exact_match_wins_over_an_indent_shifted_one(root):
    text = "x = 1\nif a:\n    x = 1\n"
    _, changes = propose(root, block("w.py", "x = 1\n", "x = 2\n"), **{"w.py": text})
    assert only_edit(changes) == b"x = 2\nif a:\n    x = 1\n"
    _, changes = propose(root, block("w.py", "    x = 1\n", "    x = 3\n"))
    assert only_edit(changes) == b"x = 1\nif a:\n    x = 3\n"


def test_indentation_off_by_different_amounts_per_line_is_not_guessed(root):
    text = "class A:\n    def f(self):\n        return 1\n"
    _, changes = propose(root, block("w.py", "def f(self):\n  return 1\n", "def f(self):\n  return 2\n"), **{"w.py": text})
    assert not changes.edits and changes.rejected[0].reason.splitlines()[0].startswith(
        "SEARCH does not match the file exactly")


def test_a_search_that_is_not_in_the_file_is_refused_with_what_is(root):
    _, changes = propose(root, block("w.py", "def f():\n    return 9\n", "x\n"), **{"w.py": "def f():\n    return 1\n"})
    first = changes.rejected[0].reason.splitlines()[0]
    assert not changes.edits and first.startswith("SEARCH does not match the file exactly. Did you mean")


# ---- paths the model may not write -----------------------------------------------

@pytest.mark.parametrize("path, why", [("../x.py", ".."), ("sub/../../x.py", ".."), ("/tmp/x.py", "absolute"),
                                        ("~/x.py", "~"), (".git/config", ".git"), ("link_out/x.py", "symlink"),
                                        ("secret_link.txt", "symlink")])
def test_paths_outside_the_root_are_rejected_and_nothing_outside_changes(root, path, why):
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "secret_link.txt").symlink_to(outside / "secret.txt")
    before = tree(root.parent)
    ws, changes = propose(root, block(path, "", "pwned\n") + block(path, "secret\n", "pwned\n"))
    assert not changes.edits and len(changes.rejected) == 2
    assert all(why in r.reason and "\n" not in r.reason for r in changes.rejected)
    ws.apply(changes)
    assert tree(root.parent) == before
    absolute = Path("/tmp/x.py")
    assert not (absolute.is_file() and absolute.read_bytes() == b"pwned\n")


def test_prose_mentioning_an_outside_path_is_not_a_path(root):
    reply = "I also looked at ../other/x.py and /etc/hosts.\n\n" + block("a.txt", "a\n", "b\n")
    _, changes = propose(root, reply, **{"a.txt": "a\n"})
    assert changes.paths == ["a.txt"] and not changes.rejected


# ---- propose / apply / undo ------------------------------------------------------

def test_new_files_in_new_folders_apply_and_undo_leaves_no_trace(root):
    (root / "keep.txt").write_text("k\n")
    before = tree(root)
    ws, changes = propose(root, block("a/b/c/new.py", "", "x = 1\n") + block("keep.txt", "k\n", "K\n"))
    assert [e.created for e in changes.edits] == [True, False]
    assert changes.edits[0].diff == "--- /dev/null\n+++ b/a/b/c/new.py\n@@ -0,0 +1 @@\n+x = 1\n"
    ws.apply(changes)
    assert (root / "a/b/c/new.py").read_text() == "x = 1\n" and (root / "keep.txt").read_text() == "K\n"
    ws.undo()
    assert tree(root) == before and not (root / "a").exists()


def test_apply_is_all_or_none_when_one_target_became_a_folder(root):
    ws, changes = propose(root, block("a.txt", "a\n", "A\n") + block("b.txt", "b\n", "B\n"),
                          **{"a.txt": "a\n", "b.txt": "b\n"})
    (root / "b.txt").unlink()
    (root / "b.txt").mkdir()
    before = tree(root)
    with pytest.raises(ApplyError, match="b.txt"):
        ws.apply(changes)
    assert tree(root) == before and not ws.can_undo


def test_undo_restores_every_byte_of_a_mixed_multi_file_apply(root):
    files = {"crlf.txt": b"a\r\nb\r\nc", "bom.py": b"\xef\xbb\xbfx = 1\n", "plain.md": b"t  \nu\n"}
    reply = block("crlf.txt", "c\n", "C\n") + block("bom.py", "x = 1\n", "x = 2\n") + block("plain.md", "u\n", "")
    ws, changes = propose(root, reply, **files)
    assert not changes.rejected and len(changes.edits) == 3
    ws.apply(changes)
    assert (root / "crlf.txt").read_bytes() == b"a\r\nb\r\nC"
    assert (root / "bom.py").read_bytes() == b"\xef\xbb\xbfx = 2\n"
    assert (root / "plain.md").read_bytes() == b"t  \n"
    ws.undo()
    assert tree(root) == files


def test_every_rejection_has_a_reason_whose_first_line_names_the_problem(root):
    (root / "a.txt").write_text("a\na\n")
    reply = ("Some prose here\n<<<<<<< SEARCH\n=======\nx\n>>>>>>> REPLACE\n\n" + block("a.txt", "a\n", "b\n")
             + block("../up.txt", "", "x\n") + block("missing.txt", "q\n", "r\n") + block("a.txt", "", "x\n")
             + "stray\n>>>>>>> REPLACE\n" + "z.txt\n<<<<<<< SEARCH\nq\n")
    _, changes = propose(root, reply)
    assert not changes.edits and len(changes.rejected) == 7
    words = ["matches 2 places", "'..'", "does not exist", "already exists", "file path alone", "stray",
             "no ======="]
    firsts = sorted(r.reason.splitlines()[0] for r in changes.rejected)
    for word in words:
        assert sum(word in f for f in firsts) == 1, (word, firsts)


def test_markers_longer_than_the_underline_tell_the_divider_apart(root):
    # what the refusal above asks for: the divider has as many = as the SEARCH marker has <
    reply = "doc.rst\n<<<<<<<< SEARCH\nChanges\n=======\n========\nHistory\n=======\n>>>>>>>> REPLACE\n"
    _, changes = propose(root, reply, **{"doc.rst": "Changes\n=======\n\ntext\n"})
    assert only_edit(changes) == b"History\n=======\n\ntext\n"
