"""What a conversation says besides the backends' events (`vocab.events`).

A request's stream is: ``Routed`` (a model turn begins, with the one routing decision),
that turn's backend events, ``TurnEnded``; then, for a coder's edits, ``ChangeProposed`` →
``ChangeApplied`` or ``ChangeDeclined`` → ``TestStarted``/``TestFinished`` → maybe another
``Routed`` (a fix round) …; always last, ``FlowEnded``. ``Notice`` lines are for the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Caution(str):
    """A note the user should not miss (what was sent differs from what they asked for): views
    show it as a warning, other notes as information. It is a ``str``, so printing views need
    nothing else."""

    __slots__ = ()


@dataclass(frozen=True)
class Routed:
    """A model turn begins. ``turn`` is the prepared `app.turn.Turn` (its ``route``, ``role_cfg``,
    ``files``); ``author`` names who asks ("you", or "duet → coder · …" for the core's own rounds);
    ``notes`` are lines for the user about what was sent (an outline instead of files, …;
    ``Caution`` for those that are warnings)."""

    turn: object
    author: str = "you"
    notes: tuple[str, ...] = ()
    file_names: tuple[str, ...] = ()

    @property
    def route(self):
        return self.turn.route


@dataclass(frozen=True)
class TurnEnded:
    """The turn's stream is over and recorded; ``more``: the flow goes on after it (edits to check)."""

    turn: object
    more: bool = False


@dataclass(frozen=True)
class PlanReady:
    """A reasoner answer became the plan the coder gets next (never its trace)."""

    plan: object  # app.conversation.steps.Plan


@dataclass(frozen=True)
class Notice:
    text: str
    level: str = "information"  # information | warning | error


@dataclass(frozen=True)
class ChangeProposed:
    """Edits ready for review (``round``: 1 for the first answer, then one per test-fix round)."""

    changes: object  # app.workspace.ChangeSet
    round: int = 1


@dataclass(frozen=True)
class ChangeApplied:
    changes: object  # the accepted ChangeSet
    applied: object  # app.workspace.Applied
    round: int = 1


@dataclass(frozen=True)
class ChangeDeclined:
    """The user (or a run without --apply) took none of the proposed edits."""

    changes: object
    round: int = 1


@dataclass(frozen=True)
class TestStarted:
    __test__ = False
    round: int
    command: str


@dataclass(frozen=True)
class TestFinished:
    __test__ = False
    round: int
    result: object  # app.conversation.verify.TestResult


@dataclass(frozen=True)
class FlowEnded:
    """The request is over: ``status`` is answered | proposed | applied | passed | failed | cancelled."""

    status: str
    rounds: int = 0
    reasons: tuple[str, ...] = field(default=())
