"""The conversation's items: the user's requests and the models' replies.

A reply streams its answer into a Markdown widget through `Markdown.get_stream()` (batched
appends, never a re-render per token) and ends with one `Markdown.update(full)` after the
stream stops, so fences never go blank. Its thinking trace streams into the thinking pane;
here it is kept collapsed to one line ("thought for 41 s · 2,310 tokens") and rendered
only when expanded. Every piece of model text goes through `visible()` and is shown with
`Content`/Markdown, never as Rich markup.
"""

from __future__ import annotations

import re
import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Markdown, Static

from app.conversation.verify import failure_summary
from app.tui.literal import answer_markdown, trace_markdown, visible
from app.tui.thinking import stop_stream

FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)


def code_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a Markdown text, in order."""
    return [m.group(2) for m in FENCE.finditer(markdown)]


def thought_line(seconds: float | None, tokens: int, *, live: bool = False, expanded: bool = False) -> str:
    arrow = "▾" if expanded else "▸"
    if live:
        return f"{arrow} thinking… {tokens:,} tokens"
    took = f"thought for {seconds:.0f} s" if seconds is not None else "thought"
    return f"{arrow} {took} · {tokens:,} token{'' if tokens == 1 else 's'}"


class UserItem(Static):
    """What the user sent (or Duet, for a retry round), with the files that were in context."""

    def __init__(self, text: str, files: list[str] = (), author: str = "you"):
        body = Content.assemble((author, "bold"), "\n", text)
        if files:
            body = Content.assemble(body, ("\n⎘ " + ", ".join(files), "dim"))
        super().__init__(body, classes="user-item", markup=False)
        self.text = text
        self.message_id: int | None = None  # its row in the session store, once recorded


class TraceSummary(Static, can_focus=False):
    """The one-line summary of a reply's thinking; a click toggles the trace."""

    class Toggle(Message):
        def __init__(self, item: ReplyItem):
            super().__init__()
            self.item = item

    def on_click(self) -> None:
        self.post_message(self.Toggle(self.parent))  # type: ignore[arg-type]


