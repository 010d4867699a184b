"""The prompt editor: multi-line, Enter sends, Ctrl+J (or Shift+Enter) inserts a newline,
Up/Down walk the history from the first/last line, Tab completes a /prefix."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

PREFIXES = {
    "/plan": "reasoner: design a plan",
    "/design": "reasoner: design",
    "/review": "reasoner: review the files in context (or the uncommitted diff)",
    "/think": "reasoner",
    "/code": "coder (carries the last plan)",
    "/edit": "coder: change existing code",
    "/test": "run the test command (/test CMD sets it)",
    "/rewind": "forget the last request (/rewind N: the last N)",
    "/undo": "undo the last applied change",
    "/replan": "undo the last plan's change; ask the reasoner for another, told what failed",
}
NEWLINE_KEYS = ("ctrl+j", "shift+enter")


def complete(text: str) -> str | None:
    """The completion of a lone /prefix being typed, or None."""
    if not text.startswith("/") or " " in text or "\n" in text:
        return None
    matches = sorted(p for p in PREFIXES if p.startswith(text) and p != text)
    if not matches:
        return None
    common = matches[0]
    for m in matches[1:]:
        while not m.startswith(common):
            common = common[:-1]
    if len(matches) == 1:
        return matches[0] + " "
    return common if len(common) > len(text) else None


class PromptInput(TextArea):
    """Posts `PromptInput.Submitted` with the text on Enter."""

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    def __init__(self, **kw):
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kw)
        self.sent: list[str] = []
        self._history_at: int | None = None  # index into history while browsing
        self._draft = ""

    async def _on_key(self, event: events.Key) -> None:
        key = event.key
        if key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text
            if text.strip():
                self.remember(text)
                self.post_message(self.Submitted(text))
            return
        if key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        if key == "tab":
            done = complete(self.text)
            if done is not None:
                event.stop()
                event.prevent_default()
                self.text = done
                self.move_cursor(self.document.end)
                return
        if key == "up" and self.cursor_location[0] == 0 and self.sent:
            event.stop()
            event.prevent_default()
            self._browse(-1)
            return
        if key == "down" and self._history_at is not None and self.cursor_location[0] == self.document.line_count - 1:
            event.stop()
            event.prevent_default()
            self._browse(+1)
            return
        await super()._on_key(event)

    def remember(self, text: str) -> None:
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
        self._history_at = None

    def _browse(self, step: int) -> None:
        if self._history_at is None:
            if step > 0:
                return
            self._draft = self.text
            at = len(self.sent) - 1
        else:
            at = self._history_at + step
        if at < 0:
            return
        if at >= len(self.sent):
            self._history_at = None
            self.text = self._draft
        else:
            self._history_at = at
            self.text = self.sent[at]
        self.move_cursor(self.document.end)
