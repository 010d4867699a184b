"""`duet run`: the whole plan → code → apply → test flow, headless, over the conversation core.

The reasoner plans (unless ``--role coder`` or the router sends the request straight to the
coder); the plan (never its trace) goes to the coder with the files given by ``--file``; the
coder's edits are checked as in the TUI; ``--apply`` writes them (atomically, one undo for
all rounds), and the test command (``--test`` or ``[workspace] test``) runs after each apply,
its trimmed failure going back to the coder for up to ``--rounds`` rounds. With ``--replans N``
(default ``[workspace] replans``: 0, the demo's 4), when that still ends failed after the
reasoner's plan, the change is undone and the reasoner asked again, up to N times
(``Conversation.prepare_replan``: the request with the plans tried and how the last one failed,
sampled with seed k), so the tests choose among its plans; a plan already tried goes to the
coder again, its reply sampled. Only the user's command ever runs.

stdout: the unified diff of the edits (or, with ``--json``, one JSON object). stderr: progress
(who is working, rounds, test results) and, unless ``--json``, the thinking trace and answers.
Exit 0 for proposed/applied/passed, 1 for failed, 2 for bad input, 130 when interrupted.
"""

from __future__ import annotations

import json
import sys
import threading

from app.ask import ctrl_c_sets, mute_stdout
from app.config import Config
from app.conversation import (ChangeApplied, ChangeDeclined, ChangeProposed, Conversation, FlowEnded, Notice,
                              Routed, TestFinished, TestStarted, TurnEnded, failure_summary)
from app.conversation.replan import retry_sampling
from app.errors import DuetError, UsageError
from vocab.events import AnswerDelta, Failed, ModelUnusable, ServerUnreachable, ThinkingDelta

EXIT = {"proposed": 0, "applied": 0, "passed": 0, "failed": 1}


def run_request(args, config: Config) -> int:
    from app.workspace import Workspace

    request = " ".join(args.request).strip()
    if not request:
        raise UsageError("duet run: the request is empty")
    if args.rounds < 1:
        raise UsageError(f"duet run: --rounds must be at least 1, got {args.rounds}")
    replans = args.replans if args.replans is not None else config.workspace.replans
    if replans < 0:
        raise UsageError(f"duet run: --replans must be 0 or more, got {replans}")
    workspace = Workspace.from_config(args.workspace, config)
    for path in args.file or ():
        added = workspace.context.add(path)
        if added.skipped and not added.added:
            raise UsageError(f"duet run: --file {path}: {added.skipped[0][1]}")
    test = args.test if args.test is not None else (config.workspace.test or None)
    conv = Conversation(config, workspace=workspace, save=not args.no_save, test_command=test, rounds=args.rounds)
    report = Report(stream=not args.json)
    cancel = threading.Event()
    approve = (lambda changes: changes) if args.apply else None
    with ctrl_c_sets(cancel):
        # A reasoner asked for by --role is asked for a plan, whatever the router would have said.
        intent = "design" if args.role == "reasoner" else None
        routed = conv.prepare(request, args.role, intent=intent)
        report.route = routed.route
        asked = routed.route.text or request  # the request without its /prefix: the coder's, every attempt
        status = attempt(conv, routed, asked, report, cancel, approve)
        reasons: list[str] = []
        for number in range(1, replans + 1):
            if not (status == "failed" and routed.route.role == "reasoner" and report.failed is None
                    and not cancel.is_set()):
                break  # a plan that failed (its edits did not apply, or the tests); not a model or server error
            try:
                undone = conv.undo_attempt()
            except DuetError as exc:
                report.reasons.append(f"could not undo the change to re-plan: {exc}")
                break
            report.say(f"the plan failed{': undid ' + ', '.join(undone) if undone else ''}; asking the reasoner "
                       f"for another plan ({number} of {replans})")
            reasons = list(report.reasons)
            report.new_attempt(number)
            routed = conv.prepare_replan(sampling=retry_sampling(config.reasoner.sampling, seed=number),
                                         reasons=reasons, author=f"duet → reasoner · re-plan {number} of {replans}")
            status = attempt(conv, routed, asked, report, cancel, approve)
    if cancel.is_set() and status not in EXIT:
        status = "cancelled"
    report.status = status
    report.session_id = conv.session_id
    try:
        report.finish(as_json=args.json)
    except BrokenPipeError:
        mute_stdout()
    if report.failed is not None and not report.edits:
        where = {ServerUnreachable: "url", ModelUnusable: "path"}.get(type(report.failed))
        if where is not None:
            print(f"duet: {config.source}: {report.failed_role}.{where}: {report.failed.message}", file=sys.stderr)
            return 2
    if status == "cancelled":
        print("duet: cancelled", file=sys.stderr)
        return 130
    return EXIT.get(status, 1)


def attempt(conv: Conversation, routed, request: str, report: "Report", cancel, approve) -> str:
    """One request through the core: its turn, and after a reasoner's plan the coder's hand-off
    (``request``: what the coder is told was asked). A re-plan's plan already tried is handed
    off again: the coder's reply is then sampled (`Conversation.prepare`), so a plan that was
    right is not lost to one unlucky reply."""
    report.show(routed)
    status = report.follow(conv.run(routed, cancel, approve))
    if status == "answered" and routed.route.role == "reasoner" and not cancel.is_set():
        if not routed.turn.result.answer.strip():  # all thinking, or nothing: no plan to hand off
            report.reasons.append("the reasoner gave no plan")
            return "failed"
        report.plan = conv.plan.text
        handoff = conv.prepare_handoff(request)
        report.show(handoff)
        status = report.follow(conv.run(handoff, cancel, approve))
    if status == "answered":  # the coder answered without a single edit block
        status = "failed"
        report.reasons.append("the coder proposed no edits")
    return status


