"""Tests before the plan (``[workspace] test_first``): which functions a failing run reaches
(app.code_map, app.conversation.verify.failing_functions) and the reading focused on them
(app.exact_quotes.ReadingFocus). The whole flow, through `duet run`, is in test_run.py; the demo
reasoner under the focus, in test_exact_quotes.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.code_map import functions, reached
from app.conversation.verify import failing_functions, is_test_path
from app.exact_quotes import Quotes, ReadingFocus, line_rules

SHAPES = ('def area(w, h):\n    """Return w times h."""\n    return w + h\n\n\n'  # lines 1-3
          'def double_area(w, h):\n    """Return twice the area."""\n    return 2 * area(w, h)\n\n\n'  # 6-8
          'class Box:\n    def volume(self, d):\n        return self.side * d\n\n\n'  # 11-13
          'def unused():\n    return 0\n')  # 16-17
TEST_SHAPES = ("from shapes import area, double_area\n\n\ndef test_double():\n    assert double_area(2, 3) == 12\n")


def test_the_code_map_knows_each_function_s_lines_and_calls_and_what_a_name_reaches():
    fs = {f.name: f for f in functions([("shapes.py", SHAPES), ("notes.md", "def no(): pass\n"), ("bad.py", "def (")])}
    assert set(fs) == {"area", "double_area", "volume", "unused"}  # not Markdown, not a file that does not parse
    assert (fs["area"].first, fs["area"].last) == (1, 3) and (fs["volume"].first, fs["volume"].last) == (12, 13)
    assert fs["double_area"].calls == {"area"} and fs["unused"].calls == frozenset()
    assert fs["area"].doc == "Return w times h." and fs["unused"].doc == ""
    assert fs["area"].code == 3 and fs["unused"].code == 17 and fs["volume"].code == 13  # after the docstring, if any
    assert [f.name for f in reached(["double_area"], [("shapes.py", SHAPES)])] == ["area", "double_area"]
    assert reached(["print", "nothing"], [("shapes.py", SHAPES)]) == []


def run_output(tmp_path, runner: list[str]) -> str:
    (tmp_path / "shapes.py").write_text(SHAPES)
    (tmp_path / "test_shapes.py").write_text(TEST_SHAPES)
    return subprocess.run(runner, cwd=tmp_path, capture_output=True, text=True).stdout


def test_a_failing_run_reaches_the_functions_its_asserts_call_and_theirs_whatever_the_runner(tmp_path):
    """Real output: pytest's, and a plain script's traceback. The functions named there that the
    files define, and what they call; the test file's own functions are not among them."""
    files = [("shapes.py", SHAPES), ("test_shapes.py", TEST_SHAPES)]
    pytest_out = run_output(tmp_path, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shapes.py"])
    assert "double_area" in pytest_out and "test_double" in pytest_out
    assert failing_functions(pytest_out, files) == {"double_area", "area"}
    assert failing_functions(pytest_out, files, reach=False) == {"double_area"}  # the one its assert calls
    assert failing_functions("    def test_double():", files, reach=False) == {"double_area", "area"}  # none shown
    script = tmp_path / "test_plain.py"
    script.write_text("from shapes import area\nassert area(2, 3) == 6\n")
    plain = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True).stderr
    assert failing_functions(plain, files) == {"area"}
    assert failing_functions("    assert box.volume(3) == 27", files) == {"volume"}  # a method, by its name
    assert failing_functions("ModuleNotFoundError: No module named 'shapes'", files) == frozenset()
    assert failing_functions(pytest_out, [("shapes.md", SHAPES)]) == frozenset()  # not Python: nothing known
    assert is_test_path("pkg/test_x.py") and is_test_path("x_test.py") and is_test_path("conftest.py")
    assert not is_test_path("testing.py") and not is_test_path("contest.py")


def told(rule, text: bytes) -> None:
    for line in text.split(b"\n"):
        rule.wrote(line)


