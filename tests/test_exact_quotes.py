"""`exact_quotes`: our engine holds the lines a reasoner writes in its prompt's numbered form
(`` 7 | text``) to the files' lines (app/exact_quotes.py, local_engine/constraint.py)."""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import sys
import tomllib
from collections import Counter

import pytest
import torch

from app import demo
from app.backends.local import LocalBackend, LocalModel
from app.code_map import functions
from app.config import RoleConfig, Sampling, demo_config, parse_config
from app.config_writer import demo_table
from app.conversation import Conversation
from app.errors import ConfigError
from app.exact_quotes import (AnswerCode, ChangeFollowsFinding, DocstringQuote, Quotes, ReadingFocus, all_of, defined_names,
                              finding_rights, inline_names_rule, known_names, numbered_line_rule, path_words)
from app.prompts import numbered_lines
from app.workspace import Workspace
from local_engine.constraint import LineConstraint, pick_allowed
from local_engine.speculative import DraftLength
from tests.sse_server import ScriptedServer, text_reply
from tests.tui_support import server_config
from training import eval as demo_eval
from training.render import reasoner_prompt
from vocab.events import AnswerDelta, Failed, ThinkingDelta
from vocab.messages import ChatMessage

CALC = "def add(a, b):\r\n    \"\"\"Return a plus b: “sum”.\"\"\"\r\n    return a - b\r\n\r\n\r\ndef one():\r\n    return 1\r\n"
NUMBERED = re.compile(r"^ *(\d+) \| (.*)$")
FINDER = ('def where_is(arr, needle):\n    """Return where the needle first is, else -1."""\n'
          "    for k in range(len(arr)):\n        if arr[k] != needle:  # compare\n            return k\n    return -1\n")


def quoted_lines(text: str) -> list[tuple[int, str]]:
    return [(int(m.group(1)), m.group(2)) for m in map(NUMBERED.match, text.split("\n")) if m]


def test_a_numbered_line_is_held_to_that_line_of_a_file_and_other_lines_are_free():
    ok = numbered_line_rule([("calc.py", CALC), ("b.py", "x = 1\n")])
    assert numbered_lines(CALC)[2] == "    return a - b"  # CRLF read as the prompt shows it
    assert ok(b" 3 |     return a - b", True) and ok(b"3 |     return a", False)
    assert not ok(b" 3 |     return a + b", True) and not ok(b" 3 |     return a - b;", False)
    assert not ok(b" 3 |     return a", True)  # a line cut short
    assert ok(b"1 | x = 1", True) and ok(b"1 | def add(a, b):", True)  # line 1 of either file
    assert not ok(b"9 | ", False) and not ok(b"0 | ", False)  # no such line
    assert ok(b" 4 | ", True) and not ok(b" 4 | x", False)  # a blank line is blank
    quote = " 2 |     \"\"\"Return a plus b: “sum”.\"\"\"".encode()
    assert ok(quote, True) and ok(quote[:-9], False)  # cut inside the two-byte-plus “”: a prefix still
    for free in (b"Line 3 uses `-` where the docstring needs `+`.", b"| a | b |", b" 3 ", b"x 3 | y", b""):
        assert ok(free, True) and ok(free, False)
    assert ok(b" 3 |", False) and not ok(b" 3 |", True) and not ok(b"8 |= x", False)  # "N |" is the form, whatever follows


def test_known_names_hold_inline_code_to_the_files_names_and_paths():
    files = [("src/finder.py", FINDER), ("calc.py", CALC)]
    names = known_names(files)
    assert {"where_is", "arr", "needle", "k", "range", "len", "add", "one"} <= names
    assert not {"Return", "first", "where", "compare", "sum", "sumat"} & names  # docstrings and comments are not code
    assert path_words(files) == {"src", "finder", "py", "test_finder", "calc", "test_calc"}
    assert not {"src", "finder", "py", "test_finder", "test_calc"} & names
    ok = inline_names_rule(files)
    for line, complete, want in [
        (b"So the bug is in `where_is`, line 4: wrong comparison.", True, True),
        (b"So the bug is in `where_i", False, True),  # may still become where_is
        (b"So the bug is in `where_x", False, False),
        (b"So the bug is in `where`", True, False),  # a start of a name is not a name
        (b"Change `if arr[k] != needle:` to `if arr[k] == needle:`.", True, True),
        (b"Change `if arr[k] == lineedle:`", True, False),
        (b"check that `test_finder.py` and `src/finder.py` pass", True, True),
        (b"`range(len(arr) - 1)`, `0x1F`, `[]`, `\" \"`", True, True),
        (b"`\xc3\xa9`", True, False),  # inline code is ASCII: no way round through other bytes
        (b"the docstring says \"sumatiber\" and so on", True, True),  # outside inline code: free
        (b"```python", True, True),
        (b" 4 |         if arr[k] != `needle`:", True, True),  # the numbered form is the other rule's
        (b"uses `", False, True),
        (b"So the bug is in `test_finder`", True, False),  # a path's word is not a name ...
        (b"Change `return arr` to `return py`.", True, False),
        (b"So the bug is in `test_finder", False, True),  # ... though the run may still become a path
        (b"So the bug is in `test_finder ", False, False),
        (b"So the bug is in `test_finder.p", False, True),
        (b"`src/finder.py:4`, `calc.add`, `.py`, `1.5`", True, True),
        (b"to `return py.`", True, False),  # a dot after a word does not make a path
        (b"to `return py.", False, True),
        (b"**Bug:** `src/finder.py`, function `where_is`, line 4", True, True),  # "function `X`": X is defined
        (b"**Bug:** `src/finder.py`, function `needle`, line 4", True, False),  # a name, not a function
        (b"function `arr", False, False),  # no function starts so
        (b"function `wh", False, True),
        (b"function `where_is", True, False),  # a span left open at the line's end
        (b"the function `where_is()`, then function `add(a, b)`", True, True),  # its name, then its call
        (b"function `where_is.arr`", True, True),  # (the names rule holds the rest)
        (b"function `calc.add`", True, False),  # its name first
        (b"function `(", False, False),
        (b"function `needle(", False, False),
        ("的函数 `add`，第 3 行".encode(), True, True),
        ("的函数 `needle`".encode(), True, False),
        (b"the method `one` and the functions `arr`, `k`", True, True),  # "functions": a list, not held
        (b"dysfunction `arr`", True, True),  # the word, not the end of another
    ]:
        assert ok(line, complete) is want, line
    assert defined_names(files) == {"where_is", "add", "one"}
    assert defined_names([("x.py", "class Box:\n    def put(self, def_):\n        return def_\n")]) == {"Box", "put"}
    broken = known_names([("notes.txt", "café au_lait, x = (")])
    assert {"au_lait", "x"} <= broken and "café" not in broken  # not Python: every ASCII word
    both = all_of(numbered_line_rule(files), ok)
    assert not both(b" 4 |     if", True) and not both(b"`wheres", False) and both(b"`where_", False)


