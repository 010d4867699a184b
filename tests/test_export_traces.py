"""`duet export-traces`: saved reasoner turns written as JSONL and read back field by field."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vocab.events import AnswerDelta, Done, ThinkingDelta, Usage
from app.cli import main
from app.store import SessionStore

ROOT = Path(__file__).resolve().parent.parent


def _reply(store, sid, *, role="reasoner", model="r1", prompt="", thinking="", answer="", usage=None,
           status=None, handoff_from=None):
    rec = store.begin_reply(sid, role=role, model=model, prompt=prompt, handoff_from=handoff_from)
    if thinking:
        rec.add(ThinkingDelta(thinking))
    if answer:
        rec.add(AnswerDelta(answer))
    if usage:
        rec.add(Usage(*usage))
    rec.add(Done("stop", 0.1, 1.0))
    if status != "streaming":
        rec.finish(status)
    return rec.message_id


@pytest.fixture
def saved():
    """Two sessions: a plan that was applied through the coder, a long old plan, and turns that
    must never be exported (coder, failed, unfinished, empty answer)."""
    with SessionStore.open() as s:
        a = s.create_session("cache")
        s.add_user_message(a, "add a cache")
        plan = _reply(s, a, prompt="<file cache.py>\nadd a cache", thinking="LRU or TTL? LRU.",
                      answer="1. Add functools.lru_cache.", usage=(50, 10))
        code = _reply(s, a, role="coder", model="coder-7b", answer="@@ diff", handoff_from=plan)
        s.record_applied(code, "cache.py: 1 change")
        _reply(s, a, thinking="hmm", answer="partial", status="failed")
        _reply(s, a, thinking="still thinking", answer="", status="streaming")
        _reply(s, a, thinking="nothing to say", answer="")

        b = s.create_session("中文")
        s.add_user_message(b, "解释快速排序")  # no prompt= given: the user's text stands in
        old = _reply(s, b, model="r1-distill", thinking="先想一想。" * 300, answer="快速排序是分治算法。")
        ten_days_ago = (dt.datetime.now() - dt.timedelta(days=10)).timestamp()
        db = sqlite3.connect(s.path)
        db.execute("UPDATE messages SET created = ? WHERE id = ?", (ten_days_ago, old))
        db.commit()
        db.close()
        yield {"plan": plan, "old": old, "a": a, "b": b}


def _export(tmp_path, *extra) -> tuple[int, list[dict]]:
    out = tmp_path / "traces.jsonl"
    code = main(["export-traces", "--out", str(out), *extra])
    return code, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_fields_format_has_prompt_reasoning_answer_and_model_per_reasoner_turn(saved, tmp_path, capsys):
    code, rows = _export(tmp_path)
    assert code == 0
    assert capsys.readouterr().out.strip() == f"wrote 2 reasoner turns to {tmp_path / 'traces.jsonl'}"
    old, plan = rows  # oldest first
    assert plan["prompt"] == "<file cache.py>\nadd a cache"
    assert plan["reasoning"] == "LRU or TTL? LRU."
    assert plan["answer"] == "1. Add functools.lru_cache."
    assert plan["model"] == "r1"
    assert plan["applied"] is True
    assert (plan["session_id"], plan["message_id"]) == (saved["a"], saved["plan"])
    assert plan["reasoning_tokens"] == round(10 * 16 / (16 + 27))  # usage split by thinking share
    assert dt.datetime.fromisoformat(plan["created"]).date() == dt.date.today()
    assert old["prompt"] == "解释快速排序"
    assert old["reasoning"] == "先想一想。" * 300
    assert old["answer"] == "快速排序是分治算法。"
    assert (old["model"], old["applied"], old["reasoning_tokens"]) == ("r1-distill", False, 1)


def test_messages_format_puts_reasoning_in_think_tags_before_the_answer(saved, tmp_path):
    code, rows = _export(tmp_path, "--format", "messages")
    assert code == 0
    old, plan = rows
    assert plan == {
        "messages": [
            {"role": "user", "content": "<file cache.py>\nadd a cache"},
            {"role": "assistant", "content": "<think>\nLRU or TTL? LRU.\n</think>\n\n1. Add functools.lru_cache."},
        ],
        "model": "r1",
    }
    assert old["messages"][1]["content"].startswith("<think>\n先想一想。")
    assert old["messages"][1]["content"].endswith("\n</think>\n\n快速排序是分治算法。")


def test_filters_select_by_date_applied_plans_and_reasoning_length(saved, tmp_path):
    today = dt.date.today().isoformat()
    assert [r["message_id"] for r in _export(tmp_path, "--since", today)[1]] == [saved["plan"]]
    assert [r["message_id"] for r in _export(tmp_path, "--only-applied")[1]] == [saved["plan"]]
    assert [r["message_id"] for r in _export(tmp_path, "--min-reasoning-tokens", "2")[1]] == [saved["plan"]]
    assert _export(tmp_path, "--min-reasoning-tokens", "5")[1] == []
    long_ago = (dt.date.today() - dt.timedelta(days=30)).isoformat()
    assert len(_export(tmp_path, "--since", long_ago)[1]) == 2


@pytest.mark.parametrize("argv, field", [
    (["--since", "2024-13-01"], "--since"),
    (["--since", "last week"], "--since"),
    (["--min-reasoning-tokens", "-1"], "--min-reasoning-tokens"),
    (["--out-dir-missing"], "--out"),
])
def test_bad_arguments_exit_2_with_one_line_naming_the_option(tmp_path, capsys, argv, field):
    out = tmp_path / "traces.jsonl"
    if argv == ["--out-dir-missing"]:
        out, argv = tmp_path / "no" / "such" / "traces.jsonl", []
    assert main(["export-traces", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err
    assert not out.exists()


def test_the_real_cli_exports_from_the_data_dir(saved, tmp_path):
    out = tmp_path / "from-cli.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "app", "export-traces", "--out", str(out), "--format", "messages"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 reasoner turns" in done.stdout
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["model"] for x in lines] == ["r1-distill", "r1"]
    assert "快速排序" in lines[0]  # written as UTF-8, not \\u escapes