def test_the_reading_concludes_only_inside_a_failing_function_and_reads_no_further_than_the_last():
    files = [("shapes.py", SHAPES)]
    focus = ReadingFocus(files, {"double_area", "area"}, thinking=True)
    assert focus.lines == {1, 2, 3, 6, 7, 8} and focus.end == 8
    assert focus(b"shapes.py has 4 functions. I read the code line by line.", True)  # before the reading: free
    told(focus, b"shapes.py has 4 functions. I read the code line by line.\n 1 | def area(w, h):")
    assert focus(b"Line 1 is the bug.", True)  # inside area
    told(focus, b' 2 |     """Return w times h."""\n 3 |     return w + h\n 4 | ')
    for line, complete, want in [
        (b"Line 3 uses `+` where the docstring needs `*`.", True, False),  # line 4 is not area's
        (b"Line", False, False), (b"", True, False), (b"</think>", True, False),  # nor a stop of any kind
        (b" 5 | ", True, True), (b" 5", False, True), (b" ", False, True),  # reading on
        (b" 9 | ", True, False), (b" 9", False, False),  # past double_area, the last failing function
        (b" 5", True, False), (b" 5by", True, False),  # a number that is not a numbered line
    ]:
        assert focus(line, complete) is want, (line, complete)
    told(focus, b" 5 | \n 6 | def double_area(w, h):")
    assert focus(b"Line 6 is the bug.", True)
    assert focus(b"So the bug is in function `area`.", True) and not focus(b"So the bug is in function `unused`", True)
    assert focus(b"function `double_", False) and not focus(b"function `un", False)
    told(focus, b"So it is here.</think>")
    assert focus(b"**Bug:** `shapes.py`, function `double_area`, line 8.", True)  # the answer: names held only
    assert not focus(b"**Bug:** function `unused`.", True)
    café = ReadingFocus([("m.py", "def café():\n    return 1\n")], {"café"}, thinking=False)
    assert café("the function `café` is wrong".encode(), True)  # a name inline code cannot hold: not held
    plain = ReadingFocus(files, {"area"}, thinking=False)  # a reply that is all answer
    told(plain, b" 16 | def unused():")
    assert plain(b"Line 16 is wrong.", True)


def test_the_rules_of_a_reply_take_the_focus_only_after_failing_tests_that_reach_a_function():
    files = (("shapes.py", SHAPES),)
    read = b"shapes.py has 4 functions.\n 1 | def area(w, h):\n 2 |     \"\"\"Return w times h.\"\"\"\n 3 |     return w + h\n 4 | "
    for failing, stops in [(frozenset(), True), (frozenset({"double_area"}), False), (frozenset({"nowhere"}), True)]:
        rules = line_rules(Quotes(files, failing), thinking=True, names=True)
        told(rules, read)
        assert rules(b"Line 3 uses `+` where the docstring needs `*`. This is the bug.", True) is stops, failing


def test_a_re_plan_after_test_first_reads_toward_the_latest_failure(tmp_path):
    """In the core: the plan's change fails the tests (now in ``double_area`` only: ``area`` was
    "fixed" into a bug of its own); the re-plan's turn is focused on what that failure reaches, and
    its prompt carries the failure only where the re-plan request does not (history) and the
    reasoner keeps history. A run before the plan is no plan's test (the re-plan of a plan whose
    edits never applied falls back to it)."""
    import dataclasses

    from app.config import WorkspaceConfig
    from app.conversation import Conversation
    from app.workspace import Workspace
    from tests.sse_server import ScriptedServer, reasoner_reply, text_reply
    from tests.tui_support import server_config

    (tmp_path / "shapes.py").write_text(SHAPES)
    (tmp_path / "test_shapes.py").write_text("from shapes import area, double_area\n\nassert area(2, 3) == 6\n"
                                             "assert double_area(2, 3) == 12\n")
    wrong = ("shapes.py\n<<<<<<< SEARCH\n    return w + h\n=======\n    return w * h\n>>>>>>> REPLACE\n\n"
             "shapes.py\n<<<<<<< SEARCH\n    return 2 * area(w, h)\n=======\n    return 3 * area(w, h)\n>>>>>>> REPLACE\n")
    test = f"{sys.executable} test_shapes.py"
    for history in (True, False):
        with ScriptedServer(reasoner_reply("t", "1. fix area"), models=("scripted-model",)) as server:
            config = server_config(server.base_url)
            config = dataclasses.replace(config, workspace=WorkspaceConfig(test=test, test_first=True),
                                         reasoner=dataclasses.replace(config.reasoner, history=history))
            ws = Workspace(tmp_path)
            ws.context.add("shapes.py")
            conv = Conversation(config, workspace=ws, save=False, test_command=test, rounds=1)
            routed = conv.prepare("fix the bug in shapes.py", "reasoner", intent="design")
            events = list(conv.run(routed))
            assert [e.round for e in events if type(e).__name__ == "TestFinished"] == [0]
            assert routed.turn.failing == {"area"} and ("fails now" in routed.turn.prompt) is history
            assert conv.attempts.test is None  # the run before the plan is none of its plans'
            server.enqueue(text_reply(wrong))
            list(conv.run(conv.prepare_handoff("fix the bug in shapes.py"), approve=lambda c: c))
            assert not conv.attempts.test.passed and "double_area(2, 3)" in conv.attempts.test.output
            conv.undo_attempt()
            again = conv.prepare_replan().turn
            assert again.failing == {"double_area", "area"}  # what the latest failure reaches
            assert "fails now" not in again.prompt  # with history the re-plan request holds it; without, none
            assert ("double_area(2, 3)" in again.prompt) is history