def wrote(rule, text: bytes) -> None:
    """Tell ``rule`` the lines of ``text`` as LineConstraint does once each is written."""
    for line in text.split(b"\n"):
        rule.wrote(line)


def test_the_answer_s_inline_code_restates_what_the_thinking_concluded_or_the_files_hold():
    files = [("src/finder.py", FINDER)]
    rule = AnswerCode(files, thinking=True)
    trace = (b"src/finder.py has 1 function.\n 4 |         if arr[k] != needle:  # compare\n"
             b"Line 4 compares with `!=` where the docstring needs `==`. This is the bug.\n"
             b"So the bug is in `where_is`, line 4. Change `if arr[k] != needle:` to `if arr[k] == needle:`.")
    for line in trace.split(b"\n"):
        assert rule(line, True) and rule(line + b" `anything`", True)  # the thinking is free
    wrote(rule, trace + b"\n")
    assert rule(b"</think>", True)
    wrote(rule, b"</think>")
    for line, complete, want in [
        (b"**Bug:** `src/finder.py`, function `where_is`, line 4: wrong comparison.", True, True),
        (b"1. change line 4 from `if arr[k] != needle:` to `if arr[k] == needle:`.", True, True),
        (b"2. Run the tests and check that `test_finder.py` and `src/test_finder.py` pass.", True, True),
        (b"it compares with `!=`; `for k in range(len(arr)):`, `arr`, `needle`", True, True),
        (b"line 4, `if arr[k] != needle:  # compare`, has a comment", True, True),
        (b"to `if arr[k] == ", False, True),  # still on its way to the trace's span
        (b"to `if arr[k] == elements:`", True, False),  # a span nobody wrote
        (b"to `if arr[k] == e", False, False),
        (b"to `if arr[k] < needle:`", True, False),
        (b"to `where`", True, False),
        (b"to `if arr[k] == nee", True, False),  # a line that ends mid-span: a whole span or none
        (b'The docstring says "Return sall numbers", free text', True, True),  # outside backticks: free
        (b"```python", True, True),
        (b" 4 |         if arr[k] != needle:  # compare", True, True),  # the numbered form: the other rule's
        # a change as stated: "from `X`": X is the code as it is now; "`X` to `Y`": Y is not X
        (b"1. change line 4 from `if arr[k] == needle:` to `if arr[k] != needle:`.", True, False),  # swapped
        (b"1. change line 4 from `if arr[k] ==", False, False),
        (b"Change `if arr[k] == needle:`", False, False),
        (b"1. change the comparison from `!=` to `==`", True, True),  # a part of the line will do
        (b"1. change the comparison from `==` to `!=`", True, False),
        (b"1. change line 4 from `if arr[k] != needle:` to `if arr[k] != needle:`.", True, False),  # into itself
        (b"from `if arr[k] != needle:` to `if arr[k] !", False, False),  # only X starts so: it must turn off
        (b"from `if arr[k] != needle:` to `if arr[k] =", False, True),
        ("把第 4 行 `if arr[k] == needle:` 改为".encode(), True, False),
        ("把第 4 行 `if arr[k] != needle:` 改为 `if arr[k] == needle:`。".encode(), True, True),
        ("把第 4 行 `if arr[k] != needle:` 改为 `if arr[k] != needle:`。".encode(), True, False),
        (b"`if arr[k] == needle:` is right and `if arr[k] != needle:` is not", True, True),  # no change stated
    ]:
        assert rule(line, complete) is want, line
    wrote(rule, b"```python\nx = `made up`\n")
    assert rule(b"x = `made up`", True)  # a fenced block is free
    wrote(rule, b"```\n")
    assert not rule(b"`made up`", True)
    plain = AnswerCode(files, thinking=False)  # a prompt that did not open the thinking, a model that
    assert plain(b"`if arr[k] == needle:`", True)  # writes none: nothing to restate, the answer is free
    same_line = AnswerCode(files, thinking=True)
    assert same_line(b"done.</think>**Bug:** `where_is`", True) and not same_line(b"x</think> `wherex`", True)
    ahead = AnswerCode(files, thinking=True)  # asked about closing the thinking before its last line is written
    assert ahead(b"So: `where_is`, line 4</think>`where_is`", True) and ahead(b"x `i`", True)
    wrote(ahead, b"Change it to `x = 42`.\n</think>\n")
    assert ahead(b"Set `x = 4", False) and ahead(b"Set `x = 42`.", True)  # a span added later counts, open too
    skips = AnswerCode(files, thinking=True)  # a thinking the prompt opened says something first:
    assert not skips(b"</think>", True) and not skips(b"  </think>**Bug:**", False)  # no closing at once,
    assert not skips(b"", True) and skips(b"", False) and skips(b"  ", False)  # nor a blank first line
    assert skips(b"Hm.</think>", True) and skips(b"src/finder.py has", False)
    wrote(skips, b"src/finder.py has 1 function.\n")
    assert skips(b"", True) and skips(b"</think>", True)
    own_tag = AnswerCode(files, thinking=False)  # a model that opens its thinking itself
    assert own_tag(b"<think>Maybe `x = 42`?", True)
    wrote(own_tag, b"<think>Maybe `x = 42`?\nYes.</think>\n")
    assert own_tag(b"Set `x = 42`.", True) and not own_tag(b"Set `x = 43`.", True)


SCALE = ('def scale(a, b):\n    """Return a times b, twice."""\n    return a + b + b  # two b\n\n\n'
         'def same(x):\n    return x\n')


