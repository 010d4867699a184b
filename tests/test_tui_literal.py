"""Model text for Markdown: shown as written (edit blocks fenced, a trace's lines kept)."""

from __future__ import annotations

from app.tui.literal import answer_markdown, trace_markdown

BLOCK = "calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE"


def test_an_edit_block_outside_a_fence_is_fenced_with_its_path_line():
    text = "Here it is.\n\n" + BLOCK + "\n\nFixed `add`."
    assert answer_markdown(text) == "Here it is.\n\n```\n" + BLOCK + "\n```\n\nFixed `add`."


def test_blocks_already_in_a_fence_and_unfinished_blocks_are_left_alone():
    fenced = "````\n" + BLOCK + "\n````"
    assert answer_markdown(fenced) == fenced
    half = "calc.py\n<<<<<<< SEARCH\n    return a - b\n====="
    assert answer_markdown(half) == half
    plain = "No edits here.\n\n1. a\n2. b"
    assert answer_markdown(plain) == plain
    after_code = "```\nx\n```\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE"  # no path line: the fence stays
    assert answer_markdown(after_code) == "```\nx\n```\n```\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n```"


def test_the_fence_is_longer_than_any_backtick_run_in_the_block():
    text = "doc.md\n<<<<<<< SEARCH\n```py\nx\n```\n=======\ny\n>>>>>>> REPLACE"
    out = answer_markdown(text)
    assert out.startswith("````\ndoc.md\n") and out.endswith("REPLACE\n````")


def test_a_trace_keeps_its_line_breaks_and_shows_numbered_code_as_code():
    trace = "calc.py has 1 function.\n 1 | def add(a, b):\n 2 |     return a - b\nLine 2 is wrong.\nSo: fix it.\n\nDone."
    assert trace_markdown(trace) == ("calc.py has 1 function.  \n```\n 1 | def add(a, b):\n 2 |     return a - b\n```\n"
                                     "Line 2 is wrong.  \nSo: fix it.\n\nDone.")
    code = "```python\nx = 1\ny = 2\n```"
    assert trace_markdown(code) == code  # inside a fence nothing changes
