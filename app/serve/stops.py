"""Stop sequences cut out of a text stream, wherever the deltas happen to break.

The model's text arrives in pieces of any size; a stop sequence may start in one piece and
end in another. `StopCutter` passes on only text that cannot be the start of a stop
sequence, holds the rest until the next piece decides it, and cuts at the earliest match.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopCutter:
    """Feed text with ``feed``; ``hit`` turns true at the first stop sequence; ``flush`` at the end."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = tuple(s for s in stops if s)
        self.hit = False
        self._held = ""  # the end of the text so far that may be the start of a stop sequence

    def feed(self, text: str) -> str:
        """The text now safe to pass on: everything before a stop sequence, or before a possible one."""
        if self.hit:
            return ""
        if not self.stops:
            return text
        text = self._held + text
        found = [(i + len(s), i) for s, i in ((s, text.find(s)) for s in self.stops) if i >= 0]
        if found:  # the stop sequence completed first, as if the text came one character at a time
            self.hit = True
            self._held = ""
            return text[: min(found)[1]]
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep:]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held text: the stream ended without completing a stop sequence."""
        rest, self._held = ("" if self.hit else self._held), ""
        return rest

    def _partial_tail(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop sequence."""
        longest = max(len(s) for s in self.stops) - 1
        for n in range(min(longest, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