def test_a_change_stated_after_a_finding_is_the_change_the_finding_names():
    rule = ChangeFollowsFinding([("calc.py", SCALE)], thinking=True)
    assert rule(b"Change `anything` to `at all`", True)  # before a finding: free
    assert rule(b"Line 3 uses `+ b +` where", False) and not rule(b"Line 3 uses `* b", False)  # W is line 3's
    assert rule(b"Line 9 uses `-` where", False)  # no line 9: nothing to hold W to
    assert rule(b"Line 9 uses `-` where the docstring needs `+`. This is the bug.", True)
    wrote(rule, b"calc.py has 2 functions.\nLine 3 uses `+` where the docstring needs `*`. This is the bug.\n")
    for line, complete, want in [
        (b"So the bug is in `scale`, line 3. Change `return a + b + b` to `return a * b + b`.", True, True),
        (b"Change `return a + b + b` to `return a + b * b`", True, True),  # either `+`
        (b"Change `return a + b + b  # two b` to `return a * b + b  # two b`", True, True),  # with its comment
        (b"Change `return a + b + b` to `return a * b * b`", True, False),  # one W, not every one
        (b"Change `return a + b + b` to `return a - b + b`", True, False),
        (b"Change `return a + b + b` to `return as_sec", False, False),  # the line from memory
        (b"Change `return a + b + b` to `return a ", False, True),
        (b"Change `return a + b + b` to `return a *", False, True),
        (b"Change `return a + b + b` to `return a * b + b", True, False),  # left open
        (b"Change `return a + b", False, True),  # X on its way
        (b"Change `+` to `*`", True, False),  # X is line 3 whole
        (b"Change ` return", False, False), (b"Change `return a - b", False, False), (b"Change `x = 1`", True, False),
        (b"Change `return a + b + b`", True, True), (b"1. Run the tests.", True, True),
    ]:
        assert rule(line, complete) is want, line
    wrote(rule, b"So the bug is in `scale`, line 3.\n</think>\n")
    assert rule(b"1. In `calc.py`, change line 3 from `return a + b + b` to `return a * b + b`.", True)
    assert not rule(b"1. In `calc.py`, change line 3 from `return x` to `return a * b + b`.", True)
    assert rule("1. 把第 3 行 `return a + b + b` 改为 `return a * b + b`。".encode(), True)
    assert not rule("1. 把第 3 行 `return a + b + b` 改为 `return a * b * b`。".encode(), True)
    assert rule(b"Line 3 uses `nothing here` where", True)  # in the answer a finding is free
    for finding in (b"Line 3 uses `+` where the docstring needs `+`.", b"Line 6 uses `-` where it needs `+`."):
        other = ChangeFollowsFinding([("calc.py", SCALE)], thinking=True)
        wrote(other, finding + b"\n")  # W the same as R, or a W line 6 has not: it holds nothing
        assert other(b"Change `return a + b + b` to `return zz`", True)


HALF = ('def quot(top, bottom):\n    """Return top // bottom."""\n    return top // bottom\n\n\n'
        'def half_of(e):\n    """Return half of e."""\n    return quot(2, e)  # halve\n\n\n'
        'def peak(xs):\n    """Return the largest of xs."""\n    best = xs[0]\n    for x in xs:\n        if x < best:\n'
        '            best = x\n    return best\n')


def test_a_finding_says_code_of_the_kind_its_words_name():
    """R is never W; "wrong order": R is W with one call's arguments in another order; "uses `W`
    where … `R`", "compares with `W` …": W with one piece written as another of its kind; "off by
    one": one bound moved by one; "starts … at `W`": another start value; other words leave R
    free but for W."""
    names, numbers = {b"top", b"bottom", b"e", b"quot", b"best", b"x", b"xs"}, {b"0", b"1", b"2"}
    order = b"Line 8 passes the arguments in the wrong order: `quot(2, e)` should be `"
    assert finding_rights(b"quot(2, e)", order, names, numbers) == {b"quot(e, 2)"}
    assert finding_rights(b"return quot(2, e)", order, names, numbers) == {b"return quot(e, 2)"}
    assert finding_rights(b"f(a, g(b, c))", order, names, numbers) == {b"f(g(b, c), a)", b"f(a, g(c, b))"}
    assert finding_rights(b"f(a, b, c)", order, names, numbers) == {
        b"f(a, c, b)", b"f(b, a, c)", b"f(b, c, a)", b"f(c, a, b)", b"f(c, b, a)"}
    assert finding_rights(b"best", order, names, numbers) is None  # no call to reorder: free
    uses = b"Line 3 uses `+` where the docstring needs `"
    assert finding_rights(b"+", uses, names, numbers) == {b"-", b"*", b"/", b"//", b"%", b"**"}
    compares = b"Line 13 compares with `<` where the docstring needs `"
    assert finding_rights(b"<", compares, names, numbers) == {b"<=", b">", b">=", b"==", b"!="}
    assert finding_rights(b"+=", b"Line 4 uses `+=` where it should use `", names, numbers) == {
        b"-=", b"*=", b"/=", b"//=", b"%="}
    name = finding_rights(b"return best", b"Line 15 uses `return best` where it should use `", names, numbers)
    assert b"return xs" in name and b"return best" not in name and b"return x2" not in name
    assert not any(r.startswith(b"quot ") or b"return return" in r for r in name)  # a keyword stays
    assert b"x * 2" in finding_rights(b"x * 1", uses, names, numbers)  # a number for a number
    assert b"x * e" not in finding_rights(b"x * 1", uses, names, numbers)  # not a name for it
    start = finding_rights(b's = " "', uses, names, numbers)
    assert b's = ""' in start and b'x = " "' in start and b"s = x" not in start  # a string for a string
    off = b"Line 11 is off by one: `range(1, n)` should be `"
    assert finding_rights(b"range(1, n)", off, names, numbers) == {  # a bound moved by one
        b"range(0, n)", b"range(2, n)", b"range(1, n + 1)", b"range(1, n - 1)", b"range(n)"}
    assert finding_rights(b"xs[:n - 1]", off, names, numbers) == {b"xs[:n]", b"xs[:n - 2]"}
    assert finding_rights(b"[1:n]", off, names, numbers) == {b"[:n]", b"[0:n]", b"[2:n]", b"[1:n + 1]", b"[1:n - 1]"}
    assert finding_rights(b"if x > best:", off, names, numbers) is None  # no bound to move: free but for W
    starts = b"Line 3 starts the accumulator at `total = 1`; it must start at `"
    assert finding_rights(b"total = 1", starts, names, numbers) == {  # another start value
        b"total = 0", b'total = ""', b"total = ''", b"total = []", b"total = {}", b"total = ()", b"total = None"}
    assert b"acc = []" in finding_rights(b"acc = [0]", starts, names, numbers)
    assert b'out = ""' in finding_rights(b'out = " "', starts, names, numbers)
    assert finding_rights(b"total", starts, names, numbers) is None


