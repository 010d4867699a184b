"""ReplyRecorder: an assistant reply written to the database while it streams."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from app.backends.events import AnswerDelta, Done, Failed, ThinkingDelta, Usage

if TYPE_CHECKING:
    from app.store.sessions import SessionStore

FLUSH_SECONDS = 0.5  # a kill -9 loses at most this much streamed text ...
FLUSH_DELTAS = 200  # ... or this many deltas, whichever comes first


class ReplyRecorder:
    """Feed it backend events with ``add``; call ``finish`` once at the end.

    Text is appended in batches, so a crash loses at most the last unflushed batch.
    Usable as a context manager: an exception inside finishes the reply as "failed".
    """

    def __init__(self, store: SessionStore, message_id: int, session_id: int):
        self._store = store
        self.message_id = message_id
        self.session_id = session_id
        self._thinking_parts: list[str] = []  # everything seen so far, flushed or not
        self._answer_parts: list[str] = []
        self.status = "streaming"
        self._thinking_pending: list[str] = []
        self._answer_pending: list[str] = []
        self._pending = 0
        self._thinking_deltas = 0
        self._last_flush = time.monotonic()
        self._usage: Usage | None = None
        self._done: Done | None = None
        self._failed: Failed | None = None

    def add(self, event) -> None:
        if isinstance(event, ThinkingDelta):
            if not event.text:
                return
            self._thinking_parts.append(event.text)
            self._thinking_pending.append(event.text)
            self._thinking_deltas += 1
            self._pending += 1
        elif isinstance(event, AnswerDelta):
            if not event.text:
                return
            self._answer_parts.append(event.text)
            self._answer_pending.append(event.text)
            self._pending += 1
        elif isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Done):
            self._done = event
        elif isinstance(event, Failed):
            self._failed = event
        else:
            raise TypeError(f"not a backend event: {event!r}")
        if self._pending >= FLUSH_DELTAS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    @property
    def thinking(self) -> str:
        return "".join(self._thinking_parts)

    @property
    def answer(self) -> str:
        return "".join(self._answer_parts)

    def flush(self) -> None:
        """Append the pending text to the row now."""
        if self.status != "streaming":
            return
        self._write(None, None)

    def finish(self, status: str | None = None, error: str | None = None) -> None:
        """Close the reply: done|failed|cancelled. Without a status the events decide:
        a Failed event means "failed", Done(finish_reason="cancelled") means "cancelled"."""
        if self.status != "streaming":
            return
        if status is None:
            if self._failed is not None:
                status = "failed"
            elif self._done is not None and self._done.finish_reason == "cancelled":
                status = "cancelled"
            else:
                status = "done"
        if status not in ("done", "failed", "cancelled"):
            raise ValueError(f"finish status must be done, failed or cancelled, not {status!r}")
        if error is None and self._failed is not None:
            error = self._failed.message
        self._write(status, error)
        self.status = status

    def _write(self, status: str | None, error: str | None) -> None:
        thinking, answer = "".join(self._thinking_pending), "".join(self._answer_pending)
        usage, done = self._usage, self._done
        now = time.time()
        sql = """UPDATE messages SET thinking = thinking || ?, answer = answer || ?,
                   thinking_deltas = ?, prompt_tokens = ?, completion_tokens = ?,
                   first_token_s = ?, total_s = ?, finish_reason = ?, heartbeat = ?"""
        params: list = [
            thinking, answer, self._thinking_deltas,
            usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
            done.first_token_s if done else None, done.total_s if done else None,
            done.finish_reason if done else None, now,
        ]
        if status is not None:
            sql += ", status = ?, error = ?, finished = ?"
            params += [status, error, now]
        # only while still streaming: never resurrect a row another process marked interrupted
        sql += " WHERE id = ? AND status = 'streaming'"
        params.append(self.message_id)
        with self._store._write() as db:
            db.execute(sql, params)
            if status is not None:
                db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, self.session_id))
        self._thinking_pending.clear()
        self._answer_pending.clear()
        self._pending = 0
        self._last_flush = time.monotonic()

    def __enter__(self) -> ReplyRecorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.finish()
        elif isinstance(exc, KeyboardInterrupt):
            self.finish("cancelled")
        else:
            self.finish("failed", f"{type(exc).__name__}: {exc}")
