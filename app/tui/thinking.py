"""The thinking pane: the reasoner's trace, live while it streams, beside the conversation."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Markdown, Static


class ThinkingPane(VerticalScroll):
    """Streams one trace at a time; follows it only while the user is at the bottom (anchor)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._stream = None
        self.text = ""

    def compose(self) -> ComposeResult:
        yield Static("thinking", classes="pane-title", markup=False)
        yield Markdown("", classes="pane-trace", open_links=False)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(".pane-trace", Markdown)

    async def begin(self, title: str) -> None:
        await self.end()
        self.text = ""
        self.query_one(".pane-title", Static).update(title)
        await self.markdown.update("")
        self._stream = Markdown.get_stream(self.markdown)
        self.scroll_home(animate=False)

    async def write(self, text: str) -> None:
        self.text += text
        if self._stream is not None:
            await self._stream.write(text)

    async def end(self) -> None:
        """Stop streaming and render the whole trace once (fences never go blank)."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.stop()
            await self.markdown.update(self.text)

    async def show(self, title: str, text: str) -> None:
        """Show a finished trace (a selected or resumed message)."""
        await self.end()
        self.text = text
        self.query_one(".pane-title", Static).update(title)
        await self.markdown.update(text)