def test_a_finding_line_s_second_span_is_what_its_words_allow_and_never_its_first():
    rule = ChangeFollowsFinding([("half.py", HALF)], thinking=True)
    for line, complete, want in [
        (b"Line 8 passes the arguments in the wrong order: `quot(2, e)` should be `quot(e, 2)`.", True, True),
        (b"Line 8 passes the arguments in the wrong order: `quot(2, e)` should be `quot(e,", False, True),
        (b"Line 8 passes the arguments in the wrong order: `quot(2, e)` should be `quot(e, 10", False, False),
        (b"Line 8 passes the arguments in the wrong order: `quot(2, e)` should be `quot(e, 2)", True, False),  # open
        (b"Line 15 uses `x < best` where the docstring needs `x > best`.", True, True),
        (b"Line 15 compares with `<` where the docstring needs `>=`. This is the bug.", True, True),
        (b"Line 15 compares with `<` where the docstring needs `<`.", True, False),  # R is W
        (b"Line 15 compares with `<` where the docstring needs `+`.", True, False),  # not a comparison
        (b"Line 17 uses `return best` where it should use `return best`.", True, False),
        (b"Line 17 uses `return best` where it should use `return xs`.", True, True),
        (b"Line 17 uses `return best` where it should use `return xs 6`.", True, False),
        (b"Line 13 is off by one: `xs[0]` should be `xs[1]`.", True, True),  # a bound moved by one
        (b"Line 13 is off by one: `xs[0]` should be `xs[0]`.", True, False),
        (b"Line 13 is off by one: `xs[0]` should be `xs[5]`.", True, False),
        (b"Line 13 is off by one: `xs[0]` should be `[:test_half//xs[]`.", True, False),
        (b"Line 15 uses `  ` where it should use `x`.", True, False),  # W: code, whole pieces of it
        (b"Line 17 uses `eturn best` where it should use `return xs`.", True, False),
        (b"Line 17 uses `return be` where it should use `return xs`.", True, False),
        (b"Line 17 uses `best` where it should use `xs`.", True, True),
    ]:
        assert rule(line, complete) is want, line
    answer = AnswerCode([("half.py", HALF)], thinking=True)  # the line the finding names, as it should be,
    wrote(answer, b"Line 8 passes the arguments in the wrong order: `quot(2, e)` should be `quot(e, 2)`. Oops\n")
    wrote(answer, b"</think>")  # may be restated, with or without its comment, though the thinking never wrote it
    for span in (b"return quot(e, 2)", b"return quot(e, 2)  # halve"):
        assert answer(b"1. Change line 8 from `return quot(2, e)` to `" + span + b"`.", True)
    assert not answer(b"1. Change line 8 from `return quot(2, e)` to `return quot(e, 3)`.", True)


def test_a_finding_says_one_of_the_findings_in_their_words_and_quotes_line_k_from_a_piece_s_start():
    """In the thinking, "Line K …" goes on in the words of one of the findings (FINDING_WORDS) up
    to its second span; its first span starts where a piece of line K's code does (a span that
    cannot close as whole pieces is a dead end, after which nothing holds the line); after "wrong
    order" it is a span of line K with a call whose arguments can be put in another order."""
    rule = ChangeFollowsFinding([("half.py", HALF)], thinking=True)
    for line, complete, want in [
        (b"Line 8 passes the arguments in the wrong o", False, True),
        (b"Line 8 passes the arguments in the wrong comparison", False, False),  # two findings' words blended
        (b"Line 8 passes the arguments in the wrong order:", True, False),  # cut short
        (b"Line 3 starts the square", False, False),
        (b"Line 8 uses `quot(2, e)` should use `quot(e, 2)`", False, False),  # "where it should use"
        (b"Line 15 compares with `<` where the docstring needs `>`. This is the bug.", True, True),
        (b"Line 15 compares with `<` where the docstring needs `>`; so", True, True),  # after R: free
        (b"So the bug is in `peak`, line 15: wrong comparison.", True, True),  # not a finding
        (b"Line 8 passes the arguments in the wrong order: `q", False, True),
        (b"Line 8 passes the arguments in the wrong order: `u", False, False),  # "u" of "quot": no piece starts there
        (b"Line 8 passes the arguments in the wrong order: `return", False, True),
        (b"Line 8 passes the arguments in the wrong order: `return`", False, False),  # no call to reorder
        (b"Line 8 passes the arguments in the wrong order: `2, e", False, False),  # no call starts in it
        (b"Line 8 passes the arguments in the wrong order: `quot(2, e)`", False, True),
        (b"Line 8 passes the arguments in the wrong order: `return quot(2, e)` should be `return quot(e, 2)`.",
         True, True),
        (b"Line 15 uses `est` where it should use `x`.", True, False),
    ]:
        assert rule(line, complete) is want, line
    assert ChangeFollowsFinding([("half.py", HALF)], thinking=False)(b"Line 8 passes anything", True)  # the answer


def test_a_quoted_docstring_is_the_named_function_s_or_else_one_the_files_have():
    rule = DocstringQuote([("half.py", HALF), ("notes.md", "no code")])
    for line, complete, want in [
        (b'The docstring says "Return half of e.", but `return quot(2, e)` passes', True, True),
        (b'The docstring says "Return hal', False, True),
        (b'The docstring says "Return sall numbers', False, False),  # from memory
        (b'The docstring says "Return half of e.', True, False),  # left open
        (b'**Bug:** function `half_of`, line 8. The docstring says "Return half of e."', True, True),
        (b'**Bug:** function `half_of`, line 8. The docstring says "Return top // bottom."', True, False),  # quot\'s
        (b'**Bug:** function `nowhere`, line 8. The docstring says "Return top // bottom."', True, True),
        ('**错误：** 函数 `peak`，第 17 行。文档字符串说 "Return the largest of xs."，但'.encode(), True, True),
        ('**错误：** 函数 `peak`，第 17 行。文档字符串说 "Return half'.encode(), False, False),
        (b"The docstring says that it halves e.", True, True),  # no quote: free
    ]:
        assert rule(line, complete) is want, line
    assert DocstringQuote([("a.py", "x = 1\n")])(b'The docstring says "anything"', True)  # no docstrings: free


@pytest.fixture(scope="module")
def tokenizer():
    from local_engine.tokenizer import Tokenizer

    return Tokenizer(demo.reasoner_path())


def test_the_token_rule_follows_the_line_rule_across_tokens_newlines_and_special_tokens(tokenizer):
    token_bytes = tokenizer.token_bytes()
    assert token_bytes[tokenizer.eos_token_id] == "<｜end▁of▁sentence｜>".encode()
    text = "calc.py has 2 functions.\n1 | def add(a, b):\n2 |     \"\"\"Return a plus b: “sum”.\"\"\"\n3 |     return a - b\nLine 3"
    ids = tokenizer.encode(text)
    assert b"".join(token_bytes[i] for i in ids).decode() == text
    c = LineConstraint(token_bytes, numbered_line_rule([("calc.py", CALC)]))
    for i in ids:
        assert c.allows(i)
        c.advance(i)
    assert c.line == b"Line 3"
    c = LineConstraint(token_bytes, numbered_line_rule([("calc.py", CALC)]))
    for i in tokenizer.encode("3 |     return a"):
        c.advance(i)
    eos = tokenizer.eos_token_id
    assert not c.allows(eos)  # the quote is not finished
    assert not c.allows(tokenizer.encode(" +")[0]) and c.allows(tokenizer.encode(" -")[0])
    for i in tokenizer.encode(" - b"):
        c.advance(i)
    assert not c.allows(eos) and c.allows(tokenizer.encode("\n")[0])  # a special token is its text
    c.advance(tokenizer.encode("\n")[0])
    assert c.allows(eos) and c.line == b""


