"""`duet ask`: one turn, headless, over the conversation core. The answer goes to stdout,
the thinking to stderr. The workspace (the current folder, ``--workspace``, or with ``--demo``
a fresh copy of the sample project) gives the files the request names ("review calc.py", "why
does add fail?"): they join the context, as in the chat. It is one turn: a coder's edit blocks
are its answer, not checked, retried or written (`duet run` does that).

Notes about what was sent (a file the request named joined the context, a demo model given
no file) and the core's notices go to stderr as ``duet: …`` lines, or under "notes" with
`--json`, which prints one object instead. A fault is one line on stderr and exit 1, with the
partial answer still printed; a server that refuses the connection before anything was
sent is a configuration problem (exit 2, naming the file and key). Ctrl-C cancels the
turn promptly (exit 130), keeping and saving what streamed.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import sys
import threading
import time

from vocab.events import AnswerDelta, ModelUnusable, ThinkingDelta
from app.config import Config
from app.conversation import Conversation
from app.conversation.events import Notice
from app.turn import Turn, TurnResult

_END = object()
CANCEL_GRACE_S = 5.0  # after Ctrl-C, how long the backend gets to wind down


def run_ask(args, config: Config) -> int:
    text = " ".join(args.prompt).strip()
    if not text:
        from app.errors import UsageError

        raise UsageError("duet ask: the prompt is empty")
    from app.workspace import Workspace

    root = getattr(args, "workspace", None)  # the CLI's: "." or --workspace (--demo: the sample project's copy)
    workspace = Workspace.from_config(root, config) if root is not None else None
    conversation = Conversation(config, workspace=workspace, save=not args.no_save)
    routed = conversation.prepare(text, args.role)
    turn = routed.turn
    cancel = threading.Event()
    events: queue.Queue = queue.Queue()

    def work():
        try:
            for event in conversation.run(routed, cancel, edits=False):  # one turn: its answer
                events.put(event)
        except BaseException as exc:  # handed to the main thread, which reports it
            events.put(exc)
        finally:
            events.put(_END)

    worker = threading.Thread(target=work, name="duet-ask", daemon=True)
    printer = _Printer(stream=not args.json)
    for note in routed.notes:
        printer.note(note)
    with ctrl_c_sets(cancel):
        worker.start()
        deadline = None
        while True:
            if cancel.is_set() and deadline is None:
                deadline = time.monotonic() + CANCEL_GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                break  # the backend did not stop in time: leave it behind
            try:
                item = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            try:
                printer.show(item)
            except BrokenPipeError:  # `duet ask … | head`: the reader left, stop the model
                mute_stdout()
                printer.stream = False
                cancel.set()
    interrupted = cancel.is_set()
    try:
        printer.close()
    except BrokenPipeError:
        mute_stdout()
    warning = getattr(turn.store, "warning", None)
    if warning:
        print(f"duet: warning: {warning}", file=sys.stderr)
    result = turn.result
    if args.json:
        try:
            print(json.dumps(as_json(turn, result, printer.notes), ensure_ascii=False), flush=True)
        except BrokenPipeError:
            mute_stdout()
    return _report(turn, result, config, interrupted)


def mute_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@contextlib.contextmanager
def ctrl_c_sets(cancel: threading.Event):
    """While the turn runs, Ctrl-C (SIGINT) cancels it instead of raising mid-print."""
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    except ValueError:  # not the main thread (tests calling run_ask in process)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def as_json(turn: Turn, r: TurnResult, notes: list[str] | None = None) -> dict:
    usage = {"prompt_tokens": r.usage.prompt_tokens if r.usage else None,
             "completion_tokens": r.usage.completion_tokens if r.usage else None}
    timings = {"first_token_s": _round(r.done.first_token_s) if r.done else None,
               "total_s": _round(r.done.total_s) if r.done else None}
    return {"role": r.role, "model": r.model, "thinking": r.thinking, "answer": r.answer, "usage": usage,
            "timings": timings, "intent": turn.route.intent, "why": turn.route.why, "status": r.status,
            "error": r.failed.message if r.failed else None, "session_id": r.session_id, "notes": list(notes or ())}


def _report(turn: Turn, r: TurnResult, config: Config, interrupted: bool) -> int:
    if r.failed is not None:
        if r.unreachable and not (r.thinking or r.answer):
            print(f"duet: {config.source}: {turn.route.role}.url: {r.failed.message}", file=sys.stderr)
            return 2
        if isinstance(r.failed, ModelUnusable):  # a model file or folder that cannot be loaded
            print(f"duet: {config.source}: {turn.route.role}.path: {r.failed.message}", file=sys.stderr)
            return 2
        print(f"duet: {r.failed.message}", file=sys.stderr)
        return 1
    if interrupted or r.status == "cancelled":
        print("duet: cancelled", file=sys.stderr)
        return 130
    if r.done is None:
        print("duet: the backend stopped without finishing", file=sys.stderr)
        return 1
    return 0


class _Printer:
    """Thinking to stderr, answer to stdout, as they stream (unless --json); notes to stderr
    (and kept in ``notes`` for --json)."""

    def __init__(self, stream: bool):
        self.stream = stream
        self.thinking_open = False
        self.last_answer = ""
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.stream:
            self._end_thinking()
            print(f"duet: {text}", file=sys.stderr, flush=True)

    def show(self, event) -> None:
        if isinstance(event, Notice):
            self.note(event.text)
            return
        if not self.stream:
            return
        if isinstance(event, ThinkingDelta):
            sys.stderr.write(event.text)
            sys.stderr.flush()
            self.thinking_open = True
        elif isinstance(event, AnswerDelta) and event.text:
            self._end_thinking()
            sys.stdout.write(event.text)
            sys.stdout.flush()
            self.last_answer = event.text

    def _end_thinking(self) -> None:
        if self.thinking_open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.thinking_open = False

    def close(self) -> None:
        if not self.stream:
            return
        self._end_thinking()
        if self.last_answer and not self.last_answer.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
