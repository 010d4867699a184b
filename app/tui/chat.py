"""The chat screen: conversation, thinking pane, status bar, prompt, footer.

A view over `app.conversation.Conversation`, which owns the history, routing, the plan,
edits, tests and the session. Data flows one way: a key becomes a command here; the core
prepares the request (routed once, so the decision shows at once); a thread worker iterates
the core's events into an `EventBuffer`; a 30 Hz timer drains the buffer into the widgets.
The one thing the worker waits for from the screen is the diff review (`Approval`).
"""

from __future__ import annotations

import threading

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer
from textual.worker import get_current_worker

from app.config import Config
from app.conversation import (Caution, ChangeApplied, ChangeDeclined, ChangeProposed, Conversation, FlowEnded,
                              Notice, Routed, TestFinished, TestStarted, TurnEnded)
from app.errors import DuetError
from app.tui.chat_actions import PANE_WIDTHS, ChatActions
from app.tui.flow import Approval
from app.tui.messages import ReplyItem, TestItem, TraceSummary, UserItem
from app.tui.models import prepare_backend
from app.tui.prompt_input import PromptInput
from app.tui.status import StatusBar
from app.tui.streaming import DRAIN_HZ, Chunk, EventBuffer, follow
from app.tui.thinking import ThinkingPane
from vocab.events import Done, Failed, ServerUnreachable, Usage
from vocab.messages import ChatMessage

NARROW = 100  # columns: below this a side pane goes below the conversation


class TurnFinished(Message):
    """A reply ended (done, failed or cancelled); tests and benches wait for it."""

    def __init__(self, item: ReplyItem):
        super().__init__()
        self.item = item