def test_a_rule_that_refuses_a_line_open_refuses_every_line_that_begins_with_it():
    """What LineConstraint.allowed_tokens relies on, for both rules, on lines cut from real traces
    and from random bytes."""
    files = [("src/finder.py", FINDER), ("calc.py", CALC)]
    rng = random.Random(5)
    pieces = [b"4 |", b" 3 | ", b"    if arr[k] != needle:", b"`", b"``", b"where_is", b"test_finder", b".py", b" ",
              b"\n", b"`src/finder.py`", b"x", b"needle", b"1", b"\xc3\xa9", b"|", b"py.", b"/", b"(", b")"]
    answer = AnswerCode(files, thinking=True)
    wrote(answer, b"So `where_is` it is: change `if arr[k] != needle:` to `if arr[k] == needle:`.\n</think>")
    pieces += [b"`if arr[k] ", b"== needle:`", b"</think>", b"function `", "函数 `".encode(), b"add`", b"wh",
               b"from ", b" to ", "改为".encode(), b"!= needle:`"]
    for rule in (numbered_line_rule(files), inline_names_rule(files), answer, AnswerCode(files, thinking=True)):
        for _ in range(3000):
            line = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))).replace(b"\n", b"")
            if not rule(line, False):
                more = line + bytes(rng.choice(b"`ab_ .|1") for _ in range(rng.randint(0, 4)))
                assert not rule(more, False) and not rule(more, True), (line, more)


def test_the_allowed_tokens_are_found_by_walking_the_vocabulary_and_are_those_the_rule_allows(tokenizer):
    token_bytes = tokenizer.token_bytes()
    files = [("src/finder.py", FINDER), ("calc.py", CALC)]
    c = LineConstraint(token_bytes, all_of(numbered_line_rule(files), inline_names_rule(files)))
    text = ("src/finder.py has 1 function.\n4 |         if arr[k] != needle:  # compare\nLine 4 compares with "
            "`!=` where it needs `==`. So the bug is in `where_is`, line 4.\n**Plan:** check `test_finder.py`.")
    states = 0
    for i in tokenizer.encode(text):
        every = [t for t in range(len(token_bytes)) if c.allows(t)]
        assert sorted(c.allowed_tokens()) == every and i in every
        states += len(every) < 50
        c.advance(i)
    assert states > 20  # many states allow few tokens (a quote, a name under way)
    c.line = b"4 |  x"  # a refused line: nothing goes on from it
    assert c.allowed_tokens() == [] and not any(c.allows(t) for t in range(len(token_bytes)))


def test_a_refused_pick_costs_a_few_hundred_rule_calls_on_a_large_vocabulary_not_one_per_token():
    """A 100k-token vocabulary, a model whose likeliest tokens the rule refuses mid-quote: the
    pick is the same as asking about every token in order of likelihood, at a fraction of the
    rule calls (a count, not a time)."""
    rng = random.Random(0)
    alphabet = b"abcdefghijklmnopqrstuvwxyz_ ()=+-:.`|0123456789\n\"'ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    vocab = sorted({bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(130_000)})
    vocab += [b"b", b"b\n", b"", b"b"]  # the continuation, an empty token, a duplicate
    rule = numbered_line_rule([("calc.py", "def add(a, b):\n    return a - b\n")])
    calls = 0

    def counted(line, complete):
        nonlocal calls
        calls += 1
        return rule(line, complete)

    logits = torch.randn(len(vocab), generator=torch.Generator().manual_seed(0))
    reference = LineConstraint(vocab, rule)
    reference.line = b"2 |     return a - "
    plain = [t for t in torch.argsort(logits, descending=True).tolist() if reference.allows(t)]  # one call each
    c = LineConstraint(vocab, counted)
    c.line = b"2 |     return a - "
    picked = pick_allowed(logits, int(logits.argmax()), None, torch.Generator(), c)
    assert picked == plain[0] and vocab[picked][:1] == b"b"
    assert calls < 2_000 < len(vocab) // 10
    c.line, calls = b"2 |     return a - ", 0
    assert sorted(c.allowed_tokens()) == sorted(plain) and calls < 2_000
    probs = logits.softmax(-1)
    drawn = pick_allowed(logits, int(logits.argmax()), probs, torch.Generator().manual_seed(3), c)
    assert drawn in plain


class OnlyEven:
    def allows(self, t):
        return t % 2 == 0

    def advance(self, t):
        pass


