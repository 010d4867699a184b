"""One model turn: prompt → backend → events → session store.

`app.conversation.Conversation` makes every Turn (it routes once per request and hands the
decision in, so what the screen shows, what is recorded and what the prompt asks are one
decision). Iterate `turn.events(cancel)` — from a worker thread in the TUI. Every event is
recorded as it streams unless ``save=False``; afterwards `turn.result` holds what came back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from app.backends.base import failed_from
from vocab.events import Event, Failed, ServerUnreachable, Tally
from vocab.messages import ChatMessage
from app.config import Config, RoleConfig
from app.errors import DuetError

ROLE_PREFIX = {"reasoner": "/think", "coder": "/code"}  # the router's way to force a role


class TurnResult(Tally):
    """What came back for one turn, and where it was saved."""

    def __init__(self, role: str, model: str):
        super().__init__()
        self.role, self.model = role, model
        self.message_id: int | None = None
        self.user_message_id: int | None = None  # the request's own row
        self.session_id: int | None = None

    @property
    def unreachable(self) -> bool:
        return isinstance(self.failed, ServerUnreachable)


@dataclass
class Turn:
    """One request and its answer, under a routing decision already made (see ``decide``)."""

    config: Config
    request: str
    route: object  # app.router.Route: the one decision for this request
    history: Sequence[ChatMessage] = ()  # earlier turns: answers only (thinking is dropped anyway)
    plan: str | None = None  # the last reasoner answer, when the coder implements it (never its trace)
    files: Sequence = ()  # files in context, as app.prompts.build_prompt takes them
    editable: Sequence[tuple[str, str]] = ()  # of those, the workspace's own files (not an outline)
    new_paths: Sequence[str] | None = None  # files an edit may create where the prompt creates any; None: any path
    save: bool = True
    session_id: int | None = None  # None: a new session titled after the request
    store: object = None  # an open app.store.SessionStore; None: opened on first use
    handoff_from: int | None = None  # message id of the plan this turn implements
    lang: str | None = None
    author: str = "you"  # who asked: the user, or Duet itself ("duet → coder · test fix 1 of 2")
    failure: str = ""  # tests that fail before it is asked: the command and its trimmed output
    failing: frozenset[str] = frozenset()  # the functions that failure reaches (exact_quotes focuses on them)
    failed_changes: frozenset[tuple[str, str]] = frozenset()  # a re-plan's: changes (X, Y) tried that failed the tests
    retry: bool = False  # asked again, sampled (a retry, a re-plan, a plan handed off before)
    role_cfg: RoleConfig = field(init=False)
    prompt: str = field(init=False)  # the user message text the model gets
    result: TurnResult = field(init=False)

    def __post_init__(self):
        self.role_cfg = self.config.role(self.route.role)
        self.prompt = build_prompt_text(self.route, self.plan, self.files, self.lang, self.failure)
        self.result = TurnResult(role=self.route.role, model=self.role_cfg.label)

    def after_failing_tests(self, failure: str, failing: frozenset[str]) -> None:
        """Tests fail before this turn is asked (`Conversation.reproduce`): ``failure`` joins the
        request in its prompt, and ``failing``, the functions it reaches, focuses the reading
        its ``exact_quotes`` hold (app.exact_quotes.ReadingFocus)."""
        self.failure, self.failing = failure, frozenset(failing)
        self.prompt = build_prompt_text(self.route, self.plan, self.files, self.lang, self.failure)

    def messages(self) -> list[ChatMessage]:
        """What the backend gets: optional system prompt, the history (unless the role's config
        turns it off), this request."""
        out = [ChatMessage("system", self.role_cfg.system_prompt)] if self.role_cfg.system_prompt else []
        if self.role_cfg.history:
            out += [ChatMessage(m.role, m.content) for m in self.history if m.role != "system"]
        return out + [ChatMessage("user", self.prompt)]

    def grammar(self) -> str | None:
        """The edit-block grammar for this reply (``constrain_edits``): when the prompt asks for
        edits and there are workspace files to edit (and new files where the prompt may create
        them: an implementation, tests; ``new_paths`` only, when given), with ``known_names``
        the names of its REPLACE lines held to the prompt's, with ``plan_lines`` its lines to the
        files' and the plan's code and each SEARCH to take in the line the plan's one stated
        change is about (``plan_target``); else None (sampled freely)."""
        from app.prompts import asks_for_edits  # as build_prompt_text: `duet --help` need not load them
        from app.workspace.edit_grammar import edit_grammar, held_names, plan_lines, plan_target

        asks = asks_for_edits(self.route.role, self.route.intent)
        if not (self.role_cfg.constrain_edits and self.editable and asks):
            return None
        new_files = asks == "edits and new files"
        if new_files and self.new_paths is not None:
            new_files = list(self.new_paths)
        names = held_names(self.files, self.plan) if self.role_cfg.known_names else None  # the prompt's files and plan
        lines = plan_lines(self.files, self.plan) if self.role_cfg.plan_lines and not self.retry else None
        covers = plan_target(self.editable, self.plan) if lines is not None else None
        return edit_grammar(self.editable, new_files=new_files, names=names, lines=lines, covers=covers)

    def quotes_from(self):
        """What this reply's lines are held to (``exact_quotes``): the files the prompt shows
        numbered, the functions failing tests reach and the changes that failed them (an
        app.exact_quotes.Quotes); else None."""
        from app.exact_quotes import Quotes
        from app.prompts import numbers_files

        if not (self.role_cfg.exact_quotes and self.files and numbers_files(self.route.role)):
            return None
        return Quotes(tuple((path, text) for path, text in self.files), self.failing, self.failed_changes)

    def events(self, cancel: threading.Event | None = None, *, backend=None) -> Iterator[Event]:
        """Stream the answer; the last event is one Done or Failed. Recorded as it streams."""
        recorder = self._begin() if self.save else None
        result = self.result
        try:
            for event in self._stream(cancel, backend):
                if recorder is not None:
                    recorder.add(event)
                result.add(event)
                yield event
        finally:
            if recorder is not None:
                # The caller stopped listening before the end: that is a cancel.
                recorder.finish(None if (result.done or result.failed) else "cancelled")

    def _stream(self, cancel, backend) -> Iterator[Event]:
        try:
            if backend is None:
                from app.backends import make_backend

                backend = make_backend(self.role_cfg)
            yield from backend.stream(self.messages(), self.role_cfg.sampling, cancel=cancel, grammar=self.grammar(),
                                      quotes_from=self.quotes_from())
        except DuetError as exc:
            yield failed_from(exc)
        except Exception as exc:  # a backend bug must not take the app down with the text so far
            yield Failed(f"the {self.role_cfg.backend} backend failed: {type(exc).__name__}: {exc}")

    def _begin(self):
        if self.store is None:
            from app.store import SessionStore

            self.store = SessionStore.open()
        if self.session_id is None:
            self.session_id = self.store.create_session(_title(self.route.text or self.request))
        self.result.user_message_id = self.store.add_user_message(self.session_id, self.request,
                                                                  files=file_names(self.files), author=self.author)
        recorder = self.store.begin_reply(self.session_id, role=self.route.role, model=self.role_cfg.label,
                                          intent=self.route.intent, why=self.route.why, prompt=self.prompt,
                                          handoff_from=self.handoff_from)
        self.result.message_id, self.result.session_id = recorder.message_id, self.session_id
        return recorder


def decide(request: str, role: str = "auto", *, after_plan: bool = False):
    """The router's decision; a forced role keeps the router's intent only if it fits that role."""
    from app.router import route

    decision = route(request, after_plan=after_plan)
    if role == "auto" or role == decision.role:
        return decision
    if role not in ROLE_PREFIX:
        raise DuetError(f'unknown role "{role}": choose auto, reasoner or coder')
    forced = route(f"{ROLE_PREFIX[role]} {decision.text}", after_plan=after_plan)
    return type(decision)(role, forced.intent, f"--role {role} (the router said {decision.role}: {decision.why})",
                          decision.text, True)


def build_prompt_text(route, plan: str | None, files: Sequence, lang: str | None, failure: str = "") -> str:
    """The user message for ``route``; ``failure`` (failing tests' output) follows the request."""
    from app.prompts import build_prompt, detect_lang

    if not failure:
        return build_prompt(route.role, route.intent, route.text, plan=plan, files=files, lang=lang)
    return build_prompt(route.role, route.intent, f"{route.text}\n\n{failure}", plan=plan, files=files,
                        lang=lang or detect_lang(route.text))  # the request's language, not the output's


def file_names(files: Sequence) -> list[str]:
    names = []
    for f in files:
        if isinstance(f, (tuple, list)):
            f = f[0]
        names.append(str(getattr(f, "path", f)))
    return names


def _title(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
