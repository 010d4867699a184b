"""The retry loop: rejected blocks go back to a (scripted) coder, up to three rounds."""

from __future__ import annotations

from app.workspace import Workspace, revise


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


class ScriptedCoder:
    """Answers each feedback prompt with the next scripted reply and keeps the prompts."""

    def __init__(self, *replies: str):
        self.replies = list(replies)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.replies.pop(0)


def test_a_rejected_block_goes_back_with_its_reason_and_the_fix_is_merged(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    return 1\n\n\ndef g():\n    return 2\n")
    ws = Workspace(tmp_path)
    first = block("a.py", "    return 1\n", "    return 10\n") + block("a.py", "def g():\n    return 3\n", "x\n")
    fix = block("a.py", "def g():\n    return 2\n", "def g():\n    return 20\n")
    coder = ScriptedCoder(fix)
    rounds = []
    changes = revise(ws, first, coder, on_round=rounds.append)
    assert len(coder.prompts) == 1
    assert "Did you mean these lines (5-6)?" in coder.prompts[0] and "def g():\n    return 2" in coder.prompts[0]
    assert [r.number for r in rounds] == [1] and rounds[0].reply == fix and rounds[0].prompt == coder.prompts[0]
    assert not changes.rejected
    assert changes.edits[0].after == b"def f():\n    return 10\n\n\ndef g():\n    return 20\n"
    ws.apply(changes)
    assert (tmp_path / "a.py").read_text().count("0\n") == 2


def test_the_coder_is_not_asked_again_when_nothing_was_rejected(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    coder = ScriptedCoder()
    changes = revise(Workspace(tmp_path), block("a.py", "x = 1\n", "x = 2\n"), coder)
    assert coder.prompts == [] and len(changes.edits) == 1


def test_retries_stop_after_three_rounds_keeping_the_last_reasons(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    bad = block("a.py", "x = 7\n", "x = 8\n")
    coder = ScriptedCoder(bad, bad, bad, bad)
    rounds = []
    changes = revise(Workspace(tmp_path), bad, coder, on_round=rounds.append)
    assert len(coder.prompts) == 3 and [r.number for r in rounds] == [1, 2, 3]
    assert len(changes.rejected) == 1 and not changes.edits


def test_a_reply_without_blocks_ends_the_retries(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    coder = ScriptedCoder("Sorry, I cannot find that code.")
    rounds = []
    changes = revise(Workspace(tmp_path), block("a.py", "x = 7\n", "x = 8\n"), coder, on_round=rounds.append)
    assert len(coder.prompts) == 1 and len(rounds) == 1
    assert len(changes.rejected) == 1


def test_a_later_round_applies_on_top_of_the_accepted_edits(tmp_path):
    (tmp_path / "a.py").write_text("a = 1\nb = 2\n")
    ws = Workspace(tmp_path)
    first = block("a.py", "a = 1\n", "a = 10\n") + block("a.py", "c = 3\n", "c = 30\n")
    # the fix quotes the file as the first round left it
    coder = ScriptedCoder(block("a.py", "a = 10\nb = 2\n", "a = 10\nb = 20\n"))
    changes = revise(ws, first, coder)
    assert changes.edits[0].before == b"a = 1\nb = 2\n"
    assert changes.edits[0].after == b"a = 10\nb = 20\n"


def test_a_chinese_request_gets_its_retry_feedback_in_chinese(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    ws = Workspace(tmp_path)
    coder = ScriptedCoder(block("a.py", "x = 1\n", "x = 2\n"))
    changes = revise(ws, block("a.py", "x = 9\n", "x = 2\n"), coder, lang="zh")
    assert "修改块无法应用" in coder.prompts[0] and "a.py" in coder.prompts[0]
    assert not changes.rejected and changes.edits[0].after == b"x = 2\n"