def test_a_refused_pick_becomes_the_likeliest_allowed_token_or_a_draw_from_the_allowed_share():
    logits = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0])
    assert pick_allowed(logits, 1, None, torch.Generator().manual_seed(0), OnlyEven()) == 4
    probs = logits.softmax(-1)
    gen = torch.Generator().manual_seed(1)
    drawn = Counter(pick_allowed(logits, 1, probs, gen, OnlyEven(), tries=t % 3) for t in range(3000))
    assert set(drawn) <= {0, 2, 4}
    share = probs[[0, 2, 4]] / probs[[0, 2, 4]].sum()
    for k, want in zip((0, 2, 4), share.tolist()):
        assert abs(drawn[k] / 3000 - want) < 0.04, (k, drawn, share)
    nothing = type("Nothing", (), {"allows": lambda self, t: False, "advance": lambda self, t: None})()
    assert pick_allowed(logits, 1, probs, gen, nothing) == 1  # a rule no token meets: the model's pick
    ties = torch.tensor([0.0, 5.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    assert pick_allowed(ties, 1, None, gen, OnlyEven()) == 4  # equals go to the lowest id, as argmax does
    import local_engine.constraint as constraint

    constraint.RANKED_FIRST, before = 1, constraint.RANKED_FIRST
    try:
        assert pick_allowed(ties, 1, None, gen, OnlyEven()) == 4  # past the likeliest few too
    finally:
        constraint.RANKED_FIRST = before


@pytest.fixture(scope="module")
def reasoner():
    rc = RoleConfig(role="reasoner", backend="local", path=demo.reasoner_path(), quant="int8", context=2048,
                    history=False)
    model = LocalModel(rc.path, device="cpu", dtype="bfloat16", quant="int8", context=2048)
    yield rc, model
    model.close()


def _trace(backend, module, request, sampling, quotes, *, answer=False):
    events = list(backend.stream([ChatMessage("user", reasoner_prompt(module, request))], sampling,
                                 quotes_from=Quotes(((module.path, module.source),)) if quotes else None))
    assert not any(isinstance(e, Failed) for e in events)
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    if not answer:
        return thinking
    # The trace's last line ends where </think> begins (the splitter drops the newline before it).
    return thinking + "\n" + "".join(e.text for e in events if isinstance(e, AnswerDelta))


def inline_names(text: str) -> set[str]:
    """The names in inline code, found on their own (not by the rule's code). A reply cut off
    by its token limit inside inline code may end in the start of a name: that one is left out."""
    if len(re.findall(r"`+", text.rsplit("\n", 1)[-1])) % 2:
        text = re.sub(r"[A-Za-z0-9_]+$", "", text)
    spans = [part for line in text.split("\n") if not NUMBERED.match(line) and not line.lstrip().startswith("```")
             for part in re.split(r"`+", line)[1::2]]
    return {name for span in spans for name in re.findall(r"(?<![0-9A-Za-z_])[A-Za-z_][A-Za-z0-9_]*", span)}


@pytest.mark.parametrize("temperature", [0.0, 1.2])
def test_under_known_names_the_demo_reasoner_names_only_what_the_files_have(reasoner, temperature):
    """Greedy and sampled hot, on held-out modules: every name in its inline code, in the trace
    and the answer, is one the module's code or path has; without the rule, some are not."""
    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    named = dataclasses.replace(rc, known_names=True, exact_quotes=True)
    sampling = Sampling(temperature=temperature, top_p=1.0, max_tokens=700, seed=3)
    unknown_free = 0
    for module, request in demo_eval.heldout_cases(4, 7):
        allowed = known_names([(module.path, module.source)]) | path_words([(module.path, module.source)])
        text = _trace(LocalBackend(named, model), module, request, sampling, True, answer=True)
        assert inline_names(text) and inline_names(text) <= allowed, inline_names(text) - allowed
        free = _trace(LocalBackend(rc, model), module, request, sampling, True, answer=True)
        unknown_free += bool(inline_names(free) - allowed)
    assert unknown_free >= 2  # held to numbered lines only, it writes names the files do not have


def code_spans(text: str) -> list[str]:
    """The inline code spans of ``text``, found on their own (not by the rule's code)."""
    return [part for line in text.split("\n") if not NUMBERED.match(line) and not line.lstrip().startswith("```")
            for part in re.split(r"`+", line)[1::2] if part]


def test_the_demo_reasoner_s_answer_restates_its_thinking_s_code_only_under_the_rule(reasoner, monkeypatch):
    """Greedy and sampled hot on held-out modules: every inline code span of the answer is one
    its thinking wrote, a line of the module, one of its names or a path; without the answer's
    rule (the numbered lines and names still held) some answers rewrite code from memory."""
    import app.exact_quotes as exact_quotes

    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    held = dataclasses.replace(rc, known_names=True, exact_quotes=True)
    cases = demo_eval.heldout_cases(6, 7)

    def answers(temperature):
        sampling = Sampling(temperature=temperature, top_p=1.0, max_tokens=900, seed=5)
        for module, request in cases:
            events = list(LocalBackend(held, model).stream(
                [ChatMessage("user", reasoner_prompt(module, request))], sampling,
                quotes_from=Quotes(((module.path, module.source),))))
            thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
            answer = "".join(e.text for e in events if isinstance(e, AnswerDelta))
            files = [(module.path, module.source)]
            lines = module.source.splitlines()
            allowed = (set(code_spans(thinking)) | {ln.strip() for ln in lines} | {ln.split("#")[0].strip() for ln in lines}
                       | known_names(files) | {module.path, module.test_path})
            yield answer, [span for span in code_spans(answer) if span not in allowed]

    for temperature in (0.0, 1.2):
        said = 0
        for answer, stray in answers(temperature):
            assert not stray, (answer, stray)
            said += bool(code_spans(answer))
        assert said >= 4  # most answers quote code (a reply may run out of tokens in its thinking)
    monkeypatch.setattr(exact_quotes, "AnswerCode", lambda files, thinking: lambda line, complete: True)
    rewritten = sum(bool(stray) for temperature in (0.0, 1.2) for _, stray in answers(temperature))
    assert rewritten >= 2  # unheld, the answer writes code its thinking never did


def test_the_demo_reasoner_thinks_before_it_answers_only_under_the_rule(reasoner, monkeypatch):
    """Greedy, as Duet runs it, on held-out modules: with the rule's first check left out (a
    thinking may close at once) the demo reasoner skips its thinking on some requests
    (``</think>`` first, then an answer held to nothing); under the rule it thinks on those too."""
    import app.exact_quotes as exact_quotes

    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    held = dataclasses.replace(rc, known_names=True, exact_quotes=True)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=900)

    class MaySkip(AnswerCode):
        def __init__(self, files, *, thinking):
            super().__init__(files, thinking=thinking)
            self.said = True  # as if the thinking had said something already

    def thinking(module, request):
        return _trace(LocalBackend(held, model), module, request, greedy, True)

    with monkeypatch.context() as patch:
        patch.setattr(exact_quotes, "AnswerCode", MaySkip)
        skipped = [(m, r) for m, r in demo_eval.heldout_cases(30, 7) if not thinking(m, r).strip()]
    assert skipped  # the control: without the check, some thinking is empty
    for module, request in skipped:
        assert quoted_lines(thinking(module, request))  # under the rule it reads the module back


def stated_changes(answer: str) -> list[tuple[str, str]]:
    """The (X, Y) of each "from `X` to `Y`" / "`X` 改为 `Y`" in ``answer``, found on their own."""
    return re.findall(r"(?:from |行 )`([^`]+)` ?(?:to|改为) ?`([^`]+)`", answer)


def test_the_demo_reasoner_s_plan_changes_a_line_the_file_has_into_another_only_under_the_rule(reasoner, monkeypatch):
    """Greedy, asked as `duet run` asks (the design template), on held-out modules: every change
    the plan states is from code the module has into other code; with that check left out the
    demo reasoner swaps the two on one of them (its thinking concluded "Change `if e < winner:`
    to `if e > winner:`, its plan "from `if e > winner:` to `if e < winner:`")."""
    import app.exact_quotes as exact_quotes

    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    held = dataclasses.replace(rc, known_names=True, exact_quotes=True)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=900)

    def wrong_changes():
        wrong = stated = 0
        for module, request in demo_eval.heldout_cases(3, 7):
            events = list(LocalBackend(held, model).stream(
                [ChatMessage("user", reasoner_prompt(module, request, "design"))], greedy,
                quotes_from=Quotes(((module.path, module.source),))))
            answer = "".join(e.text for e in events if isinstance(e, AnswerDelta))
            for was, now in stated_changes(answer):
                stated += 1
                wrong += was not in module.source or was.split("#")[0].strip() == now.split("#")[0].strip()
        return wrong, stated

    wrong, stated = wrong_changes()
    assert stated >= 2 and wrong == 0
    never = re.compile(rb"(?!)")
    monkeypatch.setattr(exact_quotes, "_FROM", never)
    monkeypatch.setattr(exact_quotes, "_TO", never)
    monkeypatch.setattr(ChangeFollowsFinding, "__call__", lambda self, line, complete: True)  # it holds "from `X`" too
    assert wrong_changes()[0] >= 1


