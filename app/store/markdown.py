"""A session as Markdown: thinking traces in collapsible <details> blocks."""

from __future__ import annotations

import re
import time

from app.store.sessions import SessionInfo, StoredMessage

_DETAILS_TAG = re.compile(r"<(/?)(details|summary)", re.IGNORECASE)


def _inert(text: str) -> str:
    """Model text must not close our <details> block early."""
    return _DETAILS_TAG.sub(r"&lt;\1\2", text)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def session_markdown(info: SessionInfo, messages: list[StoredMessage]) -> str:
    out = [f"# {info.title or 'Untitled session'}", "", f"*{_when(info.created)}*"]
    if info.workspace:
        out[-1] += f" · `{info.workspace}`"
    for m in messages:
        out.append("")
        if m.kind == "user":
            out += ["## You", ""]
            if m.files:
                out += ["Files: " + ", ".join(f"`{f}`" for f in m.files), ""]
            out.append(m.answer)
            continue
        head = f"## {m.role.capitalize()}" + (f" · {m.model}" if m.model else "")
        if m.intent:
            head += f" · {m.intent}"
        out += [head, ""]
        if m.thinking:
            out += ["<details>", "<summary>Thinking</summary>", "", _inert(m.thinking), "", "</details>", ""]
        if m.answer:
            out.append(m.answer)
        if m.status != "done":
            note = f"*({m.status}" + (f": {m.error}" if m.error else "") + ")*"
            out += ["", note]
        for summary in m.applied:
            out += ["", f"> Applied: {summary}"]
    return "\n".join(out).rstrip() + "\n"
