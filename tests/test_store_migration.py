"""Older databases are migrated forward; corrupt and newer ones are kept, never overwritten."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from vocab.events import AnswerDelta
from app.paths import data_dir
from app.store import SessionStore
from app.store.schema import VERSION

# The v1 schema as the first release wrote it, typed out here rather than imported.
V1 = """
CREATE TABLE sessions (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL,
                       updated REAL NOT NULL);
CREATE TABLE messages (id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    kind TEXT NOT NULL, role TEXT NOT NULL, model TEXT NOT NULL DEFAULT '',
    thinking TEXT NOT NULL DEFAULT '', answer TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'done', created REAL NOT NULL);
CREATE INDEX messages_by_session ON messages(session_id, id);
INSERT INTO sessions VALUES (1, 'old session', 1700000000, 1700000100);
INSERT INTO messages VALUES (1, 1, 'user', 'user', '', '', 'explain the borrow checker', 'done', 1700000000);
INSERT INTO messages VALUES (2, 1, 'assistant', 'reasoner', 'r1', 'ownership first', 'Each value has one owner.', 'done', 1700000050);
INSERT INTO messages VALUES (3, 1, 'assistant', 'reasoner', 'r1', 'half a tho', '', 'streaming', 1700000100);
PRAGMA user_version = 1;
"""


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_v1_database_is_migrated_with_its_sessions_intact():
    path = data_dir() / "sessions.db"
    db = sqlite3.connect(path)
    db.executescript(V1)
    db.close()

    with SessionStore.open() as store:
        assert store.warning is None and store.path == str(path)
        [info] = store.list_sessions()
        assert (info.id, info.title, info.created, info.workspace, info.message_count) == (
            1, "old session", 1700000000, "", 3)
        user, answer, unfinished = store.messages(1)
        assert (user.text, user.files, user.usage, user.author) == ("explain the borrow checker", [], None, "you")
        assert (answer.thinking, answer.answer, answer.status, answer.prompt) == (
            "ownership first", "Each value has one owner.", "done", "")
        assert (unfinished.thinking, unfinished.status) == ("half a tho", "interrupted")
        assert [h.message_id for h in store.search("borrow")] == [1]  # old text is searchable
        assert [h.message_id for h in store.search("half a tho")] == [3]
        rec = store.begin_reply(1, role="coder", model="c", handoff_from=2)  # new features work
        rec.add(AnswerDelta("code"))
        rec.finish()
        assert store.messages(1)[-1].handoff_from == 2
        mid = store.add_user_message(1, "add failed: fix it", author="duet → coder · test fix 1 of 2")
        assert store.message(mid).author == "duet → coder · test fix 1 of 2"
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == VERSION


def test_a_database_from_a_newer_duet_is_left_untouched_and_a_compatible_one_used_beside_it():
    path = data_dir() / "sessions.db"
    db = sqlite3.connect(path)
    db.executescript(f"CREATE TABLE future (x); INSERT INTO future VALUES (42); PRAGMA user_version = {VERSION + 3};")
    db.close()
    before = _digest(path)

    with SessionStore.open() as store:
        assert "newer" in store.warning and f"v{VERSION + 3}" in store.warning
        assert "\n" not in store.warning
        assert store.path != str(path)
        sid = store.create_session("kept beside")
    assert _digest(path) == before
    with SessionStore.open() as again:  # the same fallback next time, with its sessions
        assert again.warning is not None
        assert [s.id for s in again.list_sessions()] == [sid]
    assert _digest(path) == before


def _garbage(path):
    path.write_bytes(b"this is not a database, just notes\n" * 500)


def _damaged_schema(path):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xa5" * (4096 - 100)  # the schema page after the header
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("spoil", [_garbage, _damaged_schema], ids=["garbage", "damaged-schema"])
def test_a_corrupt_database_is_kept_aside_with_a_warning_and_a_fresh_one_started(spoil):
    path = data_dir() / "sessions.db"
    spoil(path)
    before = _digest(path)

    with SessionStore.open() as store:
        assert store.warning and "damaged" in store.warning and "\n" not in store.warning
        assert store.path == str(path)
        sid = store.create_session("fresh")
    [kept] = [p for p in path.parent.iterdir() if p.name.startswith("sessions.db.corrupt-")]
    assert _digest(kept) == before
    assert kept.name in store.warning
    with SessionStore.open() as again:
        assert again.warning is None
        assert [s.id for s in again.list_sessions()] == [sid]


def test_an_unopenable_database_path_is_a_one_line_error_naming_it():
    from app.errors import DuetError

    (data_dir() / "sessions.db").mkdir()
    with pytest.raises(DuetError) as caught:
        SessionStore.open()
    assert "sessions.db" in str(caught.value) and "\n" not in str(caught.value)
