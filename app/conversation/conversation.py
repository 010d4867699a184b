"""One conversation, without any UI: history, routing, the plan, edits, tests, the session.

    conv = Conversation(config, workspace=ws, test_command="pytest -q")
    routed = conv.prepare("/plan add a cache")       # routes once; shows nothing, sends nothing
    for event in conv.run(routed, cancel, approve):  # backend events + app.conversation.events
        ...

``prepare`` makes the one routing decision for a request (with ``after_plan`` when a plan
exists) and builds the turn under it, so what a view shows, what the prompt asks and what
the store records agree. ``run`` streams that turn; after a coder's answer it checks the edit
blocks (rejected ones go back to the coder: `app.workspace.revise`; a coder without
``history`` is asked its request again, sampled), asks ``approve`` which
edits to write, applies them, runs the user's test command, and while tests fail sends the
trimmed failure, the plan and the files as they now are back to the coder (it fixes forward;
every round of one request is one undo step; a coder without ``history`` is instead asked the
request again, sampled, on the files as they were). ``approve(changes) -> ChangeSet | None`` is the
view's diff review (the TUI's preview, or ``--apply``); None or nothing accepted stops there.

The history holds answers only: a reasoner's trace is kept in the store, never resent.

With ``[workspace] test_first`` the test command also runs before a plan, review or analysis
the user asks the reasoner for (round 0, `reproduce`): a failure follows the request in its
prompt (with ``history``), and the functions it reaches focus the reading its ``exact_quotes``
hold (app.exact_quotes.ReadingFocus); a re-plan gets the latest failure the same way.

``attempts`` keeps the plans tried for the latest plan's request; ``undo_attempt`` and
``prepare_replan`` ask the reasoner for another plan when one did not work (`replan.py`). A plan
handed to the coder again (the same words) gets a sampled reply, with a new seed each time: a
coder that decodes greedily would otherwise write the same edits that failed before.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence

from app import demo
from app.config import Config, Sampling
from app.conversation.events import (Caution, ChangeApplied, ChangeDeclined, ChangeProposed, FlowEnded, Notice,
                                     PlanReady, Routed, TestFinished, TestStarted, TurnEnded)
from app.conversation.replan import REPLAN_OUTPUT_CHARS, Attempts, retry_sampling
from app.conversation.steps import Plan
from app.conversation.verify import TestResult, failing_functions, failure_summary, run_tests, with_changed
from app.errors import DuetError
from app.turn import Turn, decide, file_names
from vocab.messages import ChatMessage

DEFAULT_ROUNDS = 3
HANDOFF_REQUEST = "Implement the plan."

Approve = Callable[[object], object]  # ChangeSet -> accepted ChangeSet | None


class Conversation:
    def __init__(self, config: Config, *, workspace=None, store=None, session_id: int | None = None,
                 save: bool = True, backend=None, test_command: str | None = None,
                 test_timeout: float | None = None, rounds: int = DEFAULT_ROUNDS):
        self.config = config
        self.workspace = workspace
        self.store = store
        self.session_id = session_id
        self.save = save
        self.backend = backend  # a fixed backend for every turn (benchmarks); None: per role from the config
        self.test_command = test_command if test_command is not None else (config.workspace.test or None)
        self.test_timeout = test_timeout if test_timeout is not None else config.workspace.test_timeout
        self.rounds = max(1, rounds)
        self.history: list[ChatMessage] = []
        self.plan: Plan | None = None
        self.attempts: Attempts | None = None  # the plans tried for the latest plan's request
        self._replan_turn: Turn | None = None
        self._handoffs: dict[str, int] = {}  # a plan's words -> how often it went to the coder
        self._retries = 0  # sampled retries so far: each one's seed
        self._before: TestResult | None = None  # the latest test run before a plan (test_first)

    # ---- one request -----------------------------------------------------------------------
    def route(self, request: str, role: str = "auto"):
        """The routing decision for ``request`` now (after a plan, the router knows it)."""
        return decide(request, role, after_plan=self.plan is not None)

    def prepare(self, request: str, role: str = "auto", *, plan: Plan | str | None = None,
                history: list[ChatMessage] | None = None, author: str = "you",
                extra_files: tuple[str, ...] = (), intent: str | None = None,
                sampling: Sampling | None = None) -> Routed:
        """Route ``request`` once and build its turn. ``plan`` overrides the current plan (an
        edited hand-off); ``intent`` is the core's own rounds' (a fix is an edit, whatever words
        the test output holds); ``sampling`` this turn's, instead of the role's (a re-plan).
        A hand-off (``plan`` given, to the coder) of a plan handed off before is sampled.
        Raises DuetError for a bad role."""
        decision = self.route(request, role)
        handoff = plan is not None and decision.role == "coder"
        if intent is not None and intent != decision.intent:
            decision = dataclasses.replace(decision, intent=intent, why=f"asked for {intent}; {decision.why}")
        if isinstance(plan, str):
            plan = Plan(plan, self.plan.message_id if self.plan else None)
        if decision.role == "coder" and plan is None:
            plan = self.plan
        if decision.role != "coder":
            plan = None
        notes: list[str] = []
        if author == "you" and self.workspace is not None:  # "fix the bug in calc.py": calc.py joins the context
            ctx = self.workspace.context
            for rel in ctx.named_in(request):
                if ctx.add(rel).added:
                    notes.append(f"{rel} joined the context (named in the request).")
            for rel, name in ctx.defining(request):  # "why does only_odd fail?": the file that defines it
                if ctx.add(rel).added:
                    notes.append(f"{rel} joined the context (it defines {name}, named in the request).")
        if decision.intent == "review" and decision.role == "reasoner":
            files = self.review_material(notes)
        else:
            files = self.context_files(self.config.role(decision.role), notes, extra=extra_files)
        if author == "you" and not files and demo.is_demo_model(self.config.role(decision.role).path):
            notes.append(Caution(demo.NO_FILE_NOTE))  # it is still sent: the user asked
        editable, new_paths = [], None  # what the coder may edit: the workspace's files, not an outline
        if decision.role == "coder" and self.workspace is not None:
            ours = set(self.workspace.context.files) | set(extra_files)
            editable = [(p, t) for p, t in files if p in ours]
            if plan is not None:  # after a plan: the files it says to create that are not there yet, no others
                from app.workspace.context import paths_to_create  # a workspace is open: its package is loaded

                new_paths = [p for p in paths_to_create(f"{plan.text}\n{request}") if not (self.workspace.root / p).exists()]
        if handoff and sampling is None:
            sampling = self._handoff_sampling(plan.text, notes)
        retry = sampling is not None  # asked again (a retry, a plan handed off before): sampled
        config = self.config
        if sampling is not None:
            config = dataclasses.replace(config, **{decision.role: dataclasses.replace(config.role(decision.role),
                                                                                       sampling=sampling)})
        turn = Turn(config, request, decision, history=list(self.history if history is None else history),
                    plan=plan.text if plan is not None else None, files=files, editable=editable, new_paths=new_paths,
                    session_id=self.session_id,
                    store=self._store(), handoff_from=plan.message_id if plan is not None else None,
                    save=self.save, author=author, retry=retry)
        return Routed(turn, author, tuple(notes), tuple(file_names(files)))

    def prepare_handoff(self, request: str) -> Routed:
        """The coder's turn that implements the current plan of ``request`` (`duet run`): routed
        as forced to the coder, so a question ("why does add fail its test?") is an edit, not a
        request for tests (app.router)."""
        return self.prepare(request, "coder", plan=self.plan)

    def _handoff_sampling(self, plan: str, notes: list[str]) -> Sampling | None:
        """None for a plan's first hand-off; for a later one the coder's, sampled afresh."""
        words = " ".join(plan.split())
        before = self._handoffs.get(words, 0)
        self._handoffs[words] = before + 1
        if not before:
            return None
        sampling = self._retry_sampling("coder")
        notes.append(f"This plan went to the coder {before} time(s) before: its reply is sampled "
                     f"(temperature {sampling.temperature:g}, seed {sampling.seed}).")
        return sampling

    def _retry_sampling(self, role: str) -> Sampling:
        """``role``'s sampling for a retry: with a seed no earlier retry here used (sampled where greedy)."""
        self._retries += 1
        return retry_sampling(self.config.role(role).sampling, seed=self._retries)

    def prepare_replan(self, *, sampling: Sampling | None = None, reasons: Sequence[str] = (),
                       author: str = "duet → reasoner · re-plan") -> Routed:
        """The re-plan turn for the latest plan's request (`replan.py`): on the conversation as it
        was before the first plan; ``reasons``, why the latest plan never reached the tests.
        Raises DuetError when there is no plan to re-plan."""
        if self.attempts is None:
            raise DuetError("nothing to re-plan: ask the reasoner for a plan first")
        self.attempts.repeated = False
        text = self.attempts.request_text(self.config.reasoner.history, reasons)
        routed = self.prepare(text, "reasoner", intent=self.attempts.intent, sampling=sampling,
                              history=self.attempts.history, author=author)
        self._replan_turn = routed.turn
        routed.turn.failed_changes = frozenset(self.attempts.failed)
        failed = next((t for t in (self.attempts.test, self._before) if t is not None and t.status == "failed"), None)
        if self.config.workspace.test_first and failed is not None:  # the latest failure (of the last plan's
            # change, else from before the plan): in the prompt unless the re-plan request has it already
            told = bool(self.attempts.tried) and failed is self.attempts.test  # in the re-plan request
            self._show_failure(routed.turn, failed, in_prompt=self.config.reasoner.history and not told, reach=True)
        return routed

    def _tests_first(self, turn: Turn) -> bool:
        """Whether the tests run before ``turn`` (``[workspace] test_first``): a plan, review or
        analysis the user asked the reasoner for, with a test command and a workspace."""
        return (self.config.workspace.test_first and bool(self.test_command) and self.workspace is not None
                and turn.route.role == "reasoner" and turn.author == "you"
                and turn.route.intent in ("design", "review", "analysis"))

    def reproduce(self, turn: Turn, cancel: threading.Event | None = None) -> Iterator:
        """Run the test command before ``turn`` is asked (round 0; ``{changed}``: the files it
        shows). When the tests fail, what the reasoner gets follows `_show_failure`. Returns the
        TestResult."""
        paths = [p for p in file_names(turn.files) if (self.workspace.root / p).is_file()]
        result = yield from self.test(0, cancel, changed=paths)
        self._before = result
        if result.status == "failed":
            self._show_failure(turn, result, in_prompt=self.config.reasoner.history, reach=False)
            shown = "is shown the failure" if turn.failure else "is asked the request alone (history off)"
            toward = f" and reads toward {', '.join(sorted(turn.failing))}" if turn.failing and turn.quotes_from() else ""
            yield Notice(f"The tests fail before the plan: the reasoner {shown}{toward}.")
        return result

    def _show_failure(self, turn: Turn, result: TestResult, *, in_prompt: bool, reach: bool) -> None:
        """``result``'s trimmed output follows ``turn``'s request (``in_prompt``: not for a
        reasoner without ``history``, a small model trained on single requests, which other text
        only leads astray), and the functions it reaches focus the reading its ``exact_quotes``
        hold: a first plan's, the ones the output shows called (``reach=False``); a re-plan's,
        all those call too (the fault may be in a helper)."""
        from app.prompts import detect_lang, failing_tests_text

        output = failure_summary(result.output, limit=REPLAN_OUTPUT_CHARS)
        text = failing_tests_text(result.command, output, detect_lang(turn.route.text)) if in_prompt else ""
        files = [(p, t) for p, t in turn.files if isinstance(t, str)]
        turn.after_failing_tests(text, failing_functions(result.output, files, reach=reach))

    def undo_attempt(self) -> list[str]:
        """Undo the latest plan's applied change (before a re-plan); the paths put back."""
        if self.attempts is None or not self.attempts.applied or self.workspace is None:
            return []
        return self.undo()

    def undo(self, force: bool = False) -> list[str]:
        """Undo the last applied change set (app.workspace's undo; raises its HistoryError); the
        paths put back. The latest plan's change then no longer stands."""
        if self.workspace is None:
            raise DuetError("no workspace: nothing to undo")
        paths = self.workspace.undo(force=force)
        if self.attempts is not None:
            self.attempts.applied = False
        return paths

    def run(self, routed: Routed, cancel: threading.Event | None = None,
            approve: Approve | None = None, *, edits: bool = True) -> Iterator:
        """The request's events, ending with FlowEnded. ``edits=False``: a coder's reply is the
        answer, as it stands (`duet ask`): no edit rounds, retries or review after it."""
        cancel = cancel or threading.Event()
        turn = routed.turn
        before = None
        if self._tests_first(turn):
            before = yield from self.reproduce(turn, cancel)
            if before.status == "cancelled" or cancel.is_set():
                yield FlowEnded("cancelled")
                return
        yield from self._stream(turn, cancel)
        result = turn.result
        if before is not None:  # the run before the plan, stored with the reply it came before
            self._record_test(before, 0, result.message_id)
        if result.status != "done":
            yield FlowEnded("cancelled" if result.status == "cancelled" else "failed",
                            reasons=(result.failed.message,) if result.failed else ())
            return
        if turn.route.role != "coder" or not edits or not self._has_edits(result.answer):
            yield FlowEnded("answered")
            return
        yield from self._implement(turn, cancel, approve)

    # ---- the steps of a request ------------------------------------------------------------
    def _stream(self, turn: Turn, cancel: threading.Event, author: str | None = None) -> Iterator:
        """One turn's events; then the history and plan are updated and TurnEnded says so."""
        if author is not None:
            yield Routed(turn, author, (), tuple(file_names(turn.files)))
        events = turn.events(cancel, backend=self.backend)
        try:
            yield from events
        finally:
            events.close()
        result = turn.result
        if turn.session_id is not None:
            self.session_id = turn.session_id
        more = False
        if result.status == "done":
            self.history += [ChatMessage("user", turn.prompt), ChatMessage("assistant", result.answer)]
            answered = bool(result.answer.strip())
            if turn.route.role == "reasoner" and turn.author == "you":  # a request of the user's: its plans start
                self.attempts = Attempts(turn.route.text or turn.request, turn.route.intent, list(turn.history),
                                         [result.answer] if answered else [])
            elif turn is self._replan_turn and answered and self.attempts is not None:
                self.attempts.add(result.answer)
                if self.attempts.repeated:
                    yield Notice("The reasoner gave a plan already tried: handing it off again samples "
                                 "the coder's reply afresh.", "warning")
            if turn.route.role == "reasoner" and answered:
                self.plan = Plan.from_answer(result.answer, result.message_id)
                yield PlanReady(self.plan)
            more = turn.route.role == "coder" and self._has_edits(result.answer)
        yield TurnEnded(turn, more)

    def _has_edits(self, answer: str) -> bool:
        from app.workspace.edit_blocks import parse

        if self.workspace is None:
            return False
        blocks, problems = parse(answer)
        return bool(blocks or problems)

    def _implement(self, first: Turn, cancel: threading.Event, approve: Approve | None) -> Iterator:
        """Edit rounds, review, apply, test, fix: until the tests pass or the rounds run out."""
        from app.prompts import detect_lang

        lang = detect_lang(first.request)
        group = f"request-{uuid.uuid4().hex[:12]}"  # every apply of this request: one undo
        source, reply = first, first.result.answer
        applied_any = False
        for number in range(1, self.rounds + 1):
            try:
                changes = yield from self._revise(reply, cancel, lang, first)
            except DuetError as exc:
                yield Notice(str(exc), "error")
                yield FlowEnded("failed", number, (str(exc),))
                return
            if cancel.is_set():
                yield FlowEnded("cancelled", number)
                return
            reasons = tuple(f"{r.path}: {r.reason.splitlines()[0] if r.reason else ''}" for r in changes.rejected)
            if changes.rejected:
                yield Notice(f"{len(changes.rejected)} edit block(s) rejected:\n" + "\n".join(reasons), "warning")
            if not changes.edits:
                if changes.rejected or self.config.coder.history or number == self.rounds:
                    yield FlowEnded("failed" if changes.rejected or applied_any else "answered", number, reasons)
                    return
                # a coder without history whose blocks all change nothing (each REPLACE its
                # SEARCH): the same request again, sampled, as after a failing test round
                author = f"duet → coder · retry {number} of {self.rounds - 1}"
                yield Notice("The coder's edit changes nothing: asking it again, sampled.", "warning")
                source = self._ask_again(first, author)
                reply = yield from self._reply(source, cancel, author, number)
                if reply is None:
                    return
                continue
            yield ChangeProposed(changes, number)
            accepted = approve(changes) if approve is not None else None
            if accepted is None or not accepted.edits:
                yield ChangeDeclined(changes, number)
                yield FlowEnded("failed" if applied_any else "proposed", number, reasons)
                return
            try:
                applied = self.workspace.apply(accepted, group=group)
            except DuetError as exc:
                yield Notice(str(exc), "error")
                yield FlowEnded("failed", number, (str(exc),))
                return
            applied_any = True
            if self.attempts is not None:
                self.attempts.applied_edits(accepted)
            if self.store is not None and source.result.message_id is not None:
                self.store.record_applied(source.result.message_id, accepted.summary())
            yield ChangeApplied(accepted, applied, number)
            if not self.test_command:
                yield FlowEnded("applied" if not changes.rejected else "failed", number, reasons)
                return
            result = yield from self.test(number, cancel, message_id=source.result.message_id,
                                          changed=sorted({e.path for e in accepted.edits}))
            if result.passed:
                yield FlowEnded("passed" if not changes.rejected else "failed", number, reasons)
                return
            if result.status == "no_tests":  # nothing to fix: the change stands, untested
                yield FlowEnded("applied" if not changes.rejected else "failed", number,
                                reasons + ("the test command ran no tests",))
                return
            if result.status == "cancelled" or cancel.is_set():
                yield FlowEnded("cancelled", number)
                return
            if number == self.rounds:
                yield FlowEnded("failed", number, (f"tests still fail after {number} round(s)",))
                return
            if self.config.coder.history:
                author = f"duet → coder · test fix {number} of {self.rounds - 1}"
                source = self._fix_turn(result, changes, lang, author)
            else:
                author = f"duet → coder · test retry {number} of {self.rounds - 1}"
                try:
                    source = yield from self._retry_turn(first, author)
                except DuetError as exc:  # the files changed since the apply: nothing to retry from
                    yield Notice(str(exc), "error")
                    yield FlowEnded("failed", number, (str(exc),))
                    return
            reply = yield from self._reply(source, cancel, author, number)
            if reply is None:
                return

    def _reply(self, turn: Turn, cancel: threading.Event, author: str, number: int):
        """Stream a coder turn asked within round ``number``: its answer, or None once the flow
        has ended (cancelled, failed)."""
        yield from self._stream(turn, cancel, author=author)
        if turn.result.status != "done":
            yield FlowEnded("cancelled" if turn.result.status == "cancelled" else "failed", number)
            return None
        return turn.result.answer

    def _revise(self, reply: str, cancel: threading.Event, lang: str, first: Turn):
        """`app.workspace.revise`'s loop, each retry a visible coder turn in this conversation:
        told why its blocks did not apply; a coder without history (trained on single requests,
        which that prompt only leads astray, and greedy, to the same reply each round) is asked
        ``first``'s request again instead, sampled."""
        from app.workspace.revise import MAX_ROUNDS, revising

        def ask_coder(prompt: str, number: int):
            if cancel.is_set():
                return None
            author = f"duet → coder · retry {number} of {MAX_ROUNDS}"
            if self.config.coder.history:
                yield Notice(f"Some edit blocks did not apply: asking the coder again (round {number} of {MAX_ROUNDS}).")
                turn = self.prepare(prompt, "coder", intent="edit", author=author).turn
            else:
                yield Notice(f"Some edit blocks did not apply: asking the coder its request again, sampled "
                             f"(round {number} of {MAX_ROUNDS}).")
                turn = self._ask_again(first, author)
            yield from self._stream(turn, cancel, author=author)
            return turn.result.answer if turn.result.status == "done" else None

        changes = yield from revising(self.workspace, reply, ask_coder, lang=lang)
        return changes

    def _retry_turn(self, first: Turn, author: str):
        """A coder without history (one trained on single requests, which a fix-forward prompt
        only leads astray) is asked the first turn's request again, on the files as they were
        before it (this request's applies undone), sampled afresh."""
        undone = self.undo()
        yield Notice(f"The tests still fail: undid {', '.join(undone)}; asking the coder again, sampled.")
        return self._ask_again(first, author)

    def _ask_again(self, first: Turn, author: str) -> Turn:
        """The first turn's request again (its plan, its intent), the coder's reply sampled afresh."""
        return self.prepare(first.request, "coder", plan=first.plan, intent=first.route.intent, author=author,
                            sampling=self._retry_sampling("coder")).turn

    def _fix_turn(self, result: TestResult, changes, lang: str, author: str) -> Turn:
        from app.prompts import render

        text = render(f"coder-test-fix.{lang}", command=result.command,
                      output=failure_summary(result.output).replace("```", "'''"))
        paths = tuple(e.path for e in changes.edits)
        return self.prepare(text, "coder", extra_files=paths, intent="edit", author=author).turn

    def test(self, number: int, cancel: threading.Event | None = None, *, message_id: int | None = None,
             command: str | None = None, changed: Sequence[str] = ()) -> Iterator:
        """Run the test command once (TestStarted, TestFinished), recorded in the session;
        ``changed``: the paths the apply before it changed (for ``{changed}`` in the command)."""
        command = command or self.test_command
        if not command:
            raise DuetError("no test command: set [workspace] test in the config, or pass --test / /test CMD")
        command = with_changed(command, changed)
        if self.workspace is None:
            raise DuetError("no workspace to test")
        yield TestStarted(number, command)
        result = run_tests(command, self.workspace.root, timeout=self.test_timeout, cancel=cancel)
        if number > 0:  # a run before a plan (round 0) is no plan's, and is recorded with its reply (`run`)
            if self.attempts is not None:
                self.attempts.tested(result)
            self._record_test(result, number, message_id)
        yield TestFinished(number, result)
        return result

    def _record_test(self, result: TestResult, number: int, message_id: int | None) -> None:
        if self.save and self.session_id is not None and self.store is not None:
            self.store.record_test(self.session_id, message_id=message_id, round=number, command=result.command,
                                   exit_code=result.exit_code, status=result.status, output=result.output)

    # ---- material ----------------------------------------------------------------------------
    def context_files(self, rc=None, notes: list[str] | None = None, *, extra=()) -> list[tuple[str, str]]:
        """The files in context as (path, text); when they do not fit ``rc``'s window (less the
        answer's room), their outline instead. ``extra``: more files to send (edited ones)."""
        if self.workspace is None:
            return []
        ctx = self.workspace.context
        names = list(ctx.files) + [p for p in extra if p not in ctx.files]
        if rc is not None and rc.context and ctx.files and not extra:
            reserve = min(rc.sampling.max_tokens, rc.context // 2) + 512  # the answer and the template
            text, full = ctx.for_prompt(rc.context, reserve=reserve)
            if not full:
                if notes is not None:
                    notes.append(Caution("The files in context do not fit the model's window: sending their outline."))
                return [("outline of the files in context (too large to send whole)", text)]
        out = []
        for rel in names:
            text = ctx.read(rel)
            if text is not None:
                out.append((rel, text))
        return out

    def review_material(self, notes: list[str] | None = None) -> list[tuple[str, str]]:
        """/review: the files in context, else the uncommitted changes (the note says which)."""
        if self.workspace is None:
            return []
        review = self.workspace.review()
        if review.note and notes is not None:
            notes.append(review.note)
        if review.kind == "files":
            return self.context_files()
        if review.kind == "diff":
            return [("uncommitted changes (git diff HEAD)", review.text)]
        return []

    # ---- the conversation as a whole -------------------------------------------------------------
    def forget_last(self) -> None:
        """Drop the last exchange from the history (regenerate)."""
        if len(self.history) >= 2:
            self.history = self.history[:-2]

    def clear(self) -> None:
        self.history, self.plan, self.session_id, self.attempts = [], None, None, None
        self._before = None
        self._handoffs.clear()
        self._retries = 0

    def resume(self, sid: int) -> list:
        """Continue stored session ``sid``: its finished exchanges become the history and its
        last plan the plan. Returns the stored messages (for a view to draw)."""
        store = self._store(required=True)
        messages = store.messages(sid)
        self.session_id, self.history, self.plan, self.attempts = sid, [], None, None
        last_user = ""
        for m in messages:
            if m.kind == "user":
                last_user = m.answer
                continue
            if m.status == "done":
                self.history += [ChatMessage("user", m.prompt or last_user), ChatMessage("assistant", m.answer)]
                if m.role == "reasoner" and m.answer.strip():
                    self.plan = Plan.from_answer(m.answer, m.id)
        return messages

    def rewind(self, message_id: int) -> list:
        """Take the conversation back to before message ``message_id`` (a user message or a reply;
        a reply takes its request with it). Files are not touched. Survives a restart."""
        store = self._store(required=True)
        if self.session_id is None:
            raise DuetError("nothing to rewind: no saved session")
        messages = store.messages(self.session_id)
        ids = [m.id for m in messages]
        if message_id not in ids:
            raise DuetError(f"message {message_id} is not in this session")
        at = ids.index(message_id)
        if messages[at].kind != "user" and at > 0 and messages[at - 1].kind == "user":
            at -= 1  # a reply goes with the request that asked for it
        store.rewind(self.session_id, messages[at].id)
        return self.resume(self.session_id)

    def _store(self, required: bool = False):
        if self.store is None and (self.save or required):
            from app.store import SessionStore

            self.store = SessionStore.open()
        return self.store