def test_a_re_plan_does_not_find_again_a_change_that_was_applied_and_failed(tmp_path):
    """A plan says "change line 3 from `return w + h` to `return w - h`", the coder writes that
    line, the tests fail: the re-plan's finding may not name that change again (another piece
    for `+` is still its own), and a change the coder never wrote is not counted as tried."""
    import dataclasses

    from app.config import WorkspaceConfig
    from app.conversation import Conversation
    from app.workspace import Workspace
    from tests.sse_server import ScriptedServer, reasoner_reply, text_reply
    from tests.tui_support import server_config

    (tmp_path / "shapes.py").write_text(SHAPES)
    (tmp_path / "test_shapes.py").write_text("from shapes import area\n\nassert area(2, 3) == 6\n")
    plan = "1. In `shapes.py`, function `area`, change line 3 from `return w + h` to `return w - h`."
    minus = "shapes.py\n<<<<<<< SEARCH\n    return w + h\n=======\n    return w - h\n>>>>>>> REPLACE\n"
    other = "shapes.py\n<<<<<<< SEARCH\n    return w + h\n=======\n    return h + w + 0\n>>>>>>> REPLACE\n"
    test = f"{sys.executable} test_shapes.py"
    for coder, tried in ((minus, {("return w + h", "return w - h")}), (other, set())):
        with ScriptedServer(reasoner_reply("t", plan), models=("scripted-model",)) as server:
            config = server_config(server.base_url)
            config = dataclasses.replace(config, workspace=WorkspaceConfig(test=test, test_first=True))
            ws = Workspace(tmp_path)
            ws.context.add("shapes.py")
            conv = Conversation(config, workspace=ws, save=False, test_command=test, rounds=1)
            list(conv.run(conv.prepare("fix the bug in shapes.py", "reasoner", intent="design")))
            server.enqueue(text_reply(coder))
            list(conv.run(conv.prepare_handoff("fix the bug in shapes.py"), approve=lambda c: c))
            assert not conv.attempts.test.passed and conv.attempts.failed == tried
            conv.undo_attempt()
            again = conv.prepare_replan().turn
            assert again.failed_changes == tried  # (what its exact_quotes hold, with a local reasoner)
    files = (("shapes.py", SHAPES),)
    rules = line_rules(Quotes(files, failed=frozenset({("return w + h", "return w - h")})), thinking=True, names=True)
    finding = b"Line 3 uses `+` where the docstring needs `"
    assert not rules(finding + b"-`.", True) and rules(finding + b"*`.", True)
    assert not rules(finding + b"-", False) and rules(finding + b"*", False)
    assert line_rules(Quotes(files), thinking=True, names=True)(finding + b"-`.", True)  # a first plan's: free
    twice = "def f(m, s):\n    return m + 60 + s\n"  # two `+`: the one whose change failed is not stated again
    rules = line_rules(Quotes((("t.py", twice),), failed=frozenset({("return m + 60 + s", "return m + 60 * s")})),
                       thinking=True, names=True)
    for line in (b"Line 2 uses `+` where the docstring needs `*`. This is the bug.", b"</think>"):
        assert rules(line, True)
        rules.wrote(line)
    change = b"1. Change line 2 from `return m + 60 + s` to `return m "
    assert rules(change + b"* 60 + s`.", True) and not rules(change + b"+ 60 * s`.", True)


