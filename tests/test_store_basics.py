"""The session store's everyday behaviour, on a real SQLite file."""

from __future__ import annotations

import sqlite3

import pytest

from vocab.events import AnswerDelta, Done, Failed, ThinkingDelta, Usage
from app.paths import data_dir
from app.store import SessionStore
from app.store import recorder as recorder_module


@pytest.fixture
def store():
    with SessionStore.open() as s:
        yield s


def test_store_opens_sessions_db_in_the_data_dir_in_wal_mode(store):
    assert store.path == str(data_dir() / "sessions.db")
    assert store.warning is None
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_turn_is_saved_with_every_part(store):
    sid = store.create_session("Sorting", workspace="/w")
    uid = store.add_user_message(sid, "sort this list", files=["a.py", "b.py"])
    rec = store.begin_reply(sid, role="reasoner", model="r1-q4", intent="plan", why="asks for a plan",
                            prompt="<files>a.py</files>\nsort this list")
    for event in [ThinkingDelta("Let me "), ThinkingDelta("think."), AnswerDelta("Use "),
                  AnswerDelta("sorted()."), Usage(12, 34), Done("stop", 0.25, 1.5)]:
        rec.add(event)
    rec.finish()

    user, reply = store.messages(sid)
    assert (user.id, user.kind, user.role, user.text, user.files, user.status) == (
        uid, "user", "user", "sort this list", ["a.py", "b.py"], "done")
    assert reply.id == rec.message_id
    assert (reply.kind, reply.role, reply.model, reply.intent, reply.why) == (
        "assistant", "reasoner", "r1-q4", "plan", "asks for a plan")
    assert (reply.thinking, reply.answer, reply.status) == ("Let me think.", "Use sorted().", "done")
    assert reply.prompt == "<files>a.py</files>\nsort this list"
    assert reply.usage == {"prompt_tokens": 12, "completion_tokens": 34}
    assert reply.timings == {"first_token_s": 0.25, "total_s": 1.5}
    assert reply.thinking_deltas == 2
    assert user.created <= reply.created
    [info] = store.list_sessions()
    assert (info.id, info.title, info.workspace, info.message_count) == (sid, "Sorting", "/w", 2)


def test_finish_without_status_follows_the_events(store):
    sid = store.create_session("s")
    failed = store.begin_reply(sid, role="coder", model="m")
    failed.add(AnswerDelta("half"))
    failed.add(Failed("server closed the connection"))
    failed.finish()
    cancelled = store.begin_reply(sid, role="coder", model="m")
    cancelled.add(Done("cancelled", None, 0.1))
    cancelled.finish()
    explicit = store.begin_reply(sid, role="coder", model="m")
    explicit.finish("failed", "timeout after 30 s")
    got = {m.id: (m.status, m.error, m.answer) for m in store.messages(sid)}
    assert got[failed.message_id] == ("failed", "server closed the connection", "half")
    assert got[cancelled.message_id] == ("cancelled", None, "")
    assert got[explicit.message_id] == ("failed", "timeout after 30 s", "")
    with pytest.raises(ValueError):
        store.begin_reply(sid, role="coder", model="m").finish("finished")


def test_recorder_used_as_context_manager_saves_the_failure(store):
    sid = store.create_session("s")
    with pytest.raises(RuntimeError):
        with store.begin_reply(sid, role="coder", model="m") as rec:
            rec.add(AnswerDelta("partial"))
            raise RuntimeError("backend exploded")
    [m] = store.messages(sid)
    assert (m.status, m.answer, m.error) == ("failed", "partial", "RuntimeError: backend exploded")


def test_streamed_text_reaches_the_file_in_batches_before_the_reply_ends(store, monkeypatch):
    monkeypatch.setattr(recorder_module, "FLUSH_SECONDS", 3600.0)  # only the delta count flushes
    sid = store.create_session("s")
    rec = store.begin_reply(sid, role="reasoner", model="m")
    other = sqlite3.connect(store.path)  # what another process would see

    def on_disk() -> str:
        return other.execute("SELECT thinking FROM messages WHERE id = ?", (rec.message_id,)).fetchone()[0]

    for i in range(recorder_module.FLUSH_DELTAS - 1):
        rec.add(ThinkingDelta("x"))
    assert on_disk() == ""
    rec.add(ThinkingDelta("x"))
    assert on_disk() == "x" * recorder_module.FLUSH_DELTAS
    rec.add(ThinkingDelta("y"))
    assert on_disk() == "x" * recorder_module.FLUSH_DELTAS
    monkeypatch.setattr(recorder_module, "FLUSH_SECONDS", 0.0)  # now time says flush
    rec.add(ThinkingDelta("z"))
    assert on_disk().endswith("yz")
    assert store.messages(sid)[0].status == "streaming"
    rec.finish()
    assert other.execute("SELECT status FROM messages").fetchone()[0] == "done"


def test_handoffs_and_applied_change_sets_are_recorded(store):
    sid = store.create_session("s")
    plan = store.begin_reply(sid, role="reasoner", model="r1")
    plan.add(AnswerDelta("1. do it"))
    plan.finish()
    code = store.begin_reply(sid, role="coder", model="coder", handoff_from=plan.message_id)
    code.add(AnswerDelta("diff"))
    code.finish()
    store.record_applied(code.message_id, "2 files changed")
    store.record_applied(code.message_id, "1 file changed")
    p, c = store.messages(sid)
    assert p.handoff_from is None and p.applied == ()
    assert c.handoff_from == plan.message_id
    assert c.applied == ("2 files changed", "1 file changed")
    assert store.applied_plan_ids() == {plan.message_id, code.message_id}


def test_sessions_list_newest_first_rename_and_delete(store):
    a = store.create_session("first")
    b = store.create_session("second")
    assert store.last_session_id() == b
    store.add_user_message(a, "back to the first")
    assert [s.id for s in store.list_sessions()] == [a, b]
    assert store.last_session_id() == a
    store.rename(b, "renamed")
    assert store.session(b).title == "renamed"
    rec = store.begin_reply(a, role="reasoner", model="m")
    rec.finish()
    store.record_applied(rec.message_id, "x")
    store.delete(a)
    assert [s.id for s in store.list_sessions()] == [b]
    assert store.messages(a) == []
    assert store.applied_plan_ids() == set()
    assert store.last_session_id() == b
    with pytest.raises(KeyError):
        store.rename(a, "gone")
    with pytest.raises(KeyError):
        store.add_user_message(a, "to a deleted session")


def test_markdown_export_folds_thinking_into_details_blocks(store):
    sid = store.create_session("Plan a cache")
    store.add_user_message(sid, "How should I cache?", files=["cache.py"])
    rec = store.begin_reply(sid, role="reasoner", model="r1", intent="plan")
    rec.add(ThinkingDelta("Weigh LRU </details> against TTL."))
    rec.add(AnswerDelta("Use an **LRU**."))
    rec.finish()
    store.record_applied(rec.message_id, "cache.py edited")
    md = store.export_markdown(sid)
    assert md.startswith("# Plan a cache\n")
    assert "## You\n\nFiles: `cache.py`\n\nHow should I cache?" in md
    assert "## Reasoner · r1 · plan" in md
    assert "<details>\n<summary>Thinking</summary>\n\nWeigh LRU &lt;/details> against TTL.\n\n</details>" in md
    assert md.count("</details>") == 1  # the model's tag cannot close the block early
    assert md.index("</details>") < md.index("Use an **LRU**.")
    assert "> Applied: cache.py edited" in md
    with pytest.raises(KeyError):
        store.export_markdown(sid + 1)