class ChatScreen(ChatActions, Screen):
    CSS_PATH = "chat.tcss"
    AUTO_FOCUS = "#prompt"

    BINDINGS = [
        Binding("ctrl+r", "send('reasoner')", "Reasoner", id="chat.force_reasoner", priority=True),
        Binding("ctrl+g", "send('coder')", "Coder", id="chat.force_coder", priority=True),
        Binding("ctrl+o", "hand_off", "Hand off", id="chat.hand_off", priority=True),
        Binding("escape", "cancel", "Cancel", id="chat.cancel"),
        Binding("f5", "regenerate", "Regenerate", id="chat.regenerate"),
        Binding("f4", "continue", "Continue", id="chat.continue"),
        Binding("ctrl+t", "toggle_thinking", "Trace", id="chat.toggle_thinking", priority=True),
        Binding("f2", "pane_mode", "Pane", id="chat.pane_mode", show=False),
        Binding("f3", "widen_pane", "Widen", id="chat.widen_pane", show=False),
        Binding("f8", "copy_answer", "Copy", id="chat.copy_answer", show=False),
        Binding("f9", "copy_code", "Copy code", id="chat.copy_code", show=False),
        Binding("ctrl+f", "files", "Files", id="chat.files", priority=True),
        Binding("f12", "undo_changes", "Undo edit", id="chat.undo_changes", show=False),
        Binding("f10", "test", "Test", id="chat.test", show=False),  # (the prompt keeps F6/F7)
        Binding("ctrl+b", "rewind", "Rewind", id="chat.rewind", priority=True, show=False),
        Binding("ctrl+n", "new_session", "New", id="chat.new_session", priority=True, show=False),
        Binding("ctrl+s", "sessions", "Sessions", id="chat.sessions", priority=True),
    ]

    pane_mode: reactive[str] = reactive("side")
    pane_width: reactive[int] = reactive(PANE_WIDTHS[0])

    def __init__(self, config: Config, *, store=None, workspace=None, backend=None, session_id: int | None = None,
                 load_models: bool = True):
        super().__init__()
        self.config = config
        self.store = store
        self.workspace = workspace
        self.conv = Conversation(config, workspace=workspace, store=store, session_id=None,
                                 save=store is not None, backend=backend)
        self.resume_id = session_id
        self.load_models = load_models
        self.current: ReplyItem | None = None  # the reply streaming now
        self.busy = False  # a request's flow is running (a reply, a diff review, a test run)
        self.buffer: EventBuffer | None = None
        self.cancel_event: threading.Event | None = None
        self.approval: Approval | None = None
        self.last_plan: ReplyItem | None = None
        self.steps = None  # the hand-off checklist being worked through one step at a time
        self._pending: list = []  # drained events not yet shown (a new item was still mounting)
        self._tests: dict[int, TestItem] = {}
        self._drain_timer: Timer | None = None
        self._models_loaded = threading.Event()
        self._end = None
        self.pane_mode = config.ui.thinking_pane

    @property
    def session_id(self) -> int | None:
        return self.conv.session_id

    @session_id.setter
    def session_id(self, sid: int | None) -> None:
        self.conv.session_id = sid

    @property
    def history(self) -> list[ChatMessage]:
        return self.conv.history

    # ---- layout -----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(self.config.reasoner.label, self.config.coder.label, id="status")
        with Horizontal(id="body"):
            yield VerticalScroll(id="conversation")
            yield ThinkingPane(id="thinking")
        yield PromptInput(id="prompt", placeholder="Ask… Enter sends · Ctrl+J newline · /plan /code /review · Tab completes")
        yield Footer()

    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    @property
    def pane(self) -> ThinkingPane:
        return self.query_one("#thinking", ThinkingPane)

    @property
    def status_bar(self) -> StatusBar:
        return self.query_one("#status", StatusBar)

    def on_mount(self) -> None:
        self._apply_layout()
        self._show_context()
        if self.load_models:
            self.load_backends()
        else:
            self._models_loaded.set()
            for role in ("reasoner", "coder"):
                self.status_bar.role(role).set_state("ready")
        if self.resume_id is not None:
            self.call_later(self.load_session, self.resume_id)

    def on_unmount(self) -> None:
        if self.cancel_event is not None:  # closing mid-reply: stop the backend, the store keeps the text
            self.cancel_event.set()

    def on_resize(self) -> None:
        self._apply_layout()

    def watch_pane_mode(self) -> None:
        if self.is_mounted:
            self._apply_layout()

    def watch_pane_width(self) -> None:
        if self.is_mounted:
            self._apply_layout()

    def _apply_layout(self) -> None:
        mode = self.pane_mode
        if mode == "side" and self.size.width < NARROW:
            mode = "below"
        body, pane = self.query_one("#body"), self.pane
        pane.display = mode != "hidden"
        body.set_class(mode == "below", "below")
        if mode == "side":
            pane.styles.width = f"{self.pane_width}%"
            pane.styles.height = "1fr"
        elif mode == "below":
            pane.styles.width = "1fr"
            pane.styles.height = f"{max(30, self.pane_width - 5)}%"

    # ---- models ----------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load")
    def load_backends(self) -> None:
        """Load (or probe) each role's model in turn, off the UI thread."""
        try:
            # both widgets looked up first: a load can outlast the screen (the app closing meanwhile)
            widgets = {role: self.status_bar.role(role) for role in ("reasoner", "coder")}
            for role, widget in widgets.items():
                rc = self.config.role(role)
                self._show_from_thread(widget.set_state, "loading")
                state, reason = prepare_backend(
                    rc, lambda f, w=widget: self._show_from_thread(w.set_state, "loading", "", f))
                self._show_from_thread(widget.set_state, state, reason)
        finally:
            self._models_loaded.set()

    def _show_from_thread(self, update, *args) -> None:
        """Run a widget update on the UI thread; nothing to show once the app has closed."""
        try:
            self.app.call_from_thread(update, *args)
        except RuntimeError:  # the app stopped while a model was loading
            pass

    # ---- sending ---------------------------------------------------------------------------
    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        self.submit(event.text, "auto")

    def action_send(self, role: str) -> None:
        text = self.query_one(PromptInput).text
        if text.strip():
            self.query_one(PromptInput).remember(text)
            self.submit(text, role)

    def submit(self, text: str, role: str) -> None:
        if self.busy:
            self.notify("Duet is still working on the last request: Esc cancels it.", severity="warning")
            return
        self.query_one(PromptInput).text = ""
        text = text.strip()
        word, _, rest = text.partition(" ")
        if word == "/test":
            self.run_test(rest.strip() or None)
        elif word == "/undo":
            self.action_undo_changes()
        elif word == "/replan":
            self.action_replan()
        elif word == "/rewind":
            self.action_rewind(int(rest) if rest.strip().isdigit() else 1)
        else:
            self.start_turn(text, role)

    def start_turn(self, request: str, role: str = "auto", *, plan=None, history: list[ChatMessage] | None = None,
                   show_user: bool = True, author: str = "you") -> ReplyItem | None:
        """Route (once, in the core), mount the items, and start the request's flow. ``plan``
        overrides the current plan (an edited hand-off)."""
        try:
            routed = self.conv.prepare(request, role, plan=plan, history=history, author=author)
        except DuetError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return None
        item = self._show_turn(routed, show_user, forced=role != "auto")
        self._start_flow(lambda cancel, approve: self.conv.run(routed, cancel, approve))
        return item

    def _show_turn(self, routed: Routed, show_user: bool = True, forced: bool = False) -> ReplyItem:
        """Mount a turn's items (the request, the reply to stream into) and mark its role busy."""
        turn, route = routed.turn, routed.route
        rc = turn.role_cfg
        for note in routed.notes:
            self.notify(note, severity="warning" if isinstance(note, Caution) else "information", markup=False)
        user = UserItem(turn.request, list(routed.file_names), routed.author) if show_user else None
        if user is not None:
            self.conversation.mount(user)
        item = ReplyItem(role=route.role, model=rc.label, intent=route.intent, why=route.why, context=rc.context,
                         request=turn.request, forced=forced or route.forced)
        item.plan_id = turn.handoff_from
        item.user_item = user
        self.conversation.mount(item)
        item.start_stream()
        if self.conversation.is_anchored:
            self.conversation.anchor()  # a new request: back to following, even if scrolled up
        else:
            self.conversation.scroll_end(animate=False)
        self.current, self._end = item, None
        self.status_bar.role(route.role).set_state("busy")
        if route.role == "reasoner":
            self.pane.begin(f"thinking · {rc.label}")
        self.refresh_bindings()
        return item

    def _start_flow(self, flow) -> None:
        """Run ``flow(cancel, approve)`` (an iterator of events) in a worker; the timer shows them."""
        self.busy = True
        self.buffer, self.cancel_event = EventBuffer(), threading.Event()
        self.approval = Approval(self.cancel_event)
        self._pending = []
        self._drain_timer = self.set_interval(1 / DRAIN_HZ, self._drain)
        self._run_flow(flow, self.buffer, self.cancel_event, self.approval)
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="turn")
    def _run_flow(self, flow, buffer: EventBuffer, cancel: threading.Event, approval: Approval) -> None:
        try:
            while not self._models_loaded.wait(0.05):  # a model still loading: wait, cancellably
                if cancel.is_set():
                    buffer.put(Done("cancelled"))
                    return
            worker = get_current_worker()
            events = flow(cancel, approval.wait)
            try:
                for event in events:
                    buffer.put(event)
                    if worker.is_cancelled:  # the app is closing, or a newer flow replaced this one
                        cancel.set()
            finally:
                events.close()
        except Exception as exc:  # never let a request take the app down
            buffer.put(Failed(f"{type(exc).__name__}: {exc}"))
        finally:
            buffer.close()

    async def _drain(self) -> None:
        buffer = self.buffer
        if buffer is None or (self.current is not None and not self.current.ready):
            return
        events, closed = buffer.drain()
        events, self._pending = self._pending + events, []
        pane_text: list[str] = []
        for i, event in enumerate(events):
            item = self.current
            if isinstance(event, Chunk) and item is not None:
                await item.add(event.kind, event.text, event.count)
                if event.kind == "thinking":
                    pane_text.append(event.text)
            elif isinstance(event, Usage) and item is not None:
                item.usage = event
            elif isinstance(event, (Done, Failed)):
                self._end = event
            elif isinstance(event, Routed):  # the core's own round (a retry, a test fix)
                await self._flush_pane(pane_text)
                self._show_turn(event)
                self._pending = events[i + 1:]  # shown once the new item is mounted
                return
            elif isinstance(event, TurnEnded):
                await self._flush_pane(pane_text)
                if item is not None:
                    await self._finish_item(item, self._end, event.turn)
                if not event.more:
                    self._end_flow()
                    return
            else:
                self._show_event(event)
        await self._flush_pane(pane_text)
        if self.current is not None:
            self.current.refresh_figures()
        follow(self.conversation)
        if closed and buffer is self.buffer:
            if self.current is not None:  # the stream ended without its TurnEnded (cancelled, crashed)
                await self._finish_item(self.current, self._end, None)
            self._end_flow()

    async def _flush_pane(self, pane_text: list[str]) -> None:
        if pane_text:
            from app.tui.literal import visible

            await self.pane.write(visible("".join(pane_text)))
            pane_text.clear()
        follow(self.pane)

    def _show_event(self, event) -> None:
        """The core's events after a turn: notices, the diff review, applies, test rounds."""
        if isinstance(event, Notice):
            self.notify(event.text, severity=event.level, markup=False)
        elif isinstance(event, ChangeProposed):
            from app.tui.diff_preview import DiffPreview

            title = "Proposed changes" if event.round == 1 else f"Proposed changes · test fix round {event.round}"
            self.app.push_screen(DiffPreview(event.changes, title=title), self.approval.answer)
        elif isinstance(event, ChangeApplied):
            self.notify(f"Applied: {event.changes.summary()} ({', '.join(event.applied.paths)})", markup=False)
            for note in event.applied.notes:
                self.notify(note, severity="warning", markup=False)
        elif isinstance(event, ChangeDeclined):
            self.notify("No changes applied.")
        elif isinstance(event, TestStarted):
            test = self._tests[event.round] = TestItem(event.round, event.command, self.conv.rounds)
            if event.round == 0 and self.current is not None:  # before the plan: above the reply it precedes
                self.conversation.mount(test, before=self.current)
            else:
                self.conversation.mount(test)
            self.conversation.scroll_end(animate=False)
        elif isinstance(event, TestFinished):
            test = self._tests.pop(event.round, None)
            if test is not None:
                test.finish(event.result)
        elif isinstance(event, FlowEnded):
            self._flow_ended(event)

    def _flow_ended(self, event: FlowEnded) -> None:
        run = self.steps
        if run is None or run.index is None or event.status not in ("passed", "applied"):
            return
        run.tick()
        left = sum(1 for s in run.plan.steps if not s.done and not s.skipped)
        self.notify(f"Step {run.index + 1} done ✓" + (f" · {left} to go (Ctrl+O)" if left else " · the plan is done"))
        run.index = None

    async def _finish_item(self, item: ReplyItem, end, turn) -> None:
        """A turn is over (ended, failed or cancelled): settle its widgets."""
        if isinstance(end, Failed):
            status, error = "failed", end.message
        elif isinstance(end, Done) and end.finish_reason != "cancelled":
            status, error = "done", None
        else:
            status, error = "cancelled", None
        total = end.total_s if isinstance(end, Done) and end.total_s else None
        if isinstance(end, Done) and end.first_token_s is not None:
            item.first_token = end.first_token_s
        if item.role == "reasoner":
            await self.pane.end()
        await item.finish(status, error=error, total_s=total)
        follow(self.conversation)
        follow(self.pane)
        self.status_bar.role(item.role).set_state(
            "failed" if isinstance(end, ServerUnreachable) else "ready", "unreachable" if isinstance(end, ServerUnreachable) else "")
        if turn is not None:
            item.message_id = turn.result.message_id
            if getattr(item, "user_item", None) is not None:
                item.user_item.message_id = turn.result.user_message_id
        if status == "done" and item.role == "reasoner" and item.answer.strip():
            self.last_plan = item
        if item is self.current:
            self.current = None
        self.refresh_bindings()
        self.post_message(TurnFinished(item))

    def _end_flow(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.stop()
            self._drain_timer = None
        self.buffer, self.cancel_event, self.approval = None, None, None
        self._pending = []
        self.busy = False
        self.refresh_bindings()

    @on(TraceSummary.Toggle)
    def _toggle_one(self, event: TraceSummary.Toggle) -> None:
        item = event.item
        if item.status != "streaming":
            item.expanded = not item.expanded
            if item.expanded and self.current is None:
                self.call_later(self.pane.show, f"thought · {item.model}", item.thinking)
