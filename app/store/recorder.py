"""ReplyRecorder: an assistant reply written to the database while it streams."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from vocab.events import AnswerDelta, Tally, ThinkingDelta

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
        self._tally = Tally()  # everything seen so far, flushed or not
        self.status = "streaming"
        self._thinking_pending: list[str] = []
        self._answer_pending: list[str] = []
        self._pending = 0
        self._thinking_deltas = 0
        self._last_flush = time.monotonic()

    def add(self, event) -> None:
        if isinstance(event, (ThinkingDelta, AnswerDelta)) and not event.text:
            return
        self._tally.add(event)  # raises TypeError for anything that is not an event
        if isinstance(event, ThinkingDelta):
            self._thinking_pending.append(event.text)
            self._thinking_deltas += 1
            self._pending += 1
        elif isinstance(event, AnswerDelta):
            self._answer_pending.append(event.text)
            self._pending += 1
        if self._pending >= FLUSH_DELTAS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    @property
    def thinking(self) -> str:
        return self._tally.thinking

    @property
    def answer(self) -> str:
        return self._tally.answer

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
            status = "done" if self._tally.status == "streaming" else self._tally.status
        if status not in ("done", "failed", "cancelled"):
            raise ValueError(f"finish status must be done, failed or cancelled, not {status!r}")
        if error is None and self._tally.failed is not None:
            error = self._tally.failed.message
        self._write(status, error)
        self.status = status

    def _write(self, status: str | None, error: str | None) -> None:
        thinking, answer = "".join(self._thinking_pending), "".join(self._answer_pending)
        usage, done = self._tally.usage, self._tally.done
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
