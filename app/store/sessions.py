"""SessionStore: every turn of every session in one SQLite file under the data dir.

Several Duet processes may share the file (WAL, busy timeout, short write transactions).
A corrupt or newer-version file is never overwritten: it is kept, ``store.warning`` says
what happened, and a fresh database is used beside it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from app.errors import DuetError
from app.store import writers
from app.store.recorder import ReplyRecorder
from app.store.schema import MIGRATIONS, VERSION

BUSY_TIMEOUT_MS = 10_000
_BROKEN = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


@dataclass(frozen=True)
class SessionInfo:
    id: int
    title: str
    created: float  # unix seconds
    updated: float
    message_count: int
    workspace: str = ""


@dataclass(frozen=True)
class StoredMessage:
    id: int
    role: str  # "user" | "reasoner" | "coder"
    kind: str  # "user" | "assistant"
    model: str
    intent: str
    why: str
    thinking: str
    answer: str  # a user message's text is its answer
    status: str  # done | failed | cancelled | streaming | interrupted
    files: list[str]
    usage: dict | None  # {"prompt_tokens", "completion_tokens"}
    timings: dict | None  # {"first_token_s", "total_s"}
    created: float
    prompt: str = ""  # the full user-message text sent to the model
    error: str | None = None
    handoff_from: int | None = None  # the plan message that fed this coder turn
    applied: tuple[str, ...] = ()  # summaries of change sets applied from this reply
    session_id: int = 0
    thinking_deltas: int = 0
    author: str = "you"  # who asked (a user-kind message): "you", or Duet's own rounds ("duet → coder · …")

    @property
    def text(self) -> str:
        return self.answer


@dataclass(frozen=True)
class TestRun:
    """One run of the user's test command after an apply."""

    __test__ = False  # not a pytest class

    id: int
    message_id: int | None  # the coder reply whose edits were tested
    round: int
    command: str
    exit_code: int | None
    status: str  # passed | failed | timeout | cancelled | error
    output: str
    created: float


@dataclass(frozen=True)
class SearchHit:
    session_id: int
    session_title: str
    message_id: int
    kind: str
    role: str
    snippet: str
    created: float


class _NewerSchema(Exception):
    def __init__(self, version: int):
        self.version = version