FINDING = re.compile(r"^Line (\d+)\b[^`]*`([^`]+)`[^`]*`([^`]+)`", re.M)


def failing_in(module, tmp_path) -> frozenset[str]:
    """The functions the module's own tests, run for real, fail in (as `duet run` finds them
    for its first plan)."""
    from app.conversation.verify import failing_functions

    (tmp_path / module.path).write_text(module.source, encoding="utf-8")
    (tmp_path / module.test_path).write_text(module.test_source, encoding="utf-8")
    ran = subprocess.run([sys.executable, module.test_path], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode != 0
    return failing_functions(ran.stderr, [(module.path, module.source)], reach=False)


def _focused_replies(model, rc, cases, tmp_path):
    """(module, thinking, answer) for each held-out case, greedy, as `duet run` asks after the
    tests (the design template, the reading focused on the functions they fail in)."""
    held = dataclasses.replace(rc, known_names=True, exact_quotes=True)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=900)
    for module, request in cases:
        events = list(LocalBackend(held, model).stream(
            [ChatMessage("user", reasoner_prompt(module, request, "design"))], greedy,
            quotes_from=Quotes(((module.path, module.source),), failing_in(module, tmp_path))))
        yield (module, "".join(e.text for e in events if isinstance(e, ThinkingDelta)),
               "".join(e.text for e in events if isinstance(e, AnswerDelta)))


def test_the_demo_reasoner_s_plan_states_the_change_its_finding_names_only_under_the_rule(reasoner, monkeypatch,
                                                                                        tmp_path):
    """Greedy, as `duet run` asks after the tests (the design template, the reading focused), on
    held-out modules: every change the plan states after a finding ("Line K uses `W` where the
    docstring needs `R`") is line K with one W written R, found here on their own; without the
    rule the demo reasoner writes the line again from memory on some of them (`return alpha +
    beta` to `return as_seconds * beta + 3`), and states the module's fix on fewer."""
    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    cases = demo_eval.heldout_cases(12, 8)

    def plans():
        right = astray = followed = 0
        for module, thinking, answer in _focused_replies(model, rc, cases, tmp_path):
            right += (module.bad_line.strip(), module.good_line.strip()) in stated_changes(answer)
            finding = FINDING.search(thinking)
            if finding is None:
                continue
            line = numbered_lines(module.source)[int(finding.group(1)) - 1].strip()
            wrong, now = finding.group(2), finding.group(3)
            if wrong not in line or wrong == now:
                continue
            for was, said in stated_changes(answer):
                made = {was[:i] + now + was[i + len(wrong):] for i in range(len(was)) if was.startswith(wrong, i)}
                followed += said in made
                astray += said not in made
        return right, astray, followed

    right, astray, followed = plans()
    assert astray == 0 and followed >= 6, (astray, followed)
    monkeypatch.setattr(ChangeFollowsFinding, "__call__", lambda self, line, complete: True)
    free_right, free_astray, _ = plans()
    assert free_astray >= 2 and right >= free_right + 2, (right, free_right, free_astray)


def test_after_failing_tests_the_demo_reasoner_reads_on_to_the_function_they_fail_in(reasoner, tmp_path):
    """Greedy, as `duet run` asks (the design template), on held-out modules whose tests were
    run: with the functions they fail in as the focus (`ReadingFocus`), every function the
    answer names is one of those, and it names the function the bug is in on more modules than
    without, where it stops at a line that only looks wrong in a function whose tests pass."""
    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    held = dataclasses.replace(rc, known_names=True, exact_quotes=True)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=900)
    right = {"focused": 0, "free": 0}
    for module, request in demo_eval.heldout_cases(12, 7):
        failing = failing_in(module, tmp_path)
        assert module.func.name in failing  # the bug's function is among them
        for way, focus in (("focused", failing), ("free", frozenset())):
            events = list(LocalBackend(held, model).stream(
                [ChatMessage("user", reasoner_prompt(module, request, "design"))], greedy,
                quotes_from=Quotes(((module.path, module.source),), focus)))
            answer = "".join(e.text for e in events if isinstance(e, AnswerDelta))
            named = set(re.findall(r"(?:function|函数) `([A-Za-z_][A-Za-z0-9_]*)", answer))
            if focus:
                assert named and named <= failing, (answer, failing)
            right[way] += named == {module.func.name}
    assert right["focused"] >= right["free"] + 3, right


def test_the_demo_reasoner_quotes_the_docstring_the_file_has_only_under_the_rule(reasoner, monkeypatch, tmp_path):
    """On held-out modules every docstring its answer quotes is the one the function it names
    has; without `DocstringQuote` it writes most of them from memory ("Return sall numbers in
    numbers.")."""
    import app.exact_quotes as exact_quotes

    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    cases = demo_eval.heldout_cases(6, 8)

    def quotes():
        right = wrong = 0
        for module, _, answer in _focused_replies(model, rc, cases, tmp_path):
            docs = {f.name: f.doc for f in functions([(module.path, module.source)])}
            for name, quoted in re.findall(r'(?:function|函数) `(\w+)`[^"\n]*?(?:docstring says|文档字符串说) "([^"\n]*)"', answer):
                ok = quoted == docs.get(name)
                right, wrong = right + ok, wrong + (not ok)
        return right, wrong

    right, wrong = quotes()
    assert right >= 4 and wrong == 0, (right, wrong)
    monkeypatch.setattr(exact_quotes.DocstringQuote, "__call__", lambda self, line, complete: True)
    assert quotes()[1] >= 3


def test_the_demo_reasoner_s_swapped_arguments_are_the_call_s_own_only_under_the_rule(reasoner, monkeypatch, tmp_path):
    """On held-out modules whose bug is a swapped call, the finding's fix is the call with its
    arguments in another order; without the rule the demo reasoner writes one from memory
    (`quot(2, e)` "should be" `quot(e, 10)`)."""
    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    cases = [case for case in demo_eval.heldout_cases(24, 8) if case[0].mutation.kind == "swapped_args"]
    assert len(cases) == 4

    def findings():
        reordered = other = 0
        for module, thinking, _ in _focused_replies(model, rc, cases, tmp_path):
            found = re.search(r"^Line \d+ [^`\n]*order[^`\n]*`([^`\n]+)`[^`\n]*`([^`\n]+)`", thinking, re.M)
            if found:   # (a span that is no call at all is some other change too)
                call = re.compile(r"(\w+)\((.*)\)")
                one, two = call.search(found.group(1)), call.search(found.group(2))
                same = bool(one and two) and one.group(1) == two.group(1) and one.group(2) != two.group(2) \
                    and sorted(one.group(2).split(", ")) == sorted(two.group(2).split(", "))
                reordered, other = reordered + same, other + (not same)
        return reordered, other

    reordered, other = findings()
    assert reordered >= 3 and other == 0, (reordered, other)
    monkeypatch.setattr(ChangeFollowsFinding, "_right_ok", lambda self, said, complete: True)
    assert findings()[1] >= 2