PEAK = ('def peak(xs):\n    """Return the largest of xs."""\n    best = xs[0]\n    for x in xs:\n'  # lines 1-4
        '        if x < best:\n            best = x\n    return best\n')  # 5-7
VOCAB = [b"\n", b"Line", b" 1 |", b" 2 |", b" 3 |", b" 4 |", b" 5 |", b" 6 |", b" 7 |", b" 8 |", b" ", b"So"]
LINE, ON = VOCAB.index(b"Line"), {n: VOCAB.index(f" {n} |".encode()) for n in range(1, 9)}


def leaning(p_line: float, n: int):
    """Logits where concluding ("Line") has probability ``p_line`` and reading on (line n) the rest."""
    import torch

    probs = torch.full((len(VOCAB),), 1e-9)
    probs[LINE], probs[ON[n]] = p_line, 1.0 - p_line
    return probs.log()


def read_peak(focus, leanings, picks) -> None:
    """The reading of PEAK, the model leaning as given after each line, picking ``picks`` (LINE:
    to conclude; else reading on)."""
    told(focus, b"m.py has 1 function. I read the code line by line.")
    for n, (p, pick) in enumerate(zip(leanings, picks), 1):
        told(focus, f"{n:>1} | {PEAK.split(chr(10))[n - 1]}".encode())
        focus.observe(b"", leaning(p, n + 1), ON[n + 1] if pick else LINE, VOCAB)


def test_the_reading_looks_back_to_the_line_it_leaned_to_only_where_it_was_made_to_conclude():
    """After each line of the failing functions the focus notes how likely the model was to
    conclude there; where it would read on past their last line (the rule makes it conclude
    there), ``look_back`` is the line of their code it leaned furthest towards concluding after
    (not the ``def`` or docstring); where it concluded of its own accord, or leaned furthest at
    the last line, there is none."""
    files = [("m.py", PEAK)]
    made = ReadingFocus(files, {"peak"}, thinking=True)
    read_peak(made, [0.01, 0.6, 0.01, 0.01, 0.3, 0.01, 0.05], [1] * 7)  # the docstring's 0.6 is not code
    assert made.leaning[5] == pytest.approx(0.3, abs=1e-6) and len(made.leaning) == 7
    assert made.look_back == (6, 5)  # line 5, the sixth line written
    assert not made.reading  # held back no longer: the reply goes back
    chose = ReadingFocus(files, {"peak"}, thinking=True)
    read_peak(chose, [0.01, 0.01, 0.01, 0.01, 0.3, 0.01, 0.05], [1, 1, 1, 1, 0])  # it concluded after line 5
    assert chose.look_back is None and chose.chose_to_conclude
    last = ReadingFocus(files, {"peak"}, thinking=True)
    read_peak(last, [0.01, 0.01, 0.01, 0.01, 0.1, 0.01, 0.2], [1] * 7)
    assert last.look_back is None and last.reading  # it leaned furthest at line 7: it concludes there
    back = ReadingFocus(files, {"peak"}, thinking=True, conclude_at=5)
    told(back, b"m.py has 1 function.\n" + "\n".join(f"{n} | {line}" for n, line in
                                                      enumerate(PEAK.split("\n")[:5], 1)).encode())
    assert not back(b"6 |             best = x", True) and not back(b"6", False)  # past line 5: refused
    assert not back(b"1 | def peak(xs):", True) and not back(b" ", False)  # and any other: it concludes
    assert back(b"", False) and back(b"Line", False)  # a line begun: its first token may be the finding's
    assert back(b"Line 5 compares with `<` where the docstring needs `>`.", True)
    rules = line_rules(Quotes(tuple(files), frozenset({"peak"})), thinking=True, names=True, conclude_at=5)
    assert rules.focus is not None and rules.focus.conclude_at == 5
    assert line_rules(Quotes(tuple(files)), thinking=True, names=True).focus is None  # no failing tests: no focus
