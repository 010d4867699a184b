"""The chat screen's commands: keys, the hand-off checklist, tests, undo and rewind, sessions
and files. A mixin of `ChatScreen` (app/tui/chat.py), which keeps the layout and the stream."""

from __future__ import annotations

from app.conversation import FlowEnded
from app.conversation.conversation import HANDOFF_REQUEST
from app.conversation.replan import retry_sampling
from app.conversation.steps import Plan
from app.conversation.verify import TestResult
from app.errors import DuetError
from app.tui.flow import StepRun
from app.tui.messages import ReplyItem, TestItem, UserItem, code_blocks
from app.tui.prompt_input import PromptInput
from vocab.events import Usage
from vocab.messages import ChatMessage

PANE_MODES = ("side", "below", "hidden")
PANE_WIDTHS = (40, 55, 70)  # percent of the screen, cycled by "widen"
CONTINUE_REQUEST = "Continue your previous answer exactly where it stopped."
CANCEL_GRACE_S = 0.3  # after Esc, stop waiting for the backend's own end this soon


class ChatActions:
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

    def action_replan(self) -> None:
        """/replan: undo the latest plan's applied change and ask the reasoner for another plan,
        told the plans tried and how the last one failed (app/conversation/replan.py)."""
        if self.busy:
            return
        attempts = self.conv.attempts
        if attempts is None:
            self.notify("Nothing to re-plan: ask the reasoner for a plan first (/plan ...).", severity="warning")
            return
        try:
            undone = self.conv.undo_attempt()
            routed = self.conv.prepare_replan(sampling=retry_sampling(self.config.reasoner.sampling,
                                                                       seed=len(attempts.tried)))
        except DuetError as exc:
            self.notify(f"Cannot re-plan: {exc}", severity="error", markup=False)
            return
        if undone:
            self.notify(f"Undone: {', '.join(undone)}", markup=False)
        self._show_turn(routed, forced=True)
        self._start_flow(lambda cancel, approve: self.conv.run(routed, cancel, approve))
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
        self.start_turn(CONTINUE_REQUEST, last.role, history=history, author="duet → continue")

    def action_toggle_thinking(self) -> None:
        for item in reversed(list(self.conversation.query(ReplyItem))):
            if item.thinking and item.status != "streaming":
                item.expanded = not item.expanded
                if item.expanded and self.current is None:
                    self.call_later(self.pane.show, f"thought · {item.model}", item.thinking)
                return
        self.notify("No finished reply with a thinking trace yet.")

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
            paths = self.conv.undo()
        except HistoryError as exc:
            if "changed since" not in str(exc):
                self.notify(str(exc), markup=False)
                return

            def forced(yes: bool | None) -> None:
                if yes:
                    self.notify(f"Undone: {', '.join(self.conv.undo(force=True))}", markup=False)

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
                user = UserItem(m.answer, list(m.files), author=m.author)
                user.message_id = m.id
                items.append(user)
                continue
            item = ReplyItem(role=m.role, model=m.model, intent=m.intent, why=m.why, request=request,
                             context=self.config.role(m.role).context if m.role in ("reasoner", "coder") else None)
            item.message_id = m.id
            item.plan_id = m.handoff_from
            items.append((item, m))
        widgets = [x if not isinstance(x, tuple) else x[0] for x in items]
        for run in self.store.test_runs(sid):  # each test round after the reply whose edits it tested
            test = TestItem(run.round, run.command)  # (a run before a plan, round 0: before its reply)
            test.finish(TestResult(run.command, run.status, run.exit_code, run.output, None))
            at = next((i for i, w in enumerate(widgets) if getattr(w, "message_id", None) == run.message_id
                       and isinstance(w, ReplyItem)), None)
            if at is None:
                widgets.append(test)
                continue
            if run.round == 0:
                widgets.insert(at, test)
                continue
            at += 1
            while at < len(widgets) and isinstance(widgets[at], TestItem):
                at += 1
            widgets.insert(at, test)
        await self.conversation.mount_all(widgets)
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