class ReplyItem(Vertical):
    """One model reply: who answered and why, the collapsed trace, the answer, figures."""

    expanded: reactive[bool] = reactive(False)

    def __init__(self, *, role: str, model: str, intent: str = "", why: str = "", context: int | None = None,
                 request: str = "", forced: bool = False):
        super().__init__(classes=f"reply-item {role}")
        self.role, self.model, self.intent, self.why = role, model, intent, why
        self.context_window = context
        self.request = request  # what the user typed, for regenerate
        self.forced = forced
        self.thinking = ""
        self.answer = ""
        self.thinking_tokens = 0
        self.answer_tokens = 0
        self.started = time.monotonic()
        self.first_token: float | None = None  # seconds after start
        self.answer_started: float | None = None
        self.usage = None
        self.status = "streaming"  # streaming | done | cancelled | failed | interrupted
        self.error: str | None = None
        self.message_id: int | None = None
        self.plan_id: int | None = None  # the plan message this reply implements
        self.total_s: float | None = None
        self.stored_think_s: float | None = None
        self._stream = None
        self._streaming = False
        self._trace_rendered = False
        self.ready = False

    def compose(self) -> ComposeResult:
        yield Static(self._header(), classes="header", markup=False)
        yield TraceSummary("", classes="trace-summary", markup=False)
        yield Markdown("", classes="trace", open_links=False)
        yield Markdown("", classes="answer", open_links=False)
        yield Static("", classes="notice", markup=False)
        yield Static("", classes="stats", markup=False)

    def on_mount(self) -> None:
        self.ready = True  # composed: its parts can be queried

    def _header(self) -> Content:
        parts = [(self.role, "bold"), " · ", (self.model, "bold")]
        if self.intent:
            parts += [" · ", self.intent]
        if self.why:
            parts += [("  — " + self.why, "dim italic")]
        return Content.assemble(*parts)

    # ---- streaming --------------------------------------------------------------------------
    def start_stream(self) -> None:
        """Answer text from now on goes through a MarkdownStream (made on the first text)."""
        self._streaming = True

    async def add(self, kind: str, text: str, count: int) -> None:
        now = time.monotonic() - self.started
        if self.first_token is None:
            self.first_token = now
        text = visible(text)
        if kind == "thinking":
            self.thinking += text
            self.thinking_tokens += count
        else:
            if self.answer_started is None:
                self.answer_started = now
            self.answer += text
            self.answer_tokens += count
            if self._stream is None and self._streaming:
                self._stream = Markdown.get_stream(self.query_one(".answer", Markdown))
            if self._stream is not None:
                await self._stream.write(text)

    def refresh_figures(self) -> None:
        """Update the trace line and the stats line (cheap; called once per drain)."""
        self._show_summary()
        self.query_one(".stats", Static).update(self.figures())

    def figures(self) -> str:
        parts = []
        if self.first_token is not None:
            parts.append(f"first token {self.first_token:.2f} s")
        tokens = self.thinking_tokens + self.answer_tokens
        if self.usage is not None:
            tokens = self.usage.completion_tokens
        end = self.total_s if self.total_s is not None else time.monotonic() - self.started
        if self.first_token is not None and end - self.first_token > 0.05 and tokens:
            parts.append(f"{tokens / (end - self.first_token):.1f} tok/s")
        used = (self.usage.prompt_tokens + self.usage.completion_tokens) if self.usage is not None else None
        if used is not None and self.context_window:
            parts.append(f"context {used:,} / {self.context_window:,} ({100 * used / self.context_window:.0f}%)")
        elif used is not None:
            parts.append(f"context {used:,} tokens")
        elif self.context_window:
            parts.append(f"window {self.context_window:,}")
        if self.usage is not None and self.usage.cached_tokens:
            parts.append(f"{self.usage.cached_tokens:,} prompt tokens cached")
        if self.usage is not None and self.usage.drafted:
            parts.append(f"MTP kept {self.usage.accepted} of {self.usage.drafted} drafts")
        return " · ".join(parts)

    def _think_seconds(self) -> float | None:
        if self.stored_think_s is not None:
            return self.stored_think_s
        if self.answer_started is not None:
            return self.answer_started
        return self.total_s

    def _show_summary(self) -> None:
        summary = self.query_one(".trace-summary", TraceSummary)
        if not self.thinking:
            summary.display = False
            return
        summary.display = True
        live = self.status == "streaming" and self.answer_started is None
        summary.update(thought_line(self._think_seconds(), self.thinking_tokens, live=live, expanded=self.expanded))

    async def finish(self, status: str, *, error: str | None = None, total_s: float | None = None) -> None:
        """The stream is over: stop it and render the whole answer once."""
        if self.status not in ("streaming",):
            return
        self.status = status
        self.error = error
        self.total_s = total_s if total_s is not None else time.monotonic() - self.started
        self._streaming = False
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stop_stream(stream)
        await self.query_one(".answer", Markdown).update(answer_markdown(self.answer))
        self._show_notice()
        self.refresh_figures()
        if self.expanded:
            await self._render_trace()

    def _show_notice(self) -> None:
        notice = self.query_one(".notice", Static)
        text = {
            "cancelled": "⏹ cancelled — partial answer kept · F5 regenerate",
            "failed": f"✖ {self.error or 'failed'} · F5 retry",
            "interrupted": "⚠ interrupted (Duet stopped while this streamed) · F5 regenerate · F4 continue",
            "elsewhere": "… still streaming in another Duet window (reopen the session to see more)",
        }.get(self.status)
        notice.display = text is not None
        notice.set_class(self.status == "failed", "error")
        if text:
            notice.update(text)

    async def load(self, *, thinking: str, answer: str, status: str, error: str | None, usage, timings: dict | None,
                   thinking_tokens: int) -> None:
        """Show a stored reply (a resumed session)."""
        self.thinking, self.answer = visible(thinking), visible(answer)
        self.thinking_tokens = thinking_tokens or (len(thinking) + 3) // 4
        # "streaming" here means another live Duet process is still writing this reply.
        self.status = {"streaming": "elsewhere"}.get(status, status)
        if self.status not in ("done", "cancelled", "failed", "interrupted", "elsewhere"):
            self.status = "interrupted"
        self.error = error
        self.usage = usage
        if timings:
            self.first_token = timings.get("first_token_s")
            self.total_s = timings.get("total_s")
        await self.query_one(".answer", Markdown).update(answer_markdown(self.answer))
        self._show_notice()
        self.refresh_figures()

    # ---- trace ---------------------------------------------------------------------------------
    def watch_expanded(self, expanded: bool) -> None:
        self.query_one(".trace", Markdown).display = expanded
        self._show_summary()
        if expanded and self.status != "streaming":  # never render a trace while it streams
            self.call_later(self._render_trace)

    async def _render_trace(self) -> None:
        if not self._trace_rendered:
            self._trace_rendered = True
            await self.query_one(".trace", Markdown).update(trace_markdown(self.thinking))


ABSOLUTE_PATH = re.compile(r"""(?<!\S)(['"]?)/(?:[^\s'"/]*/)*([^\s'"/]+)\1(?=\s|$)""")


def short_command(command: str) -> str:
    """``command`` with each absolute path word cut to its file name, for a heading: the demo's
    ``/…/bin/python /…/app/plain_tests.py stats.py`` reads ``python plain_tests.py stats.py``
    (the item's tooltip keeps the whole command); the rest is left as written."""
    return ABSOLUTE_PATH.sub(lambda m: m.group(2), command)


class TestItem(Static):
    """One run of the user's test command: running…, then passed/failed with what matters."""

    __test__ = False
    SHOWN_LINES = 12

    def __init__(self, round: int, command: str, rounds: int | None = None):
        super().__init__(classes="test-item running", markup=False)
        self.round, self.command, self.rounds = round, command, rounds
        self.status = "running"
        self.tooltip = command
        self.update(self._head("running…"))

    def _head(self, state: str) -> Content:
        of = f" of {self.rounds}" if self.rounds else ""
        when = "before the plan" if self.round == 0 else f"round {self.round}{of}"  # round 0: test_first
        return Content.assemble(("tests", "bold"), f" · {when} · ", (short_command(self.command), "italic"), " · ", state)

    def finish(self, result) -> None:
        """Show ``result`` (an app.conversation.TestResult)."""
        self.status = result.status
        self.set_class(False, "running")
        self.add_class(result.status)
        took = f" in {result.seconds:.1f} s" if result.seconds is not None else ""
        if result.passed:
            self.update(self._head(f"✓ passed{took}"))
            return
        code = f"exit {result.exit_code}" if result.exit_code is not None else result.status
        lines = visible(failure_summary(result.output)).split("\n")[-self.SHOWN_LINES:]
        state = "– no tests ran" if result.status == "no_tests" else f"✗ {result.status}"
        self.update(Content.assemble(self._head(f"{state} ({code}){took}"),
                                     ("\n" + "\n".join(lines), "dim")))