def test_the_demo_reasoner_reads_held_out_modules_back_exactly_only_under_the_rule(reasoner):
    rc, model = reasoner
    backend = LocalBackend(rc, model)
    demo_eval.STYLE = "heldout"
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=500)
    misquoted = 0
    for module, request in demo_eval.heldout_cases(4, 7):
        lines = numbered_lines(module.source)
        held = quoted_lines(_trace(backend, module, request, greedy, True))
        assert len(held) >= 3 and all(lines[n - 1] == said for n, said in held), held
        free = quoted_lines(_trace(backend, module, request, greedy, False))
        misquoted += any(n > len(lines) or lines[n - 1] != said for n, said in free)
    assert misquoted >= 2  # decoded freely, it misquotes these modules: the rule is what holds them


def test_greedy_with_mtp_drafts_is_the_plain_greedy_output_under_the_rule():
    """In float32, where a drafted forward and a token-by-token one agree exactly (in bf16 they
    can differ in the last bit, with or without the rule)."""
    model = LocalModel(demo.reasoner_path(), device="cpu", dtype="float32", quant=None, context=2048)
    engine, token_bytes = model.load(), model.token_bytes()
    engine.draft_length = DraftLength(timed=False)  # drafts whatever they cost here: the output is what is tested
    demo_eval.STYLE = "heldout"
    drafted = 0
    for module, request in demo_eval.heldout_cases(3, 7):
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": reasoner_prompt(module, request)}])
        ids = engine.tokenizer.encode(prompt)
        runs = []
        for speculative in (None, "mtp", None):  # plain, drafted, and plain again after it (the cache reused)
            rule = LineConstraint(token_bytes, numbered_line_rule([(module.path, module.source)]))
            runs.append(list(engine.generate(ids, max_new_tokens=300, temperature=0.0, speculative=speculative,
                                             constraint=rule)))
            if speculative:
                drafted += engine.last_stats["drafted"]
        assert runs[0] == runs[1] == runs[2]
    assert drafted > 0
    model.close()


@pytest.mark.parametrize("seed", range(3))
def test_sampled_hot_every_numbered_line_is_the_files(reasoner, seed):
    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    module, request = demo_eval.heldout_cases(6, 11)[seed * 2 + 1]
    hot = Sampling(temperature=1.2, top_p=1.0, max_tokens=400, seed=seed)
    lines = numbered_lines(module.source)
    held = quoted_lines(_trace(LocalBackend(rc, model), module, request, hot, True))
    assert held and all(lines[n - 1] == said for n, said in held), held


def test_the_demo_reasoner_has_the_rule_reasoner_turns_get_the_numbered_files_and_other_backends_refuse(tmp_path):
    assert demo_config().reasoner.exact_quotes and not demo_config().coder.exact_quotes
    assert demo_config().reasoner.known_names and demo_config().coder.known_names  # the coder's: its REPLACE names
    table = tomllib.loads(demo_table("reasoner", demo.reasoner_path()))
    assert parse_config(table).reasoner.exact_quotes and parse_config(table).reasoner.known_names
    coder = parse_config(tomllib.loads(demo_table("coder", demo.coder_path()))).coder
    assert coder.constrain_edits and coder.known_names  # a config written for the demo coder runs it as the demo does
    with pytest.raises(ConfigError, match=r"reasoner\.known_names.*exact_quotes"):
        parse_config({"reasoner": {"backend": "local", "path": str(tmp_path), "known_names": True}})
    with pytest.raises(ConfigError, match=r"reasoner\.exact_quotes.*local"):
        parse_config({"reasoner": {"backend": "openai", "url": "http://127.0.0.1:9/v1", "exact_quotes": True}})
    with pytest.raises(ConfigError, match=r"reasoner\.exact_quotes"):
        parse_config({"reasoner": {"backend": "local", "path": str(tmp_path), "exact_quotes": 1}})

    root = tmp_path / "p"
    root.mkdir()
    (root / "calc.py").write_text(CALC)
    ws = Workspace(root)
    ws.context.add("calc.py")
    with ScriptedServer(text_reply("fine")) as server:
        config = server_config(server.base_url)
        held = dataclasses.replace(config, reasoner=dataclasses.replace(config.reasoner, exact_quotes=True),
                                   coder=dataclasses.replace(config.coder, exact_quotes=True))
        conv = Conversation(held, workspace=ws, save=False)
        review = conv.prepare("review calc.py", "reasoner").turn
        assert review.quotes_from() == Quotes((("calc.py", CALC),)) and "\n3 |     return a - b\n" in review.prompt
        assert conv.prepare("fix the bug in calc.py", "coder").turn.quotes_from() is None  # its prompt numbers nothing
        assert Conversation(config, workspace=ws, save=False).prepare("review calc.py", "reasoner").turn.quotes_from() is None
        ended = list(conv.run(conv.prepare("review calc.py", "reasoner")))[-1]
        assert ended.status == "failed" and "reasoner.exact_quotes" in ended.reasons[0]
        assert server.requests == []  # refused before anything was sent


def test_a_reading_made_to_conclude_at_the_failing_function_s_end_goes_back_to_the_line_it_leaned_to(reasoner,
                                                                                                     monkeypatch,
                                                                                                     tmp_path):
    """Greedy, after the tests (as `duet run` asks), on held-out modules where the demo reasoner
    reads past the comparison it doubted and is made to conclude at the function's `return`
    line: the reply goes back (app.held_reply) and its finding is the line it leaned to, the bug's
    here; its reading up to there is what it wrote before, and every numbered line is the file's.
    Without the look back it names the `return` line."""
    rc, model = reasoner
    demo_eval.STYLE = "heldout"
    cases = [demo_eval.heldout_cases(30, 9)[i] for i in (8, 14)]  # the bug on a comparison, read past

    def findings():
        out = []
        for module, thinking, _ in _focused_replies(model, rc, cases, tmp_path):
            lines = numbered_lines(module.source)
            assert all(lines[n - 1] == said for n, said in quoted_lines(thinking))
            finding = FINDING.search(thinking)
            last = next(f.last for f in functions([(module.path, module.source)]) if f.name == module.func.name)
            out.append((module.bug_line_no, int(finding.group(1)) if finding else None, last))
        return out

    looked = findings()
    assert all(found == bug for bug, found, _ in looked), looked
    monkeypatch.setattr(ReadingFocus, "observe", lambda self, *args: None)
    assert all(found == last != bug for bug, found, last in findings())