class Report:
    """Follows the core's events: progress to stderr, the result gathered for the end."""

    def __init__(self, stream: bool):
        self.stream = stream
        self.route = None
        self.plan: str | None = None
        self.thinking_parts: list[str] = []
        self.edits: list[dict] = []
        self.rejected: list[dict] = []
        self.tests: list[dict] = []
        self.rounds = 0
        self.replans = 0
        self.reasons: list[str] = []
        self.status = "failed"
        self.session_id: int | None = None
        self.failed: Failed | None = None
        self.failed_role = ""
        self._role = ""
        self._open = ""  # "thinking" | "answer": the run of text being written to stderr

    def new_attempt(self, number: int) -> None:
        """A re-plan: the undone attempt's edits and reasons are no longer the result (its test
        runs stay in ``tests``, each with its attempt)."""
        self.replans = number
        self.edits, self.rejected, self.reasons, self.thinking_parts = [], [], [], []

    def follow(self, events) -> str:
        """Show ``events`` as they come; the flow's end status."""
        status = "failed"
        for event in events:
            self.show(event)
            if isinstance(event, FlowEnded):
                status = event.status
                self.rounds = max(self.rounds, event.rounds)
                self.reasons += [r for r in event.reasons if r not in self.reasons]
        return status

    def show(self, event) -> None:
        if isinstance(event, ThinkingDelta):
            if self._role == "reasoner":
                self.thinking_parts.append(event.text)
            self._write("thinking", event.text)
        elif isinstance(event, AnswerDelta):
            self._write("answer", event.text)
        elif isinstance(event, Failed):
            self.failed, self.failed_role = event, self._role
            self.say(f"{self._role} failed: {event.message}")
        elif isinstance(event, Routed):
            route, rc = event.route, event.turn.role_cfg
            self._role = route.role
            who = "" if event.author == "you" else f" ({event.author.split('·', 1)[-1].strip()})"
            self.say(f"{route.role} · {rc.label} · {route.intent}{who} — {route.why}")
            for note in event.notes:  # a file the request named joined the context, ...
                self.say(note)
        elif isinstance(event, TurnEnded):
            self._end_run()
            if event.turn.route.role == "reasoner" and event.turn.result.status == "done":
                self.plan = event.turn.result.answer
        elif isinstance(event, Notice):
            self.say(event.text)
        elif isinstance(event, ChangeProposed):
            self.rounds = max(self.rounds, event.round)
            self.rejected = [{"path": r.path, "reason": r.reason} for r in event.changes.rejected]
            for e in event.changes.edits:
                self.edits.append({"path": e.path, "diff": e.diff, "applied": False, "round": event.round})
            self.say(f"round {event.round}: proposed {event.changes.summary()}")
        elif isinstance(event, ChangeApplied):
            applied = set(event.applied.paths)
            for edit in self.edits:
                if edit["round"] == event.round and edit["path"] in applied:
                    edit["applied"] = True
            self.say(f"round {event.round}: applied {', '.join(event.applied.paths)}")
        elif isinstance(event, ChangeDeclined):
            self.say(f"round {event.round}: not applied (pass --apply to write the edits)")
        elif isinstance(event, TestStarted):
            self.say(f"{_when(event.round)}: running {event.command}")
        elif isinstance(event, TestFinished):
            r = event.result
            self.tests.append({"round": event.round, "attempt": self.replans, "command": r.command,
                               "exit_code": r.exit_code, "status": r.status, "output": r.output,
                               "seconds": round(r.seconds, 3)})
            code = f"exit {r.exit_code}" if r.exit_code is not None else r.status
            said = "no tests ran" if r.status == "no_tests" else f"tests {'passed' if r.passed else r.status}"
            self.say(f"{_when(event.round)}: {said} ({code}, {r.seconds:.1f} s)")
            if not r.passed and self.stream:
                sys.stderr.write(failure_summary(r.output)[-2000:] + "\n")

    def say(self, line: str) -> None:
        self._end_run()
        print(f"duet: {line}", file=sys.stderr, flush=True)

    def _write(self, kind: str, text: str) -> None:
        if self.stream and text:
            if self._open and self._open != kind:
                self._end_run()  # the thinking ends, the answer begins: a line between them
            sys.stderr.write(text)
            sys.stderr.flush()
            self._open = kind

    def _end_run(self) -> None:
        if self._open:
            sys.stderr.write("\n")
            self._open = ""

    def as_json(self) -> dict:
        return {
            "route": {"role": self.route.role, "intent": self.route.intent} if self.route else None,
            "plan": self.plan, "thinking": "".join(self.thinking_parts), "edits": self.edits,
            "rejected": self.rejected, "tests": self.tests, "rounds": self.rounds, "replans": self.replans,
            "status": self.status,
            "reasons": self.reasons, "session_id": self.session_id,
        }

    def finish(self, as_json: bool) -> None:
        self._end_run()
        if as_json:
            print(json.dumps(self.as_json(), ensure_ascii=False), flush=True)
            return
        for edit in self.edits:
            sys.stdout.write(edit["diff"])
        sys.stdout.flush()
        tail = f" ({'; '.join(self.reasons)})" if self.reasons and self.status != "passed" else ""
        print(f"duet: {self.status}{tail}", file=sys.stderr, flush=True)


def _when(round: int) -> str:
    """A test run's place in the flow: before the plan (round 0, ``test_first``), or its round."""
    return "before the plan" if round == 0 else f"round {round}"
