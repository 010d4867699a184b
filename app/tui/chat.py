"""The chat screen: conversation, thinking pane, status bar, prompt, footer.

A view over `app.conversation.Conversation`, which owns the history, routing, the plan,
edits, tests and the session. Data flows one way: a key becomes a command here; the core
prepares the request (routed once, so the decision shows at once); a thread worker iterates
the core's events into an `EventBuffer`; a 30 Hz timer drains the buffer into the widgets.
The one thing the worker waits for from the screen is the diff review (`Approval`).
"""

from __future__ import annotations

import dataclasses
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
from app.conversation import (ChangeApplied, ChangeDeclined, ChangeProposed, Conversation, FlowEnded, Notice,
                              PlanReady, Routed, TestFinished, TestStarted, TurnEnded)
from app.conversation.conversation import HANDOFF_REQUEST
from app.conversation.steps import Plan
from app.errors import DuetError
from app.tui.messages import ReplyItem, TestItem, TraceSummary, UserItem, code_blocks
from app.tui.prompt_input import PromptInput
from app.tui.status import StatusBar
from app.tui.streaming import DRAIN_HZ, Chunk, EventBuffer
from app.tui.thinking import ThinkingPane
from vocab.events import Done, Failed, ServerUnreachable, Usage
from vocab.messages import ChatMessage

PANE_MODES = ("side", "below", "hidden")
PANE_WIDTHS = (40, 55, 70)  # percent of the screen, cycled by "widen"
NARROW = 100  # columns: below this a side pane goes below the conversation
CONTINUE_REQUEST = "Continue your previous answer exactly where it stopped."
CANCEL_GRACE_S = 0.3  # after Esc, stop waiting for the backend's own end this soon


class TurnFinished(Message):
    """A reply ended (done, failed or cancelled); tests and benches wait for it."""

    def __init__(self, item: ReplyItem):
        super().__init__()
        self.item = item


class StepRun:
    """The plan being worked through step by step: which reply it came from, its steps (with
    their done/skipped marks), and the step being implemented now (None: all at once)."""

    def __init__(self, item, plan, index: int | None):
        self.item, self.plan, self.index = item, plan, index

    def tick(self) -> None:
        steps = list(self.plan.steps)
        steps[self.index] = dataclasses.replace(steps[self.index], done=True)
        self.plan = self.plan.with_steps(steps)


