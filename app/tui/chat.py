"""The chat screen: conversation, thinking pane, status bar, prompt, footer.

Data flows one way: a key becomes a command here; the command builds an `app.turn.Turn`
(which routes and builds the prompt at once, so the decision shows immediately); a thread
worker iterates the turn's events into an `EventBuffer`; a 30 Hz timer drains the buffer
into the widgets. Widgets never call backends; the Turn records to the session store.
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

from app.backends.base import ChatMessage, ServerUnreachable
from app.backends.events import Done, Failed, Usage
from app.config import Config
from app.errors import DuetError
from app.tui.messages import ReplyItem, TraceSummary, UserItem, code_blocks
from app.tui.prompt_input import PromptInput
from app.tui.status import StatusBar
from app.tui.streaming import DRAIN_HZ, Chunk, EventBuffer
from app.tui.thinking import ThinkingPane

PANE_MODES = ("side", "below", "hidden")
PANE_WIDTHS = (40, 55, 70)  # percent of the screen, cycled by "widen"
NARROW = 100  # columns: below this a side pane goes below the conversation
HANDOFF_REQUEST = "Implement the plan."
CONTINUE_REQUEST = "Continue your previous answer exactly where it stopped."
CANCEL_GRACE_S = 0.3  # after Esc, stop waiting for the backend's own end this soon


class TurnFinished(Message):
    """A reply ended (done, failed or cancelled); tests and benches wait for it."""

    def __init__(self, item: ReplyItem):
        super().__init__()
        self.item = item


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
        self.backend_override = backend  # for benchmarks: a synthetic backend instead of make_backend
        self.session_id = session_id
        self.load_models = load_models
        self.history: list[ChatMessage] = []
        self.current: ReplyItem | None = None
        self.turn = None
        self.buffer: EventBuffer | None = None
        self.cancel_event: threading.Event | None = None
        self.last_plan: ReplyItem | None = None
        self._drain_timer: Timer | None = None
        self._models_loaded = threading.Event()
        self._end = None
        self._revision = None  # (changes so far, rounds done, the retry reply, the first coder reply)
        self.pane_mode = config.ui.thinking_pane

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
        if self.session_id is not None:
            self.call_later(self.load_session, self.session_id)

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
        if self.current is not None:
            self.notify("A reply is still streaming: Esc cancels it.", severity="warning")
            return
        self.query_one(PromptInput).text = ""
        self.start_turn(text.strip(), role)

    def start_turn(self, request: str, role: str = "auto", *, plan: str | None = None, plan_item: ReplyItem | None = None,
                   history: list[ChatMessage] | None = None, show_user: bool = True,
                   author: str = "you") -> ReplyItem | None:
        """Route, mount the items, and start streaming. ``plan`` overrides the last plan (hand-off)."""
        from app.turn import Turn, decide

        has_plan = plan is not None or self.last_plan is not None
        try:
            decision = decide(request, role, after_plan=has_plan)
        except DuetError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return None
        if decision.role == "coder" and plan is None and self.last_plan is not None:
            plan_item = self.last_plan
            plan = self.last_plan.answer
        if decision.role != "coder":
            plan, plan_item = None, None
        if decision.intent == "review" and decision.role == "reasoner":
            files = self.review_material()
        else:
            files = self.context_files(self.config.role(decision.role))
        try:
            turn = Turn(self.config, request, role=role, history=list(self.history if history is None else history),
                        plan=plan, files=files, session_id=self.session_id, store=self.store,
                        handoff_from=plan_item.message_id if plan_item is not None else None,
                        save=self.store is not None)
        except DuetError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return None
        rc = turn.role_cfg
        route = turn.route
        if show_user:
            self.conversation.mount(UserItem(request, [f for f, _ in files], author))
        item = ReplyItem(role=route.role, model=rc.label, intent=route.intent, why=route.why, context=rc.context,
                         request=request, forced=role != "auto")
        item.plan_id = plan_item.message_id if plan_item is not None else None
        self.conversation.mount(item)
        item.start_stream()
        if self.conversation.is_anchored:
            self.conversation.anchor()  # a new request: back to following, even if scrolled up
        else:
            self.conversation.scroll_end(animate=False)
        self.current, self.turn = item, turn
        self.buffer, self.cancel_event = EventBuffer(), threading.Event()
        self._end = None  # the turn's Done or Failed, whichever drain brings it
        self.status_bar.role(route.role).set_state("busy")
        if route.role == "reasoner":
            self.pane.begin(f"thinking · {rc.label}")
        self._drain_timer = self.set_interval(1 / DRAIN_HZ, self._drain)
        self._stream_turn(turn, self.buffer, self.cancel_event)
        self.refresh_bindings()
        return item

    @work(thread=True, exclusive=True, group="turn")
    def _stream_turn(self, turn, buffer: EventBuffer, cancel: threading.Event) -> None:
        try:
            while not self._models_loaded.wait(0.05):  # a model still loading: wait, cancellably
                if cancel.is_set():
                    buffer.put(Done("cancelled"))
                    return
            worker = get_current_worker()
            events = turn.events(cancel, backend=self.backend_override)
            try:
                for event in events:
                    buffer.put(event)
                    if worker.is_cancelled:  # the app is closing, or a newer turn replaced this one
                        cancel.set()
            finally:
                events.close()
        except Exception as exc:  # never let a turn take the app down
            buffer.put(Failed(f"{type(exc).__name__}: {exc}"))
        finally:
            buffer.close()

    async def _drain(self) -> None:
        item, buffer = self.current, self.buffer
        if item is None or buffer is None or not item.ready:
            return
        events, closed = buffer.drain()
        if not events and not closed:
            item.refresh_figures()
            return
        pane_text = []
        for event in events:
            if isinstance(event, Chunk):
                await item.add(event.kind, event.text, event.count)
                if event.kind == "thinking":
                    pane_text.append(event.text)
            elif isinstance(event, Usage):
                item.usage = event
            elif isinstance(event, (Done, Failed)):
                self._end = event
        if pane_text:
            from app.tui.literal import visible

            await self.pane.write(visible("".join(pane_text)))
        item.refresh_figures()
        follow(self.conversation)
        follow(self.pane)
        if closed and item is self.current and buffer is self.buffer:
            self.buffer = None  # no more drains
            self.call_later(self._finish, item, self._end)  # outside this timer's task: _finish stops the timer

    async def _finish(self, item: ReplyItem, end) -> None:
        """The turn is over (ended, failed or cancelled): settle the widgets and the state."""
        if item is not self.current:
            return
        if self._drain_timer is not None:
            self._drain_timer.stop()
            self._drain_timer = None
        turn = self.turn
        self.buffer, self.cancel_event = None, None  # no more drains; `current` clears once settled
        if isinstance(end, Failed):
            status, error = "failed", end.message
        elif isinstance(end, Done) and end.finish_reason == "cancelled":
            status, error = "cancelled", None
        elif end is None:
            status, error = "cancelled", None
        else:
            status, error = "done", None
        total = end.total_s if isinstance(end, Done) and end.total_s else None
        if isinstance(end, Done) and end.first_token_s is not None:
            item.first_token = end.first_token_s
        if item.role == "reasoner":
            await self.pane.end()
        await item.finish(status, error=error, total_s=total)
        follow(self.conversation)
        follow(self.pane)
        widget = self.status_bar.role(item.role)
        if isinstance(end, ServerUnreachable):
            widget.set_state("failed", "unreachable")
        else:
            widget.set_state("ready")
        if turn is not None:
            item.message_id = turn.result.message_id
            if turn.session_id is not None and self.session_id is None:
                self.session_id = turn.session_id
            if status == "done":
                self.history += [ChatMessage("user", turn.prompt), ChatMessage("assistant", item.answer)]
        if status == "done" and item.role == "reasoner" and item.answer.strip():
            self.last_plan = item
        self.current = None
        self.refresh_bindings()
        self.post_message(TurnFinished(item))
        if status == "done" and item.role == "coder" and self.workspace is not None:
            self.preview_changes(item)

    # ---- after a coder turn -------------------------------------------------------------------
    def preview_changes(self, item: ReplyItem) -> None:
        """Propose the coder's edits; rejected blocks go back to the coder (up to 3 rounds,
        each a visible turn); then the diff preview, and the accepted subset is applied."""
        from app.tui.diff_preview import DiffPreview
        from app.workspace.edit_blocks import parse
        from app.prompts import detect_lang
        from app.workspace.revise import MAX_ROUNDS, feedback_prompt

        revision = self._revision if self._revision is not None and self._revision[2] is item else None
        self._revision = None
        earlier, rounds = (revision[0], revision[1]) if revision else (None, 0)
        source = revision[3] if revision else item
        try:
            blocks, problems = parse(item.answer)
            if earlier is not None and not blocks and not problems:  # the coder gave up: keep what we had
                changes = earlier
            else:
                changes = self.workspace.propose(item.answer, on_top_of=earlier)
        except DuetError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        if changes.rejected and rounds < MAX_ROUNDS and (blocks or problems):
            self.notify(f"{len(changes.rejected)} edit block(s) did not apply: asking the coder again "
                        f"(round {rounds + 1} of {MAX_ROUNDS}).", markup=False)
            retry = self.start_turn(feedback_prompt(changes, detect_lang(source.request)), "coder",
                                    author=f"duet → coder · retry {rounds + 1} of {MAX_ROUNDS}")
            if retry is not None:
                self._revision = (changes, rounds + 1, retry, source)
            return
        if changes.rejected:
            lines = "\n".join(f"{r.path}: {r.reason.splitlines()[0] if r.reason else ''}" for r in changes.rejected)
            self.notify(f"{len(changes.rejected)} edit block(s) rejected:\n{lines}", severity="warning", markup=False)
        if not changes.edits:
            return

        def done(accepted) -> None:
            if not accepted.edits:
                self.notify("No changes applied.")
                return
            try:
                applied = self.workspace.apply(accepted)
            except DuetError as exc:
                self.notify(str(exc), severity="error", markup=False)
                return
            if self.store is not None and source.message_id is not None:
                self.store.record_applied(source.message_id, accepted.summary())
            self.notify(f"Applied: {accepted.summary()} ({', '.join(applied.paths)})", markup=False)

        self.app.push_screen(DiffPreview(changes), done)

    # ---- keys ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        streaming = self.current is not None
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
        if self.cancel_event is None or self.current is None:
            return
        self.cancel_event.set()
        item = self.current
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
        if last is None or self.current is not None:
            return
        if last.status == "done" and len(self.history) >= 2:
            self.history = self.history[:-2]
        if self.last_plan is last:
            self.last_plan = None
        self.start_turn(last.request, last.role)

    def action_continue(self) -> None:
        last = self.last_reply()
        if last is None or self.current is not None:
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
        from app.tui.dialogs import PlanEditor

        if self.last_plan is None or self.current is not None:
            return
        plan_item = self.last_plan
        request = self.query_one(PromptInput).text.strip() or HANDOFF_REQUEST

        def send(edited: str | None) -> None:
            if edited is None or not edited.strip():
                return
            self.query_one(PromptInput).text = ""
            self.start_turn(request, "coder", plan=edited, plan_item=plan_item)

        self.app.push_screen(PlanEditor(plan_item.answer, self.workspace.context.files if self.workspace else []), send)

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

    def action_new_session(self) -> None:
        if self.current is not None:
            return
        self.call_later(self.clear_conversation)
        self.session_id = None
        self.notify("New session.")

    async def clear_conversation(self) -> None:
        await self.conversation.remove_children()
        self.conversation.anchor(False)
        self.history, self.last_plan = [], None
        await self.pane.show("thinking", "")
        self.refresh_bindings()

    def action_sessions(self) -> None:
        from app.tui.sessions import SessionsScreen

        if self.store is None or self.current is not None:
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
    def context_files(self, rc=None) -> list[tuple[str, str]]:
        """The files in context as (path, text); when they do not fit ``rc``'s window (less the
        answer's room), their outline instead."""
        if self.workspace is None:
            return []
        ctx = self.workspace.context
        if rc is not None and rc.context and ctx.files:
            reserve = min(rc.sampling.max_tokens, rc.context // 2) + 512  # the answer and the template
            text, full = ctx.for_prompt(rc.context, reserve=reserve)
            if not full:
                self.notify("The files in context do not fit the model's window: sending their outline.",
                            severity="warning")
                return [("outline of the files in context (too large to send whole)", text)]
        out = []
        for rel in ctx.files:
            text = ctx.read(rel)
            if text is not None:
                out.append((rel, text))
        return out

    def review_material(self) -> list[tuple[str, str]]:
        """/review: the files in context, else the uncommitted changes (the note says which)."""
        if self.workspace is None:
            return []
        review = self.workspace.review()
        if review.note:
            self.notify(review.note, markup=False)
        if review.kind == "files":
            return self.context_files()
        if review.kind == "diff":
            return [("uncommitted changes (git diff HEAD)", review.text)]
        return []

    def _show_context(self) -> None:
        if self.workspace is None:
            return
        ctx = self.workspace.context
        text = ctx.budget(self.config.coder.context).describe() if ctx.files else "no files in context"
        self.status_bar.set_context(f"⎘ {text}")

    async def load_session(self, sid: int) -> None:
        """Show a stored session and continue it."""
        if self.store is None:
            return
        messages = self.store.messages(sid)
        await self.conversation.remove_children()
        self.session_id = sid
        self.history, self.last_plan = [], None
        request = ""
        items = []
        for m in messages:
            if m.kind == "user":
                request = m.answer
                items.append(UserItem(m.answer, list(m.files)))
                continue
            item = ReplyItem(role=m.role, model=m.model, intent=m.intent, why=m.why, request=request,
                             context=self.config.role(m.role).context if m.role in ("reasoner", "coder") else None)
            item.message_id = m.id
            item.plan_id = m.handoff_from
            items.append((item, m))
        await self.conversation.mount_all([x if not isinstance(x, tuple) else x[0] for x in items])
        last_user = ""
        for x in items:
            if isinstance(x, UserItem):
                last_user = x.text
                continue
            item, m = x
            usage = Usage(**m.usage) if m.usage else None
            await item.load(thinking=m.thinking, answer=m.answer, status=m.status, error=m.error, usage=usage,
                            timings=m.timings, thinking_tokens=m.thinking_deltas)
            if m.status == "done":
                self.history += [ChatMessage("user", m.prompt or last_user), ChatMessage("assistant", m.answer)]
                if m.role == "reasoner" and m.answer.strip():
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
