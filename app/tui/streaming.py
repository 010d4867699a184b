"""From a worker thread to the widgets: events are buffered, the UI drains them on a timer.

The thread that reads the backend never waits for the UI: it appends events to an
`EventBuffer`; the chat screen drains the buffer ``DRAIN_HZ`` times a second and hands the
widgets one merged chunk of thinking and one of answer per drain. That keeps the number of
Markdown appends bounded by time, not by tokens, so long answers stay smooth.

Each drain costs the UI thread a layout and a compositor pass, and a local model decodes on a
thread of the same process, so that work is taken from the model: the demo reasoner decoded
on screen at 593 / 760 tok/s with 30 drains a second, 985 / 1,166 with 12, against 1,331 /
1,581 with no view (`python bench/tui_bench.py --demo --runs 2`, two runs). Twelve appends a
second still read as a smooth stream.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from vocab.events import AnswerDelta, ThinkingDelta

DRAIN_HZ = 12


@dataclass
class Chunk:
    """Consecutive deltas of one kind, merged: ``count`` deltas (about one token each)."""

    kind: str  # "thinking" | "answer"
    text: str
    count: int


class EventBuffer:
    """A thread-safe list of backend events, drained in merged form."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: list = []
        self.closed = False  # the worker put its last event

    def put(self, event) -> None:
        with self._lock:
            self._events.append(event)

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def drain(self) -> tuple[list, bool]:
        """Everything since the last drain (deltas merged into Chunks), and whether the stream is over."""
        with self._lock:
            events, self._events = self._events, []
            closed = self.closed
        return merge(events), closed


def merge(events: list) -> list:
    out: list = []
    parts: list[str] = []  # texts of the Chunk being built (out[-1])
    for event in events:
        kind = "thinking" if isinstance(event, ThinkingDelta) else "answer" if isinstance(event, AnswerDelta) else None
        if kind is None:
            _close(out, parts)
            out.append(event)
        elif not event.text:
            continue
        elif out and isinstance(out[-1], Chunk) and out[-1].kind == kind and parts:
            parts.append(event.text)
            out[-1].count += 1
        else:
            _close(out, parts)
            out.append(Chunk(kind, "", 1))
            parts.append(event.text)
    _close(out, parts)
    return out


def _close(out: list, parts: list[str]) -> None:
    if parts:
        out[-1].text = "".join(parts)
        parts.clear()


def follow(scroll) -> None:
    """Keep ``scroll`` at the bottom as content arrives, until the user scrolls up (Textual's
    anchor, released by user scrolling). Anchored only once content overflows, so short
    content stays at the top."""
    if scroll.is_anchored:
        return
    if scroll.max_scroll_y > 0:
        scroll.anchor()
    else:  # new content may not be laid out yet: look again after the next refresh
        scroll.call_after_refresh(lambda: scroll.max_scroll_y > 0 and not scroll.is_anchored and scroll.anchor())