class Approval:
    """The worker thread asks, the screen answers: which proposed edits to write."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel
        self._answered = threading.Event()
        self._value = None

    def wait(self, changes):
        """(worker thread) Block until the diff review answers or the flow is cancelled."""
        self._answered.clear()
        while not self._answered.wait(0.05):
            if self.cancel.is_set():
                return None
        return self._value

    def answer(self, value) -> None:
        self._value = value
        self._answered.set()


class ChatScreen(Screen):
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
            for role in ("reasoner", "coder"):
                rc = self.config.role(role)
                widget = self.status_bar.role(role)
                self.app.call_from_thread(widget.set_state, "loading")
                state, reason = prepare_backend(
                    rc, lambda f, w=widget: self.app.call_from_thread(w.set_state, "loading", "", f))
                self.app.call_from_thread(widget.set_state, state, reason)
        finally:
            self._models_loaded.set()

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
            self.notify(note, severity="warning" if "do not fit" in note else "information", markup=False)
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

    # ---- tests and rewind ------------------------------------------------------------------
    def run_test(self, command: str | None = None) -> None:
        """/test [CMD]: run the test command now (CMD also becomes this conversation's command)."""
        if self.workspace is None:
            self.notify("No workspace to test.")
            return
        if command:
            self.conv.test_command = command
        if not self.conv.test_command:
            self.notify("No test command: /test CMD, or [workspace] test in the config.", severity="warning")
            return
        number = len(self.conversation.query(TestItem)) + 1

        def flow(cancel, approve):
            yield from self.conv.test(number, cancel)
            yield FlowEnded("tested")

        self._start_flow(flow)

    def action_test(self) -> None:
        if not self.busy:
            self.run_test()
    # ---- keys ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        streaming = self.busy
        if action == "cancel":
            return streaming
        if action in ("regenerate", "copy_answer", "copy_code"):
            return not streaming and self.last_reply() is not None
        if action == "continue":
            last = self.last_reply()
            return not streaming and last is not None and last.status in ("interrupted", "cancelled")
        if action == "hand_off":  # shown only once there is a plan; dimmed while a reply streams
            return (None if streaming else True) if self.last_plan is not None else False
        return True

    def action_cancel(self) -> None:
        """Esc: stop the reply (the partial answer is kept) or the test run (its process group is killed)."""
        if self.cancel_event is None:
            return
        self.cancel_event.set()
        item = self.current
        if item is not None:
            self.set_timer(CANCEL_GRACE_S, lambda: self._force_end(item))

    async def _force_end(self, item: ReplyItem) -> None:
        """The backend has not ended within the grace period: stop listening, keep the text so far."""
        if self.current is item and self.buffer is not None:
            buffer = self.buffer
            buffer.close()  # the worker's later events land in a buffer nobody drains
            await self._drain()

    def last_reply(self) -> ReplyItem | None:
        items = self.conversation.query(ReplyItem)
        return items.last() if items else None

    def action_regenerate(self) -> None:
        last = self.last_reply()
        if last is None or self.busy:
            return
        if last.status == "done":
            self.conv.forget_last()
        if self.last_plan is last:
            self.last_plan, self.conv.plan = None, None
        self.start_turn(last.request, last.role)

    def action_continue(self) -> None:
        last = self.last_reply()
        if last is None or self.busy:
            return
        history = self.history + [ChatMessage("user", last.request), ChatMessage("assistant", last.answer)]
        self.start_turn(CONTINUE_REQUEST, last.role, history=history)

    def action_toggle_thinking(self) -> None:
        for item in reversed(list(self.conversation.query(ReplyItem))):
            if item.thinking and item.status != "streaming":
                item.expanded = not item.expanded
                if item.expanded and self.current is None:
                    self.call_later(self.pane.show, f"thought · {item.model}", item.thinking)
                return
        self.notify("No finished reply with a thinking trace yet.")

    @on(TraceSummary.Toggle)
    def _toggle_one(self, event: TraceSummary.Toggle) -> None:
        item = event.item
        if item.status != "streaming":
            item.expanded = not item.expanded
            if item.expanded and self.current is None:
                self.call_later(self.pane.show, f"thought · {item.model}", item.thinking)

    def action_pane_mode(self) -> None:
        self.pane_mode = PANE_MODES[(PANE_MODES.index(self.pane_mode) + 1) % len(PANE_MODES)]

    def action_widen_pane(self) -> None:
        if self.pane_mode == "hidden":
            self.pane_mode = "side"
        self.pane_width = PANE_WIDTHS[(PANE_WIDTHS.index(self.pane_width) + 1) % len(PANE_WIDTHS)]

    def action_copy_answer(self) -> None:
        last = self.last_reply()
        if last is not None:
            self.app.copy_to_clipboard(last.answer)
            self.notify(f"Copied the answer ({len(last.answer):,} characters).")

    def action_copy_code(self) -> None:
        last = self.last_reply()
        blocks = code_blocks(last.answer) if last is not None else []
        if not blocks:
            self.notify("The last answer has no code block.")
            return
        self.app.copy_to_clipboard(blocks[-1])
        self.notify(f"Copied the last code block ({len(blocks[-1].splitlines())} lines).")

    def action_hand_off(self) -> None:
        """The plan (never its trace) as an editable checklist: hand off all, or one step; a step
        whose tests pass (or that applies, with no test command) is ticked off."""
        from app.tui.dialogs import HandOff, PlanEditor

        if self.last_plan is None or self.busy:
            return
        plan_item = self.last_plan
        request = self.query_one(PromptInput).text.strip() or HANDOFF_REQUEST
        steps = self.steps.plan.steps if self.steps is not None and self.steps.item is plan_item else ()

        def send(choice: HandOff | None) -> None:
            if choice is None or not choice.text.strip():
                return
            self.query_one(PromptInput).text = ""
            plan = Plan(choice.text, plan_item.message_id, choice.steps)
            if choice.only is None:
                self.steps = StepRun(plan_item, plan, None)
                self.start_turn(request, "coder", plan=plan.text)
                return
            self.steps = StepRun(plan_item, plan, choice.only)
            self.start_turn(f"Implement step {choice.only + 1} of the plan.", "coder", plan=plan.step_text(choice.only))

        files = self.workspace.context.files if self.workspace else []
        self.app.push_screen(PlanEditor(plan_item.answer, files, steps), send)

    def action_undo_changes(self) -> None:
        """Put back the files of the last applied change (asks before overwriting later edits)."""
        from app.tui.dialogs import Confirm
        from app.workspace import HistoryError

        if self.workspace is None:
            return
        try:
            paths = self.workspace.undo()
        except HistoryError as exc:
            if "changed since" not in str(exc):
                self.notify(str(exc), markup=False)
                return

            def forced(yes: bool | None) -> None:
                if yes:
                    self.notify(f"Undone: {', '.join(self.workspace.undo(force=True))}", markup=False)

            self.app.push_screen(Confirm(f"{exc}. Undo anyway and lose those later changes?"), forced)
            return
        self.notify(f"Undone: {', '.join(paths)}", markup=False)

    def action_rewind(self, count: int = 1) -> None:
        """Take the conversation back to before the last request (``/rewind N``: the last N);
        files stay as they are (F12 undoes an applied change). Survives a restart: the store
        forgets those messages."""
        from app.tui.dialogs import Confirm

        users = [u for u in self.conversation.query(UserItem) if u.message_id is not None]
        target = users[-count] if 0 < count <= len(users) else None
        if self.busy or self.store is None or target is None:
            self.notify("Nothing to rewind.")
            return

        def rewind(yes: bool | None) -> None:
            if yes:
                self.rewind_to(target.message_id)

        self.app.push_screen(Confirm(f"Rewind the conversation to before “{target.text[:60]}”? "
                                     "Files are not touched."), rewind)

    def rewind_to(self, message_id: int) -> None:
        try:
            self.conv.rewind(message_id)
        except DuetError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        self.call_later(self.load_session, self.conv.session_id)
        self.notify("Rewound the conversation.")

    def action_new_session(self) -> None:
        if self.busy:
            return
        self.call_later(self.clear_conversation)
        self.conv.clear()
        self.notify("New session.")

    async def clear_conversation(self) -> None:
        await self.conversation.remove_children()
        self.conversation.anchor(False)
        self.conv.history, self.conv.plan, self.last_plan = [], None, None
        await self.pane.show("thinking", "")
        self.refresh_bindings()

    def action_sessions(self) -> None:
        from app.tui.sessions import SessionsScreen

        if self.store is None or self.busy:
            return

        def chosen(sid: int | None) -> None:
            if sid is not None:
                self.call_later(self.load_session, sid)
            elif self.session_id is not None and self.store.session(self.session_id) is None:
                self.session_id = None  # the open session was deleted
                self.call_later(self.clear_conversation)

        self.app.push_screen(SessionsScreen(self.store, current=self.session_id), chosen)

    def action_files(self) -> None:
        from app.tui.dialogs import FilePicker

        if self.workspace is None:
            self.notify("No workspace.")
            return
        self.app.push_screen(FilePicker(self.workspace.context), lambda _: self._show_context())

    # ---- files and sessions --------------------------------------------------------------------
    def _show_context(self) -> None:
        if self.workspace is None:
            return
        ctx = self.workspace.context
        text = ctx.budget(self.config.coder.context).describe() if ctx.files else "no files in context"
        self.status_bar.set_context(f"⎘ {text}")

    async def load_session(self, sid: int) -> None:
        """Show a stored session and continue it (the core takes its history and plan)."""
        if self.store is None:
            return
        messages = self.conv.resume(sid)
        await self.conversation.remove_children()
        self.last_plan = None
        request = ""
        items = []
        for m in messages:
            if m.kind == "user":
                request = m.answer
                user = UserItem(m.answer, list(m.files))
                user.message_id = m.id
                items.append(user)
                continue
            item = ReplyItem(role=m.role, model=m.model, intent=m.intent, why=m.why, request=request,
                             context=self.config.role(m.role).context if m.role in ("reasoner", "coder") else None)
            item.message_id = m.id
            item.plan_id = m.handoff_from
            items.append((item, m))
        await self.conversation.mount_all([x if not isinstance(x, tuple) else x[0] for x in items])
        for x in items:
            if isinstance(x, UserItem):
                continue
            item, m = x
            usage = Usage(**m.usage) if m.usage else None
            await item.load(thinking=m.thinking, answer=m.answer, status=m.status, error=m.error, usage=usage,
                            timings=m.timings, thinking_tokens=m.thinking_deltas)
            if m.status == "done" and m.role == "reasoner" and m.answer.strip():
                self.last_plan = item
        last_trace = next((x[0] for x in reversed(items) if isinstance(x, tuple) and x[0].thinking), None)
        if last_trace is not None:
            await self.pane.show(f"thought · {last_trace.model}", last_trace.thinking)
        self.conversation.scroll_end(animate=False)
        self.refresh_bindings()


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


def prepare_backend(rc, progress=None) -> tuple[str, str]:
    """Load a role's model (or probe its server): ("ready"|"failed", reason). Runs in a thread;
    ``progress(fraction)`` hears how far a local engine's load is."""
    try:
        if rc.backend == "openai":
            from app.backends.probe import probe

            result = probe(rc, timeout=3.0, check_reasoning=False)
            if not result.reachable or not result.model_ok:
                return "failed", result.message or "unreachable"
            return "ready", ""
        from app.backends import make_backend

        backend = make_backend(rc)
        model = getattr(backend, "model", None)
        if rc.backend == "local":
            model.load(progress)
        elif model is not None and hasattr(model, "load"):
            model.load()
        return "ready", ""
    except DuetError as exc:
        return "failed", str(exc)
    except Exception as exc:  # a broken install must show in the status bar, not crash the UI
        return "failed", f"{type(exc).__name__}: {exc}"
