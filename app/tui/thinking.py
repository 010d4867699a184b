"""The thinking pane: the reasoner's trace, live while it streams, beside the conversation."""

from __future__ import annotations

import asyncio

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Markdown, Static

from app.tui.literal import trace_markdown


class ThinkingPane(VerticalScroll):
    """Streams one trace at a time through a MarkdownStream; the chat screen follows it
    only while the user is at the bottom."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._stream = None
        self._reset = False  # begin() was called: clear the Markdown before the next write
        self.text = ""

    def compose(self) -> ComposeResult:
        yield Static("thinking", classes="pane-title", markup=False)
        yield Markdown("", classes="pane-trace", open_links=False)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(".pane-trace", Markdown)

    def begin(self, title: str) -> None:
        """A new trace starts (synchronous, so no delta can slip in before it)."""
        self.text = ""
        self._reset = True
        self.query_one(".pane-title", Static).update(title)

    async def _start(self) -> None:
        self._reset = False
        await self._stop()
        await self.markdown.update("")
        self._stream = Markdown.get_stream(self.markdown)
        self.anchor(False)
        self.scroll_home(animate=False)

    async def write(self, text: str) -> None:
        if self._reset:
            await self._start()
        self.text += text
        if self._stream is not None:
            await self._stream.write(text)

    async def end(self) -> None:
        """Stop streaming and render the whole trace once (fences never go blank)."""
        if self._reset:  # the reply brought no thinking at all
            self._reset = False
            await self._stop()
            await self.markdown.update("")
            return
        if self._stream is not None:
            await self._stop()
            await self.markdown.update(trace_markdown(self.text))

    async def _stop(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stop_stream(stream)

    async def show(self, title: str, text: str) -> None:
        """Show a finished trace (a selected or resumed message)."""
        self._reset = False
        await self._stop()
        self.text = text
        self.query_one(".pane-title", Static).update(title)
        self.anchor(False)
        await self.markdown.update(trace_markdown(text))
        self.scroll_home(animate=False)


async def stop_stream(stream) -> None:
    """Stop a MarkdownStream safely: let its task start first (cancelling a task that never
    ran would raise CancelledError into the caller), then stop it."""
    await asyncio.sleep(0)
    await stream.stop()
