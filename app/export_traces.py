"""`duet export-traces`: saved reasoner turns as a JSONL distillation dataset.

One line per finished reasoner turn:
  --format fields    {"prompt", "reasoning", "answer", "model", "reasoning_tokens", "applied",
                      "session_id", "message_id", "created"}
  --format messages  {"messages": [{"role": "user", ...}, {"role": "assistant",
                      "content": "<think>\\n…\\n</think>\\n\\n…"}], "model"}  (R1 distillation layout)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

from app.errors import UsageError
from app.store import SessionStore, StoredMessage


def reasoning_tokens(m: StoredMessage) -> int:
    """Tokens of reasoning: the completion count split by the share of text that was thinking,
    or, without a usage report, the number of streamed thinking deltas (about one per token)."""
    completion = (m.usage or {}).get("completion_tokens")
    chars = len(m.thinking) + len(m.answer)
    if completion and chars:
        return round(completion * len(m.thinking) / chars)
    return m.thinking_deltas


def think_content(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def collect(store: SessionStore, *, since: float | None = None, min_reasoning_tokens: int = 0,
            only_applied: bool = False) -> list[dict]:
    """The turns to export as "fields" records, oldest first."""
    applied = store.applied_plan_ids()
    records = []
    for session in store.list_sessions():
        last_user = ""
        for m in store.messages(session.id):
            if m.kind == "user":
                last_user = m.answer
                continue
            if m.role != "reasoner" or m.status != "done" or not m.answer.strip():
                continue
            if since is not None and m.created < since:
                continue
            tokens = reasoning_tokens(m)
            if tokens < min_reasoning_tokens or (only_applied and m.id not in applied):
                continue
            records.append({
                "prompt": m.prompt or last_user,
                "reasoning": m.thinking,
                "answer": m.answer,
                "model": m.model,
                "reasoning_tokens": tokens,
                "applied": m.id in applied,
                "session_id": session.id,
                "message_id": m.id,
                "created": dt.datetime.fromtimestamp(m.created).isoformat(timespec="seconds"),
            })
    records.sort(key=lambda r: (r["created"], r["message_id"]))
    return records


def as_messages(record: dict) -> dict:
    return {
        "messages": [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": think_content(record["reasoning"], record["answer"])},
        ],
        "model": record["model"],
    }


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").timestamp()  # local midnight
    except ValueError:
        raise UsageError(f"--since: expected a date as YYYY-MM-DD, got {text!r}") from None


def run_export(args) -> int:
    since = _since(args.since)
    if args.min_reasoning_tokens < 0:
        raise UsageError(f"--min-reasoning-tokens: must be 0 or more, got {args.min_reasoning_tokens}")
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UsageError(f"--out: {out} is a directory")
    if not out.parent.is_dir():
        problem = "is not a folder" if out.parent.exists() else "does not exist"
        raise UsageError(f"--out: folder {out.parent} {problem}")
    with SessionStore.open() as store:
        if store.warning:
            print(f"duet: {store.warning}", file=sys.stderr)
        records = collect(store, since=since, min_reasoning_tokens=args.min_reasoning_tokens,
                          only_applied=args.only_applied)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    except OSError as exc:
        raise UsageError(f"--out: cannot write {out} ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                line = as_messages(record) if args.format == "messages" else record
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a read-only target
            raise UsageError(f"--out: cannot write {out} ({exc.strerror or exc})") from None
        raise
    print(f"wrote {len(records)} reasoner turn{'s' if len(records) != 1 else ''} to {out}")
    return 0