def _broken(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _BROKEN


def _connect(path: str) -> sqlite3.Connection:
    """Open, check and migrate; raises _NewerSchema or sqlite3.DatabaseError."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys = ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise _NewerSchema(version)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the schema pages
        if path != ":memory:":
            _retry_locked(lambda: db.execute("PRAGMA journal_mode = WAL").fetchone())
            db.execute("PRAGMA synchronous = NORMAL")
        if version < VERSION:
            _migrate(db)
        return db
    except BaseException:
        db.close()
        raise


def _retry_locked(fn, tries: int = 50):
    for i in range(tries):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or i == tries - 1:
                raise
            time.sleep(0.1)


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise _NewerSchema(version)
        for step in MIGRATIONS[version:]:
            for statement in step:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _set_aside(path: Path) -> Path:
    """Move a broken database (and its -wal/-shm) to a name beside it; returns the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            os.replace(extra, target.with_name(target.name + suffix))
    return target


class SessionStore:
    """Sessions, messages, hand-offs and applied change sets. Thread-safe within a process."""

    def __init__(self, db: sqlite3.Connection, path: str, warning: str | None = None):
        self._db = db
        self._lock = threading.RLock()
        self.path = path
        self.warning = warning

    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> SessionStore:
        """The store at ``path`` (default: data_dir()/sessions.db), created or migrated."""
        if path is None:
            from app.paths import data_dir

            path = data_dir() / "sessions.db"
        if str(path) == ":memory:":
            return cls(_connect(":memory:"), ":memory:")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            store = cls(_connect(str(path)), str(path))
        except _NewerSchema as exc:
            # Leave it untouched for the newer Duet that wrote it; use a compatible file beside it.
            beside = path.with_name(f"{path.stem}.compat-v{VERSION}{path.suffix}")
            warning = (f"{path} was written by a newer Duet (schema v{exc.version}, this one reads "
                       f"v{VERSION}); left untouched, using {beside.name}")
            store = cls._fallback(beside, warning)
        except sqlite3.DatabaseError as exc:
            if not _broken(exc):
                raise DuetError(f"{path}: cannot open the session database: {exc}") from None
            kept = _set_aside(path)
            warning = f"{path} is damaged ({exc}); kept as {kept.name}, starting a fresh one"
            store = cls._fallback(path, warning)
        store.recover()
        return store

    @classmethod
    def _fallback(cls, path: Path, warning: str) -> SessionStore:
        try:
            return cls(_connect(str(path)), str(path), warning)
        except (sqlite3.DatabaseError, _NewerSchema):
            return cls(_connect(":memory:"), ":memory:", f"{warning}; {path.name} is unusable too, "
                       "so this session is not saved")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken up front so concurrent writers queue, not fail."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # sessions

    def create_session(self, title: str, workspace: str = "") -> int:
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO sessions(title, workspace, created, updated) VALUES (?, ?, ?, ?)",
                (title, workspace, now, now))
            return cur.lastrowid

    def rename(self, sid: int, title: str) -> None:
        with self._write() as db:
            if db.execute("UPDATE sessions SET title = ? WHERE id = ?", (title, sid)).rowcount == 0:
                raise KeyError(f"no session {sid}")

    def delete(self, sid: int) -> None:
        """Delete a session with its messages, hand-offs and applied records."""
        with self._write() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (sid,))

    def list_sessions(self) -> list[SessionInfo]:
        """Most recently updated first."""
        rows = self._read(
            """SELECT s.id, s.title, s.created, s.updated, count(m.id), s.workspace
               FROM sessions s LEFT JOIN messages m ON m.session_id = s.id
               GROUP BY s.id ORDER BY s.updated DESC, s.id DESC""")
        return [SessionInfo(*row) for row in rows]

    def session(self, sid: int) -> SessionInfo | None:
        return next((s for s in self.list_sessions() if s.id == sid), None)

    def last_session_id(self) -> int | None:
        rows = self._read("SELECT id FROM sessions ORDER BY updated DESC, id DESC LIMIT 1")
        return rows[0][0] if rows else None

    # messages

    def add_user_message(self, sid: int, text: str, *, files: list[str] = (), author: str = "you") -> int:
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                """INSERT INTO messages(session_id, kind, role, answer, status, files, created, finished, author)
                   SELECT id, 'user', 'user', ?, 'done', ?, ?, ?, ? FROM sessions WHERE id = ?""",
                (text, json.dumps(list(files)), now, now, author, sid))
            if cur.rowcount == 0:
                raise KeyError(f"no session {sid}")
            db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, sid))
            return cur.lastrowid

    def begin_reply(self, sid: int, *, role: str, model: str, intent: str = "", why: str = "",
                    prompt: str = "", handoff_from: int | None = None,
                    files: list[str] = ()) -> ReplyRecorder:
        """Start an assistant reply; its text is saved while it streams."""
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                """INSERT INTO messages(session_id, kind, role, model, intent, why, prompt, files,
                     status, created, writer_host, writer_pid, writer_start, heartbeat)
                   SELECT id, 'assistant', ?, ?, ?, ?, ?, ?, 'streaming', ?, ?, ?, ?, ? FROM sessions WHERE id = ?""",
                (role, model, intent, why, prompt, json.dumps(list(files)), now,
                 writers.HOST, os.getpid(), writers.MY_START, now, sid))
            if cur.rowcount == 0:
                raise KeyError(f"no session {sid}")
            mid = cur.lastrowid
            if handoff_from is not None:
                db.execute("INSERT INTO handoffs(coder_message_id, plan_message_id) VALUES (?, ?)",
                           (mid, handoff_from))
            db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, sid))
        return ReplyRecorder(self, mid, sid)

    def record_applied(self, message_id: int, summary: str) -> None:
        """A change set from this reply was applied to the workspace."""
        with self._write() as db:
            db.execute("INSERT INTO applied(message_id, summary, created) VALUES (?, ?, ?)",
                       (message_id, summary, time.time()))

    def record_test(self, sid: int, *, message_id: int | None, round: int, command: str, exit_code: int | None,
                    status: str, output: str) -> int:
        """One verification round: the user's test command after an apply, and how it ended."""
        with self._write() as db:
            cur = db.execute(
                """INSERT INTO test_runs(session_id, message_id, round, command, exit_code, status, output, created)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (sid, message_id, round, command, exit_code, status, output, time.time()))
            return cur.lastrowid

    def test_runs(self, sid: int) -> list[TestRun]:
        rows = self._read("""SELECT id, message_id, round, command, exit_code, status, output, created
                             FROM test_runs WHERE session_id = ? ORDER BY id""", (sid,))
        return [TestRun(*row) for row in rows]

    def rewind(self, sid: int, message_id: int) -> int:
        """Drop message ``message_id`` and everything after it in session ``sid`` (the conversation
        goes back to before it; files are not touched). Returns how many messages went."""
        with self._write() as db:
            cur = db.execute("DELETE FROM messages WHERE session_id = ? AND id >= ?", (sid, message_id))
            db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), sid))
            return cur.rowcount

    def messages(self, sid: int) -> list[StoredMessage]:
        """The session's messages in order; replies whose writer died read as "interrupted"."""
        self.recover(sid)
        return self._messages("m.session_id = ?", (sid,))

    def message(self, message_id: int) -> StoredMessage | None:
        found = self._messages("m.id = ?", (message_id,))
        return found[0] if found else None

    def applied_plan_ids(self) -> set[int]:
        """Replies applied directly, and plans whose hand-off to the coder was applied."""
        rows = self._read(
            """SELECT message_id FROM applied
               UNION SELECT h.plan_message_id FROM handoffs h JOIN applied a ON a.message_id = h.coder_message_id""")
        return {r[0] for r in rows}

    def _messages(self, where: str, params) -> list[StoredMessage]:
        rows = self._read(
            f"""SELECT m.id, m.role, m.kind, m.model, m.intent, m.why, m.thinking, m.answer, m.status,
                  m.files, m.prompt_tokens, m.completion_tokens, m.first_token_s, m.total_s, m.created,
                  m.prompt, m.error, h.plan_message_id,
                  (SELECT json_group_array(summary) FROM (SELECT summary FROM applied a
                     WHERE a.message_id = m.id ORDER BY a.id)),
                  m.session_id, m.thinking_deltas, m.author
                FROM messages m LEFT JOIN handoffs h ON h.coder_message_id = m.id
                WHERE {where} ORDER BY m.id""", params)
        out = []
        for (mid, role, kind, model, intent, why, thinking, answer, status, files, ptok, ctok,
             first, total, created, prompt, error, handoff, applied, session_id, deltas, author) in rows:
            usage = None if ptok is None and ctok is None else {
                "prompt_tokens": ptok, "completion_tokens": ctok}
            timings = None if first is None and total is None else {
                "first_token_s": first, "total_s": total}
            out.append(StoredMessage(
                mid, role, kind, model, intent, why, thinking, answer, status, json.loads(files),
                usage, timings, created, prompt, error, handoff, tuple(json.loads(applied)),
                session_id, deltas, author))
        return out

    def recover(self, sid: int | None = None) -> list[int]:
        """Mark replies whose writing process is gone as "interrupted"; returns their ids."""
        where, params = "status = 'streaming'", ()
        if sid is not None:
            where, params = "status = 'streaming' AND session_id = ?", (sid,)
        rows = self._read(
            f"SELECT id, writer_host, writer_pid, writer_start, heartbeat FROM messages WHERE {where}", params)
        dead = [r[0] for r in rows if not writers.writer_alive(*r[1:])]
        if dead:
            with self._write() as db:
                for mid in dead:
                    db.execute(
                        "UPDATE messages SET status = 'interrupted', finished = ? WHERE id = ? AND status = 'streaming'",
                        (time.time(), mid))
        return dead

    # search and export

    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        """Messages containing every whitespace-separated term (any script, case-insensitive
        for Latin letters), newest first."""
        terms = query.split()
        if not terms:
            return []
        long_terms = [t for t in terms if len(t) >= 3]
        conditions, params = [], []
        if long_terms:  # trigram index
            conditions.append("message_fts MATCH ?")
            params.append(" AND ".join('"' + t.replace('"', '""') + '"' for t in long_terms))
        for t in terms:
            if len(t) < 3:  # too short for a trigram: scan
                conditions.append("instr(lower(f.body), ?) > 0")
                params.append(t.lower())
        rows = self._read(
            f"""SELECT m.session_id, s.title, m.id, m.kind, m.role, f.body, m.created
                FROM message_fts f JOIN messages m ON m.id = f.rowid JOIN sessions s ON s.id = m.session_id
                WHERE {' AND '.join(conditions)} ORDER BY m.created DESC, m.id DESC LIMIT ?""",
            (*params, limit))
        return [SearchHit(sid, title, mid, kind, role, _snippet(body, terms), created)
                for sid, title, mid, kind, role, body, created in rows]

    def export_markdown(self, sid: int) -> str:
        from app.store.markdown import session_markdown

        info = self.session(sid)
        if info is None:
            raise KeyError(f"no session {sid}")
        return session_markdown(info, self.messages(sid))


def _snippet(body: str, terms: list[str], width: int = 60) -> str:
    low = body.lower()
    at = min((i for i in (low.find(t.lower()) for t in terms) if i >= 0), default=0)
    start = max(0, at - width)
    text = " ".join(body[start : at + width * 2].split())
    return ("…" if start else "") + text + ("…" if at + width * 2 < len(body) else "")
